"""The motion feature extractor: shapes, probabilities, early exit, processors, LoRA switch."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from motion_core.attention import CaptureProcessor, MotionFeatureExtractor, capture_layer_names, lora_disabled
from motion_core.config import LoraConfig
from motion_core.lora_io import add_lora
from motion_core.models import encode_prompt
from motion_core.testing import build_tiny_model


@pytest.fixture(scope="module")
def model3():
    # Three levels, two layers per block: the capture block is down_blocks.1 (as down_blocks.2 in Zeroscope).
    return build_tiny_model(seed=1, block_out_channels=(8, 16, 16), layers_per_block=2)


def _inputs(model, f=6, hw=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, f, hw, hw, generator=g)
    return z, torch.tensor([600]), encode_prompt(model, "a red circle on a striped background")


def test_shapes_and_probabilities(model3):
    ex = MotionFeatureExtractor(model3)
    try:
        z, t, text = _inputs(model3)
        feats = ex(z, t, text)
        # capture block down_blocks.1 works at 1/2 of the latent (16 -> 8): 64 positions; 77 tokens; 6 frames
        assert model3.capture_blocks == ("down_blocks.1",)
        assert feats.ca.shape == (1, 6, 64, 77)
        assert feats.tsa.shape == (1, 64, 6, 6)
        for m in (feats.ca, feats.tsa):
            assert (m >= 0).all() and (m <= 1).all()
            torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)), rtol=0, atol=1e-5)
    finally:
        ex.remove()


def test_maps_are_head_and_layer_means_of_softmax(model3):
    """Independent reference: recompute softmax(QK^T/sqrt(d)) from each captured layer's inputs by hand."""
    names = capture_layer_names(model3)
    assert sum(k == "ca" for k, _ in names.values()) == 2 and sum(k == "tsa" for k, _ in names.values()) == 4
    inputs: dict[str, tuple] = {}
    hooks = [model3.unet.get_submodule(n).register_forward_hook(
        lambda mod, args, kwargs, out, n=n: inputs.__setitem__(n, (args[0] if args else kwargs["hidden_states"],
                                                                   kwargs.get("encoder_hidden_states"))),
        with_kwargs=True) for n in names]
    ex = MotionFeatureExtractor(model3)
    try:
        z, t, text = _inputs(model3, f=5)
        feats = ex(z, t, text)
    finally:
        ex.remove()
        for h in hooks:
            h.remove()
    ca_ref, tsa_ref = [], []
    for n, (kind, _) in names.items():
        attn = model3.unet.get_submodule(n)
        hs, enc = inputs[n]
        ctx = hs if enc is None else enc
        q, k = attn.to_q(hs), attn.to_k(ctx)
        b, heads = q.shape[0], attn.heads
        q = q.reshape(b, q.shape[1], heads, -1).permute(0, 2, 1, 3)
        k = k.reshape(b, k.shape[1], heads, -1).permute(0, 2, 1, 3)
        p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).mean(1)
        (ca_ref if kind == "ca" else tsa_ref).append(p)
    ca = torch.stack(ca_ref).mean(0).reshape(1, 5, 64, 77)
    tsa = torch.stack(tsa_ref).mean(0).reshape(1, 64, 5, 5)
    torch.testing.assert_close(feats.ca, ca, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(feats.tsa, tsa, rtol=1e-4, atol=1e-6)


def test_forward_stops_after_last_captured_layer(model3):
    calls: dict[str, int] = {}
    later = ["down_blocks.1.downsamplers.0", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.2", "conv_out",
             "down_blocks.1.temp_attentions.1.proj_out"]
    earlier = ["down_blocks.0", "down_blocks.1.attentions.1"]
    hooks = [model3.unet.get_submodule(n).register_forward_pre_hook(
        lambda *a, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n in later + earlier]
    ex = MotionFeatureExtractor(model3)
    try:
        ex(*_inputs(model3))
        assert all(calls.get(n, 0) == 0 for n in later), calls
        assert all(calls.get(n, 0) == 1 for n in earlier), calls
        # an ordinary denoiser pass still runs everything
        z, t, text = _inputs(model3)
        model3.unet(z, t, encoder_hidden_states=text)
        assert all(calls.get(n, 0) == 1 for n in later), calls
    finally:
        ex.remove()
        for h in hooks:
            h.remove()


def test_only_captured_layers_get_the_explicit_processor(model3):
    ex = MotionFeatureExtractor(model3)
    try:
        procs = model3.unet.attn_processors
        captured = {f"{n}.processor" for n in ex.layers}
        for name, proc in procs.items():
            assert isinstance(proc, CaptureProcessor) == (name in captured), name
        assert len(captured) == 6
    finally:
        ex.remove()
    assert not any(isinstance(p, CaptureProcessor) for p in model3.unet.attn_processors.values())
    assert all(isinstance(p, AttnProcessor2_0) for p in model3.unet.attn_processors.values())


def test_capture_processor_computes_what_sdpa_computes(model3):
    z, t, text = _inputs(model3)
    ref = model3.unet(z, t, encoder_hidden_states=text).sample
    ex = MotionFeatureExtractor(model3)
    try:
        got = model3.unet(z, t, encoder_hidden_states=text).sample
    finally:
        ex.remove()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_extractor_ignores_lora_and_keeps_requires_grad():
    model = build_tiny_model(seed=2)
    z, t, text = _inputs(model)
    ex = MotionFeatureExtractor(model)
    base = ex(z, t, text)
    params = add_lora(model, LoraConfig(rank=4))
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.5)  # a LoRA that really changes the model
    lora_out = model.unet(z, t, encoder_hidden_states=text).sample
    after = ex(z, t, text)
    torch.testing.assert_close(after.ca, base.ca)
    torch.testing.assert_close(after.tsa, base.tsa)
    with lora_disabled(model.unet):
        off_out = model.unet(z, t, encoder_hidden_states=text).sample
    assert (lora_out - off_out).abs().max() > 1e-3
    assert all(p.requires_grad for p in params)
    ex.remove()
