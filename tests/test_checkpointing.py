"""Gradient checkpointing of UNet3D blocks: the same LoRA gradient, less peak memory."""

from __future__ import annotations

import pytest
import torch

from motion_core.attention import MotionFeatureExtractor, extractor_path
from motion_core.checkpointing import (
    blocks_before,
    checkpoint_units,
    checkpointed,
    resolve_checkpointing,
    unet_blocks,
)
from motion_core.config import LoraConfig, LossConfig
from motion_core.lora_io import add_lora
from motion_core.memtrack import cpu_peak_bytes
from motion_core.models import encode_prompt
from motion_core.objectives import ObjectiveContext, get_objective
from motion_core.testing import build_tiny_model
from motion_core.train import lora_train_mode


@pytest.fixture(scope="module")
def setup():
    # Three levels so that the extractor (capture block down_blocks.1) has a block before it to checkpoint.
    model = build_tiny_model(seed=5, block_out_channels=(16, 32, 32))
    params = add_lora(model, LoraConfig(rank=4, dropout=0.1))  # dropout on: the recomputation must replay masks
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    lora_train_mode(model.unet)
    text = encode_prompt(model, "a red circle on a blue background")
    z0 = torch.randn(1, 4, 8, 16, 16, generator=g)
    return model, params, text, z0


def _grad(setup, objective: str, ckpt: bool, t: int = 700) -> tuple[torch.Tensor, int]:
    model, params, text, z0 = setup
    ex = MotionFeatureExtractor(model, checkpointing=ckpt) if objective == "motion" else None
    ctx = ObjectiveContext(model, LossConfig(objective=objective), ex, None, None, ckpt)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
    for p in params:
        p.grad = None
    torch.manual_seed(1)  # the LoRA dropout's stream

    def step() -> None:
        get_objective(objective)(ctx, z0, text, torch.tensor([t]), eps).loss.backward()

    try:
        peak, _ = cpu_peak_bytes(step)
    finally:
        if ex is not None:
            ex.remove()
    g = torch.cat([p.grad.flatten() for p in params])
    for p in params:
        p.grad = None
    return g, peak


@pytest.mark.parametrize("objective", ["motion", "ddpm"])
def test_checkpointing_keeps_the_lora_gradient_and_lowers_the_peak(setup, objective):
    ref, peak_ref = _grad(setup, objective, False)
    got, peak = _grad(setup, objective, True)
    assert ref.abs().sum() > 0
    # Same arithmetic in the same order, recomputed: equal up to float reassociation in the kernels.
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    # Measured with torch's allocation records (memtrack.py): 0.16 (motion) and 0.15 (ddpm) of the peak.
    assert peak < 0.5 * peak_ref, (peak, peak_ref)


def test_checkpointed_blocks_are_restored_and_skipped_without_grad(setup):
    model = setup[0]
    unet = model.unet
    names = unet_blocks(unet)
    assert names == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1",
                     "up_blocks.2"]
    with checkpointed(unet, names):
        assert all("forward" in unet.get_submodule(n).__dict__ for n in names)
    assert not any("forward" in unet.get_submodule(n).__dict__ for n in names)
    # Each block is checkpointed layer by layer, after the full-resolution temporal transformer.
    assert checkpoint_units(unet, ["down_blocks.0"]) == ["transformer_in", "down_blocks.0.resnets.0",
                                                         "down_blocks.0.temp_convs.0", "down_blocks.0.attentions.0",
                                                         "down_blocks.0.temp_attentions.0"]
    # The extractor checkpoints only what runs before its capture block, and its path ends with that block.
    assert blocks_before(unet, "down_blocks.1.attentions.0") == ["down_blocks.0"]
    assert extractor_path(unet, ("down_blocks.1",)) == ["conv_in", "time_embedding", "transformer_in",
                                                        "down_blocks.0", "down_blocks.1"]


def test_resolve_checkpointing():
    assert resolve_checkpointing("auto", torch.device("cuda")) is True
    assert resolve_checkpointing("auto", torch.device("cpu")) is False
    assert resolve_checkpointing("on", torch.device("cpu")) is True
    with pytest.raises(ValueError, match="auto, on or off"):
        resolve_checkpointing("sometimes", torch.device("cpu"))
