"""Per-model run defaults: the sidecar's train and sample sections, Zeroscope's built-in ones, overrides win."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from motion_core.config import DEFAULT_ADAM_EPS, ConfigError, RunConfig
from motion_core.lora_io import add_lora
from motion_core.models import builtin_sidecar, is_zeroscope_architecture, load_model
from motion_core.sample import invert, invert_cached
from motion_core.testing import build_tiny_model

ZEROSCOPE_UNET = SimpleNamespace(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                                 cross_attention_dim=1024)


def test_a_model_without_train_defaults_keeps_methods_values(tiny_model_dir):
    # The embedded model's sidecar has no train section either: Adam eps 1e-12, inversion with the base model.
    cfg = RunConfig.for_model(load_model(tiny_model_dir, device="cpu"))
    assert cfg.train.adam_eps == DEFAULT_ADAM_EPS == 1e-12 and cfg.sample.invert_with_lora is False
    assert cfg.video.num_frames == 8 and cfg.train.learning_rate == 5e-4


def test_zeroscope_gets_the_releases_values_and_overrides_win():
    assert is_zeroscope_architecture(ZEROSCOPE_UNET)
    assert not is_zeroscope_architecture(build_tiny_model().unet.config)
    side = builtin_sidecar(ZEROSCOPE_UNET)
    model = SimpleNamespace(video_defaults={}, sample_defaults=side["sample"], train_defaults=side["train"])
    cfg = RunConfig.for_model(model)
    assert cfg.train.adam_eps == 1e-8 and cfg.sample.invert_with_lora is True
    cfg = RunConfig.for_model(model, {"train": {"adam_eps": 1e-12}, "sample": {"invert_with_lora": False}})
    assert cfg.train.adam_eps == 1e-12 and cfg.sample.invert_with_lora is False


def test_a_sidecar_train_section_sets_train_lora_and_loss_fields(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    side = json.loads((folder / "motion_matcher.json").read_text())
    side["train"] = {"adam_eps": 1e-9, "learning_rate": 1e-3, "rank": 8, "temporal_targets": ["attn1"],
                     "lambda_tsa": 500.0}
    side["sample"]["invert_with_lora"] = True
    (folder / "motion_matcher.json").write_text(json.dumps(side))
    model = load_model(folder, device="cpu")
    cfg = RunConfig.for_model(model, {"lora": {"rank": 16}})
    assert (cfg.train.adam_eps, cfg.train.learning_rate, cfg.lora.rank) == (1e-9, 1e-3, 16)
    assert cfg.lora.temporal_targets == ("attn1",) and cfg.loss.lambda_tsa == 500.0 and cfg.sample.invert_with_lora
    # A config built without the model (the app's) gets the model's choices where it left them open (None).
    filled = RunConfig().fill_from_model(model)
    assert filled.train.adam_eps == 1e-9 and filled.sample.invert_with_lora is True
    assert filled.train.learning_rate == 5e-4  # a value given (here docs/method.md's) is kept
    model.train_defaults["adam_epsilon"] = 1.0
    with pytest.raises(ConfigError, match="unknown setting 'adam_epsilon'"):
        RunConfig.for_model(model)


def test_train_lora_records_the_models_adam_eps(tmp_path):
    from motion_core.train import train_lora

    model = build_tiny_model()
    model.train_defaults = {"adam_eps": 1e-8}
    cfg = RunConfig()
    cfg.train.steps, cfg.lora.rank = 1, 4
    train_lora(model, torch.rand(8, 3, 32, 32), "a red circle", tmp_path, cfg)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["adam_eps"] == 1e-8


def test_inversion_with_the_lora_on_follows_the_model_or_the_caller(tmp_path):
    model = build_tiny_model()
    params = add_lora(model, RunConfig().lora)
    model.unet.eval()  # peft adds its dropout layers in train mode; inference runs after training's eval()
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
    z0 = torch.randn(1, 4, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    base, with_lora = invert(model, z0, 4, with_lora=False), invert(model, z0, 4, with_lora=True)
    assert (base - with_lora).abs().max() > 1e-3
    torch.testing.assert_close(invert(model, z0, 4), base)  # a model that says nothing: the base model
    model.sample_defaults = {"invert_with_lora": True}
    torch.testing.assert_close(invert(model, z0, 4), with_lora)
    cached = invert_cached(model, z0, 4, tmp_path)
    torch.testing.assert_close(cached, with_lora)
    torch.testing.assert_close(invert_cached(model, z0, 4, tmp_path, with_lora=False), base)  # its own entry
    assert len(list(tmp_path.glob("inv-*.pt"))) == 2


def test_the_embedded_model_asks_for_its_measured_motion_loss_stride():
    # docs/results.md: on the 8 x 8-latent paths model the extractor reads t - 400, where the object is placed
    from motion_core.models import model_defaults
    from shapes_world.recipe import build_model

    cfg = RunConfig.for_model(model_defaults("assets/shapes-t2v"))
    assert cfg.loss.stride == 400 and cfg.loss.t_range() == (500, 1000)
    assert list(cfg.lora.conv_targets) == ["temp_convs", "resnets"]
    assert build_model(world_name="paths").train_defaults["stride"] == 400  # a fresh paths model gets the same


def test_the_embedded_model_trains_half_its_draws_on_named_recolourings():
    # docs/results.md: recoloured copies under renamed captions bring every L3 cell closer to the reference
    from motion_core.models import model_defaults
    from shapes_world import paths
    from shapes_world.recipe import build_model

    cfg = RunConfig.for_model(model_defaults("assets/shapes-t2v"))
    assert cfg.train.recolour == 0.5 and cfg.train.recolour_names == paths.colour_names()
    fresh = build_model(world_name="paths").train_defaults
    assert fresh["recolour"] == 0.5 and fresh["recolour_names"] == paths.colour_names()
    assert RunConfig.for_model(model_defaults("assets/shapes-t2v"), {"train": {"recolour": 0}}).train.recolour == 0
