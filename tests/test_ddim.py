"""Schedule maths against diffusers' own DDIMScheduler (an independent reference)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from motion_core.ddim import (
    abar_at,
    blend_noise,
    ddim_move,
    guide,
    inversion_timesteps,
    sampling_timesteps,
    v_t,
    v_t_gap,
)


@pytest.fixture
def sched():
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@pytest.mark.parametrize("t", [1, 500, 731, 999])
def test_v_t_equals_scheduler_one_step_ddim(sched, t):
    # DDIM with 1000 inference steps steps exactly one training timestep: t -> t-1, eta = 0.
    ref = DDIMScheduler.from_config(sched.config)
    ref.set_timesteps(1000)
    g = torch.Generator().manual_seed(t)
    z = torch.randn(1, 4, 3, 5, 5, generator=g)
    e = torch.randn(1, 4, 3, 5, 5, generator=g)
    expected = ref.step(e, t, z, eta=0.0).prev_sample
    got = v_t(sched, z, e, torch.tensor([t]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_v_t_stride(sched):
    ref = DDIMScheduler.from_config(sched.config)
    ref.set_timesteps(100)  # step ratio 10: t -> t - 10
    z, e = torch.randn(1, 4, 2, 3, 3), torch.randn(1, 4, 2, 3, 3)
    t = int(ref.timesteps[30])
    torch.testing.assert_close(v_t(sched, z, e, torch.tensor([t]), stride=10), ref.step(e, t, z).prev_sample,
                               rtol=1e-5, atol=1e-5)


def test_gap_matches_method_md_numbers(sched):
    # docs/method.md: c_t runs from -0.0028 (t = 500) to -0.0061 (t = 999) on the Zeroscope schedule.
    assert float(v_t_gap(sched, torch.tensor(500))) == pytest.approx(-0.0028, abs=1e-4)
    assert float(v_t_gap(sched, torch.tensor(999))) == pytest.approx(-0.0061, abs=1e-4)
    z, e1, e2 = torch.randn(3, 1, 4, 2, 3, 3)
    t = torch.tensor([700])
    diff = v_t(sched, z, e1, t) - v_t(sched, z, e2, t)
    torch.testing.assert_close(diff, float(v_t_gap(sched, t)) * (e1 - e2), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("n", [10, 50])
def test_sampling_loop_matches_scheduler(sched, n):
    ref = DDIMScheduler.from_config(sched.config)
    ref.set_timesteps(n)
    pairs = sampling_timesteps(sched, n)
    assert [t for t, _ in pairs] == [int(t) for t in ref.timesteps]
    x = torch.randn(1, 4, 2, 4, 4)
    for t, t_prev in pairs:
        e = torch.tanh(x)  # any deterministic function of x stands in for the UNet
        expected = ref.step(e, t, x).prev_sample  # each step compared from the same input
        x = ddim_move(x, e, abar_at(sched, t), abar_at(sched, t_prev))
        torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


def test_inversion_walks_the_sampling_levels_backwards(sched):
    pairs = sampling_timesteps(sched, 20)
    inv = inversion_timesteps(sched, 20)
    assert inv[0][0] == -1 and inv[-1][1] == pairs[0][0]
    assert [b for _, b in inv] == [t for t, _ in reversed(pairs)]
    # An exact inverse for a constant noise estimate: invert then sample returns the start.
    x0 = torch.randn(1, 4, 2, 4, 4)
    e = torch.randn_like(x0)
    x = x0
    for a, b in inv:
        x = ddim_move(x, e, abar_at(sched, a), abar_at(sched, b))
    for t, tp in pairs:
        x = ddim_move(x, e, abar_at(sched, t), abar_at(sched, tp))
    torch.testing.assert_close(x, x0, rtol=1e-4, atol=1e-4)


def test_blend_noise_unit_variance_and_ends(sched):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 200_000, generator=g)
    for beta in (0.0, 0.3, 0.7, 1.0):
        assert float(blend_noise(a, b, beta).std()) == pytest.approx(1.0, abs=0.01)
    torch.testing.assert_close(blend_noise(a, b, 0.0), b)
    torch.testing.assert_close(blend_noise(a, b, 1.0), a)
    with pytest.raises(ValueError, match="beta"):
        blend_noise(a, b, 1.5)


def test_a_long_stride_keeps_the_extractor_timestep_non_negative():
    from motion_core.config import ConfigError, LossConfig

    assert LossConfig(stride=400).t_range() == (500, 1000)  # the motion loss's own range, t - 400 >= 100
    assert LossConfig(stride=600).t_range() == (600, 1000)  # the range starts where t - stride >= 0
    # the stride is the motion loss's own: a pixel-level baseline trained beside it keeps its whole range
    assert LossConfig(objective="ddpm", stride=400).t_range() == (1, 1000)
    with pytest.raises(ConfigError):
        LossConfig(stride=1000).validate()
    with pytest.raises(ConfigError):
        LossConfig(stride=900, t_max=800).t_range()


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_guide_matches_diffusers_rescaled_guidance(phi):
    """``guide`` against diffusers' own guidance arithmetic and ``rescale_noise_cfg`` (an independent reference)."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    g = torch.Generator().manual_seed(0)
    e_u, e_c = torch.randn(2, 4, 8, 6, 6, generator=g), torch.randn(2, 4, 8, 6, 6, generator=g)
    want = rescale_noise_cfg(e_u + 3.0 * (e_c - e_u), e_c, guidance_rescale=phi)
    got = guide(e_u, e_c, 3.0, phi)
    assert torch.allclose(got, want, atol=1e-6)
    if phi == 1.0:  # each sample's spread is the conditional prediction's
        assert torch.allclose(got.flatten(1).std(1), e_c.flatten(1).std(1), atol=1e-5)
    with pytest.raises(ValueError, match="rescale"):
        guide(e_u, e_c, 3.0, 1.5)
