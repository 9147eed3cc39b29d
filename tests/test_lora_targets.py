"""LoRA on convolutions (``LoraConfig.conv_targets``): the small embedded model keeps much of its motion there."""

from __future__ import annotations

import pytest
import torch

from motion_core.config import ConfigError, LoraConfig
from motion_core.lora_io import add_lora, load_lora, lora_state_dict, save_lora
from motion_core.testing import build_tiny_model


def _adapted(model: torch.nn.Module) -> set[str]:
    return {n.rsplit(".lora_A", 1)[0] for n, _ in model.unet.named_parameters() if ".lora_A." in n}


def test_conv_targets_reach_temporal_and_spatial_convolutions_and_train():
    model = build_tiny_model(seed=0)
    add_lora(model, LoraConfig(rank=4, dropout=0.0))
    plain = _adapted(model)
    assert not any("temp_convs" in n or "resnets" in n for n in plain)  # the paper's targets: no convolutions
    params = add_lora(model, LoraConfig(rank=4, dropout=0.0, conv_targets=("temp_convs", "resnets")))
    names = _adapted(model)
    temporal = {n for n in names if ".temp_convs." in n}
    spatial = {n for n in names if ".resnets." in n}
    n_temp = sum(isinstance(m, torch.nn.Conv3d) and ".temp_convs." in n for n, m in build_tiny_model(
        seed=0).unet.named_modules())
    assert len(temporal) == n_temp and all(isinstance(model.unet.get_submodule(n + ".base_layer"), torch.nn.Conv3d)
                                           for n in temporal)
    assert spatial and plain <= names
    # a loss through the UNet sends gradient to the convolutions' LoRA weights, and only LoRA weights train
    with torch.no_grad():  # lora_B starts at zero; give it a value so lora_A's gradient is not zero either
        for n, p in model.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    x = torch.randn(1, 4, 3, 8, 8)
    text = torch.randn(1, 77, model.unet.config.cross_attention_dim)
    model.unet(x, torch.tensor([500]), encoder_hidden_states=text).sample.square().mean().backward()
    grads = {n: p.grad for n, p in model.unet.named_parameters() if p.grad is not None}
    assert all("lora_" in n for n in grads)
    assert any(".temp_convs." in n and g.abs().sum() > 0 for n, g in grads.items())
    assert len(params) == sum(1 for n in grads)


def test_conv_lora_round_trip_is_bit_exact(tmp_path):
    model = build_tiny_model(seed=0)
    cfg = LoraConfig(rank=4, dropout=0.0, conv_targets=("temp_convs",))
    params = add_lora(model, cfg, seed=1)
    with torch.no_grad():
        for p in params:
            p.normal_()
    before = lora_state_dict(model)
    save_lora(tmp_path / "lora.safetensors", model, cfg)
    other = build_tiny_model(seed=0)
    load_lora(tmp_path / "lora.safetensors", other)
    after = lora_state_dict(other)
    assert before.keys() == after.keys() and any(".temp_convs." in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_conv_lora_of_the_wrong_kernel_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from motion_core.lora_io import LoraFileError

    model = build_tiny_model(seed=0)
    cfg = LoraConfig(rank=4, dropout=0.0, conv_targets=("temp_convs",))
    add_lora(model, cfg)
    save_lora(tmp_path / "ok.safetensors", model, cfg)
    with safe_open(str(tmp_path / "ok.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if ".temp_convs." in k and ".lora_A." in k)
    tensors[key] = tensors[key].reshape(4, -1, 1, 3, 1).contiguous()  # a (1, 3, 1) kernel: not this layer's
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    other = build_tiny_model(seed=0)
    try:
        load_lora(tmp_path / "bad.safetensors", other)
        raise AssertionError("a LoRA of the wrong kernel loaded")
    except LoraFileError as err:
        assert "temp_convs" in str(err) and "(-1, " in str(err)


def test_a_temporal_only_lora_leaves_every_spatial_layer_alone_and_round_trips(tmp_path):
    # no spatial target (a probe of docs/results.md): a motion LoRA that cannot repaint the prompted look
    model = build_tiny_model(seed=0)
    cfg = LoraConfig(rank=4, dropout=0.0, spatial_targets=(), conv_targets=("temp_convs",))
    params = add_lora(model, cfg, seed=1)
    names = _adapted(model)
    assert names and all(".temp_attentions." in n or n.startswith("transformer_in.") or ".temp_convs." in n
                         for n in names)
    assert any(".temp_convs." in n for n in names) and any(".temp_attentions." in n for n in names)
    with torch.no_grad():
        for p in params:
            p.normal_()
    save_lora(tmp_path / "lora.safetensors", model, cfg)
    other = build_tiny_model(seed=0)
    load_lora(tmp_path / "lora.safetensors", other)
    before, after = lora_state_dict(model), lora_state_dict(other)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_lora_with_no_target_is_refused():
    with pytest.raises(ConfigError, match="target some layers"):
        LoraConfig(spatial_targets=(), temporal_targets=(), conv_targets=()).validate()
