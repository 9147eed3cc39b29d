"""The library's seams that every caller goes through: a model's defaults, the run folder, reference features."""

from __future__ import annotations

import json

import pytest
import torch

from motion_core.attention import MotionFeatureExtractor, feature_grid, reference_features
from motion_core.config import RunConfig, SampleConfig, VideoConfig
from motion_core.ddim import add_noise
from motion_core.models import (
    ZEROSCOPE_UNET_CONFIG,
    ModelDefaults,
    encode_prompt,
    load_model,
    model_defaults,
)
from motion_core.rundir import RunDir
from motion_core.testing import build_tiny_model
from motion_core.train import train_lora

# ------------------------------------------------------------------------------------------- model defaults


def test_model_defaults_read_without_weights_equal_the_loaded_models(tiny_model_dir):
    own = model_defaults(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device="cpu")
    assert (own.video_defaults, own.sample_defaults, own.train_defaults) == (
        model.video_defaults, model.sample_defaults, model.train_defaults)
    assert VideoConfig.for_model(own) == VideoConfig.for_model(model)
    assert SampleConfig.for_model(own) == SampleConfig.for_model(model)
    assert RunConfig.for_model(own).to_dict() == RunConfig.for_model(model).to_dict()


def test_zeroscope_architecture_folder_gets_the_release_defaults_and_its_sidecar_wins(tmp_path):
    (tmp_path / "unet").mkdir()
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in ZEROSCOPE_UNET_CONFIG.items()}
    (tmp_path / "unet" / "config.json").write_text(json.dumps(cfg))
    own = model_defaults(str(tmp_path))
    assert RunConfig.for_model(own).train.adam_eps == 1e-8
    assert SampleConfig.for_model(own).invert_with_lora is True
    (tmp_path / "motion_matcher.json").write_text(json.dumps({"sample": {"num_inference_steps": 30}}))
    own = model_defaults(str(tmp_path))
    assert SampleConfig.for_model(own).num_inference_steps == 30
    assert RunConfig.for_model(own).train.adam_eps == 1e-8  # the sidecar names no train section: built-in kept


def test_for_model_order_method_then_model_then_given_and_none_means_not_given():
    m = ModelDefaults(video_defaults={"num_frames": 8, "height": 32, "width": 32},
                      sample_defaults={"num_inference_steps": 25, "guidance_scale": 7.5})
    sc = SampleConfig.for_model(m, {"guidance_scale": None, "beta": 0.5})
    assert (sc.num_inference_steps, sc.guidance_scale, sc.beta) == (25, 7.5, 0.5)
    assert sc.lora_cutoff == SampleConfig().lora_cutoff  # neither the model nor the caller set it
    vc = VideoConfig.for_model(m, {"fps": None, "height": 64})
    assert (vc.num_frames, vc.fps, vc.height, vc.width) == (8, VideoConfig().fps, 64, 32)
    assert SampleConfig.for_model(None) == SampleConfig.from_dict(RunConfig.for_model(None).sample.to_dict())
    with pytest.raises(ValueError, match="guidance"):
        SampleConfig.for_model(m, {"guidance_scale": 99})


# ------------------------------------------------------------------------------------------------ run folder


def test_run_dir_prepares_the_reference_and_train_lora_writes_its_names(tiny_model, tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.load_latents() is None and run.steps_done() == 0 and not run.finished()
    frames = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    z0 = run.prepare_reference(tiny_model, frames, fps=8.0)
    assert run.reference_video.is_file() and torch.equal(run.load_latents(), z0.cpu())
    assert not [p for p in run.path.iterdir() if p.name.startswith(".")], "no temporary file left behind"
    cfg = RunConfig.for_model(tiny_model, {"train": {"steps": 3, "checkpoint_every": 2}, "lora": {"rank": 2},
                                           "loss": {"objective": "ddpm"}})
    res = train_lora(tiny_model, z0, "a red circle", run.path, cfg)
    assert res.lora_path == run.lora and run.finished()
    assert run.config.is_file() and run.checkpoint.is_file()
    assert run.steps_done() == 3 and [r["step"] for r in run.log_records()] == [1, 2, 3]
    with run.log.open("a") as f:  # a line cut short by a crash is skipped, not fatal
        f.write('{"step": 4, "lo')
    assert run.steps_done() == 3


# ---------------------------------------------------------------------------------------- reference features


def test_reference_features_equal_noise_then_extract_by_hand(tiny_model):
    z0 = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    before = {n: type(m.processor) for n, m in tiny_model.unet.named_modules() if hasattr(m, "processor")}
    got = reference_features(tiny_model, z0, "a red circle", 700, seed=3)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(3))
    tt = torch.tensor([700])
    ext = MotionFeatureExtractor(tiny_model)
    try:
        with torch.no_grad():
            ref = ext(add_noise(tiny_model.scheduler, z0, eps, tt), tt, encode_prompt(tiny_model, "a red circle"))
    finally:
        ext.remove()
    torch.testing.assert_close(got.ca, ref.ca, rtol=0, atol=0)
    torch.testing.assert_close(got.tsa, ref.tsa, rtol=0, atol=0)
    after = {n: type(m.processor) for n, m in tiny_model.unet.named_modules() if hasattr(m, "processor")}
    assert after == before, "the extractor's processors must be gone after the call"


def test_extractor_context_manager_restores_processors_on_error(tiny_model):
    before = {n: m.processor for n, m in tiny_model.unet.named_modules() if hasattr(m, "processor")}
    with pytest.raises(RuntimeError, match="boom"), MotionFeatureExtractor(tiny_model):
        raise RuntimeError("boom")
    after = {n: m.processor for n, m in tiny_model.unet.named_modules() if hasattr(m, "processor")}
    assert after == before


def test_two_capture_blocks_split_back_into_their_own_maps_and_grids():
    model = build_tiny_model(seed=0, block_out_channels=(16, 32, 32),
                             capture_blocks=("down_blocks.0", "down_blocks.1"))
    z0 = torch.randn(1, 4, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    both = reference_features(model, z0, "a blue star", 600)
    assert both.sizes == (96, 24)
    one = reference_features(model, z0, "a blue star", 600, blocks=("down_blocks.1",))
    # block 0 then runs the explicit-softmax processor instead of SDPA: equal up to float rounding
    torch.testing.assert_close(both.block(1).ca, one.ca, rtol=0, atol=1e-6)
    torch.testing.assert_close(both.block(1).tsa, one.tsa, rtol=0, atol=1e-6)
    assert both.block(0).ca.shape[2] == 96
    assert feature_grid(both.sizes[0], 8, 12) == (8, 12) and feature_grid(both.sizes[1], 8, 12) == (4, 6)
    assert feature_grid(7, 8, 12) is None
