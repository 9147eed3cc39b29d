"""Objectives: motion feature matching is zero for identical inputs, gradients reach only the LoRA, precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from motion_core.attention import MotionFeatureExtractor, MotionFeatures, feature_grid
from motion_core.config import ConfigError, LoraConfig, LossConfig
from motion_core.ddim import add_noise, v_t
from motion_core.lora_io import add_lora
from motion_core.models import encode_prompt
from motion_core.objectives import OBJECTIVES, ObjectiveContext, feature_matching_loss, motion_loss
from motion_core.testing import build_tiny_model


@pytest.fixture(scope="module")
def setup():
    model = build_tiny_model(seed=3, block_out_channels=(16, 32, 32))
    params = add_lora(model, LoraConfig(rank=4, dropout=0.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero; perturb so every LoRA weight influences the output
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ex = MotionFeatureExtractor(model)
    text = encode_prompt(model, "a red circle on a blue background")
    z0 = torch.randn(1, 4, 8, 16, 16, generator=g)
    return model, params, ex, text, z0, g


def test_feature_loss_zero_for_identical_and_positive_otherwise(setup):
    model, _, ex, text, z0, g = setup
    ctx = ObjectiveContext(model, LossConfig(), ex)
    t = torch.tensor([600])
    zt = add_noise(model.scheduler, z0, torch.randn(z0.shape, generator=g), t)
    same = feature_matching_loss(ctx, zt, zt.clone(), t - 1, text)
    assert float(same.loss) == 0.0
    other = feature_matching_loss(ctx, zt + 0.05 * torch.randn(zt.shape, generator=g), zt, t - 1, text)
    assert float(other.loss) > 0 and other.parts["ca"] > 0 and other.parts["tsa"] > 0
    # lambdas scale the parts linearly
    ctx2 = ObjectiveContext(model, LossConfig(lambda_ca=1000.0, lambda_tsa=0.0), ex)
    half = feature_matching_loss(ctx2, zt + 0.05 * torch.randn(zt.shape, generator=g.manual_seed(1)), zt, t - 1, text)
    assert half.parts["tsa"] == 0.0 and half.parts["ca"] > 0


def test_motion_loss_target_matches_manual_computation(setup):
    model, _, ex, text, z0, g = setup
    t = torch.tensor([750])
    eps = torch.randn(z0.shape, generator=g)
    ctx = ObjectiveContext(model, LossConfig(), ex)
    out = motion_loss(ctx, z0, text, t, eps)
    zt = add_noise(model.scheduler, z0, eps, t)
    with torch.no_grad():
        e_theta = model.unet(zt, t, encoder_hidden_states=text).sample
        fp = ex(v_t(model.scheduler, zt, e_theta, t), t - 1, text)
        ft = ex(v_t(model.scheduler, zt, eps, t), t - 1, text)
    expected = 2000 * F.mse_loss(fp.ca, ft.ca) + 2000 * F.mse_loss(fp.tsa, ft.tsa)
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-4, atol=0)


def _pooled_by_hand(m: torch.Tensor, rows: int, cols: int, k: int, axis: int) -> torch.Tensor:
    """Window means over the positions on ``axis`` laid out as rows x cols: a loop, no avg_pool2d."""
    grid = m.movedim(axis, -1).reshape(*m.movedim(axis, -1).shape[:-1], rows, cols)
    out = [grid[..., r:r + k, c:c + k].mean(dim=(-2, -1)) for r in range(0, rows, k) for c in range(0, cols, k)]
    return torch.stack(out, dim=-1).movedim(-1, axis)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_pooled_maps_are_window_means_and_rows_still_sum_to_one(k):
    g = torch.Generator().manual_seed(5)
    rows, cols, f, n = 5, 6, 4, 7  # 5 rows: a 2 x 2 window overhangs the last row
    ca = torch.randn(2, f, rows * cols, n, generator=g).softmax(-1)
    tsa = torch.randn(2, rows * cols, f, f, generator=g).softmax(-1)
    feats = MotionFeatures(ca, tsa, (rows * cols,))
    got = feats.pooled(rows, cols, k)  # latents as large as the grid: feature_grid gives 5 x 6
    torch.testing.assert_close(got.ca, _pooled_by_hand(ca, rows, cols, k, 2))
    torch.testing.assert_close(got.tsa, _pooled_by_hand(tsa, rows, cols, k, 1))
    torch.testing.assert_close(got.ca.sum(-1), torch.ones(got.ca.shape[:-1]))
    torch.testing.assert_close(got.tsa.sum(-1), torch.ones(got.tsa.shape[:-1]))
    assert got.sizes == (-(-rows // k) * -(-cols // k),)
    if k == 6:  # one window over the whole grid: the spatial mean
        torch.testing.assert_close(got.ca[:, :, 0], ca.mean(2))


def test_pooling_runs_per_capture_block():
    g = torch.Generator().manual_seed(6)
    ca = torch.randn(1, 2, 64 + 16, 3, generator=g).softmax(-1)
    tsa = torch.randn(1, 64 + 16, 2, 2, generator=g).softmax(-1)
    got = MotionFeatures(ca, tsa, (64, 16)).pooled(8, 8, 2)  # an 8 x 8 block and a 4 x 4 block
    assert got.sizes == (16, 4)
    torch.testing.assert_close(got.ca[:, :, 16:], _pooled_by_hand(ca[:, :, 64:], 4, 4, 2, 2))
    with pytest.raises(ValueError, match="cannot lay 7 map positions"):
        MotionFeatures(ca[:, :, :7], tsa[:, :7], (7,)).pooled(8, 8, 2)


def test_pooled_motion_loss_compares_pooled_maps(setup):
    model, _, ex, text, z0, g = setup
    t = torch.tensor([700])
    eps = torch.randn(z0.shape, generator=g)
    out = motion_loss(ObjectiveContext(model, LossConfig(pool=2), ex), z0, text, t, eps)
    plain = motion_loss(ObjectiveContext(model, LossConfig(), ex), z0, text, t, eps)
    zt = add_noise(model.scheduler, z0, eps, t)
    with torch.no_grad():
        e_theta = model.unet(zt, t, encoder_hidden_states=text).sample
        fp = ex(v_t(model.scheduler, zt, e_theta, t), t - 1, text)
        ft = ex(v_t(model.scheduler, zt, eps, t), t - 1, text)
    rows, cols = feature_grid(fp.ca.shape[2], 16, 16)
    expected = 2000 * F.mse_loss(_pooled_by_hand(fp.ca, rows, cols, 2, 2), _pooled_by_hand(ft.ca, rows, cols, 2, 2))
    expected += 2000 * F.mse_loss(_pooled_by_hand(fp.tsa, rows, cols, 2, 1), _pooled_by_hand(ft.tsa, rows, cols, 2, 1))
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-4, atol=0)
    assert float(out.loss.detach()) < float(plain.loss.detach())  # (window mean)^2 <= window mean of squares
    with pytest.raises(ConfigError, match="pool must be in"):
        LossConfig(pool=0).validate()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_gradients_reach_only_lora(setup, name):
    model, params, ex, text, z0, g = setup
    for p in model.unet.parameters():
        p.grad = None
    ctx = ObjectiveContext(model, LossConfig(objective=name), ex if name == "motion" else None, None, g)
    out = OBJECTIVES[name](ctx, z0, text, torch.tensor([700]), torch.randn(z0.shape, generator=g))
    out.loss.backward()
    for n, p in model.unet.named_parameters():
        if "lora_" in n:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
            assert p.grad.abs().sum() > 0, f"{n} got a zero gradient from {name}"
        else:
            assert p.grad is None and not p.requires_grad, n
    for p in params:
        p.grad = None


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_a_batch_of_draws_averages_the_single_draw_losses(setup, name):
    # train.batch_size > 1 stacks (t, eps) draws of the one reference: each objective must treat the batch as
    # independent items (no mixing across it in the extractor's maps) and return their mean
    model, _, ex, text, z0, g = setup
    t = torch.tensor([620, 930])
    eps = torch.randn((2, *z0.shape[1:]), generator=g)

    def loss(zb, tb, e, tt):
        ctx = ObjectiveContext(model, LossConfig(objective=name, stride=300), ex if name == "motion" else None,
                               None, torch.Generator().manual_seed(5))  # same frame-diff anchor in every call
        with torch.no_grad():
            return OBJECTIVES[name](ctx, zb, tb, tt, e).loss

    both = loss(z0.expand(2, -1, -1, -1, -1), text.expand(2, -1, -1), eps, t)
    singles = [loss(z0, text, eps[i:i + 1], t[i:i + 1]) for i in range(2)]
    assert float(singles[0]) != pytest.approx(float(singles[1]))  # two different draws: the test can tell
    torch.testing.assert_close(both, (singles[0] + singles[1]) / 2, rtol=1e-5, atol=0)


def _lora_grad(setup, amp, t, scale=1.0):
    model, params, ex, text, z0, _ = setup
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(int(t)))
    for p in params:
        p.grad = None
    out = motion_loss(ObjectiveContext(model, LossConfig(), ex, amp), z0, text, torch.tensor([t]), eps)
    (out.loss * scale).backward()
    g = torch.cat([p.grad.flatten() for p in params]) / scale
    for p in params:
        p.grad = None
    return g


@pytest.mark.parametrize("t", [500, 800, 999])
def test_bf16_training_mode_keeps_the_gradient(setup, t):
    """Denoiser under bf16 autocast, v_t and extractor in fp32: the LoRA gradient matches the fp32 one."""
    ref = _lora_grad(setup, None, t)
    got = _lora_grad(setup, torch.bfloat16, t)
    cos = F.cosine_similarity(ref, got, dim=0)
    assert cos >= 0.99, f"cosine {float(cos):.4f} at t={t}"


def test_fp16_training_mode_with_loss_scaling(setup):
    ref = _lora_grad(setup, None, 700)
    got = _lora_grad(setup, torch.float16, 700, scale=2.0**20)  # what the trainer's GradScaler does
    assert F.cosine_similarity(ref, got, dim=0) >= 0.99


def test_unknown_objective_is_refused():
    from motion_core.objectives import get_objective

    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("l2-magic")


def test_half_weights_with_an_fp32_extractor_path_keep_the_gradient():
    """bf16 base weights, the extractor's path cast to fp32 (as train_lora does): the LoRA gradient matches the
    all-fp32 one; with the whole extractor in bf16 it does not (docs/method.md: rounding noise), which shows the test
    can tell them apart."""
    from motion_core.attention import extractor_path
    from motion_core.train import _cast_base

    model = build_tiny_model(seed=3, block_out_channels=(16, 32, 32))
    params = add_lora(model, LoraConfig(rank=4, dropout=0.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ex = MotionFeatureExtractor(model)
    text = encode_prompt(model, "a red circle on a blue background")
    z0 = torch.randn(1, 4, 8, 16, 16, generator=g)
    setup = (model, params, ex, text, z0, g)
    ref = _lora_grad(setup, None, 600)
    _cast_base(model.unet, None, torch.bfloat16)
    naive = F.cosine_similarity(ref, _lora_grad(setup, torch.bfloat16, 600), dim=0)
    _cast_base(model.unet, extractor_path(model.unet, model.capture_blocks), torch.float32)
    assert model.unet.conv_out.weight.dtype == torch.bfloat16 and model.unet.conv_in.weight.dtype == torch.float32
    got = F.cosine_similarity(ref, _lora_grad(setup, torch.bfloat16, 600), dim=0)
    assert got >= 0.99, float(got)
    assert naive < 0.9, float(naive)


def test_the_extractor_turns_tf32_off_inside_and_restores_it():
    # On Ampere and later torch lets convolutions use TF32 (10-bit mantissa) by default; the extractor must not.
    from motion_core.attention import no_tf32

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with no_tf32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
