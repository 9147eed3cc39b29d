"""LoRA files: bit-exact round trip, refusal of foreign or damaged files, diffusers pipeline interop."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from motion_core.config import LoraConfig, SampleConfig
from motion_core.lora_io import (
    LoraFileError,
    add_lora,
    has_lora,
    load_lora,
    lora_state_dict,
    read_lora,
    save_lora,
    target_modules_regex,
)
from motion_core.models import build_tiny_model
from motion_core.sample import sample


def _trained_like(seed=0, rank=4):
    model = build_tiny_model(seed=0)
    params = add_lora(model, LoraConfig(rank=rank, dropout=0.0), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def test_targets_cover_self_attention_and_ff_never_text_cross_attention():
    model = _trained_like()
    names = {n.rsplit(".lora_", 1)[0] for n, _ in model.unet.named_parameters() if ".lora_A." in n}
    assert any(".attentions.0.transformer_blocks.0.attn1.to_q" in n for n in names)
    assert any(".temp_attentions.0.transformer_blocks.0.attn2.to_v" in n for n in names)
    assert any(n.startswith("transformer_in.") for n in names)
    assert any(".ff.net.2" in n for n in names) and any(".ff.net.0.proj" in n for n in names)
    assert not any(".attentions." in n and ".attn2." in n and "temp_attentions" not in n for n in names)
    assert target_modules_regex(LoraConfig()).startswith("^")


def test_round_trip_is_bit_exact(tmp_path):
    model = _trained_like()
    before = lora_state_dict(model)
    path = save_lora(tmp_path / "lora.safetensors", model, LoraConfig(rank=4), {"caption": "a red circle"},
                     run_config={"x": 1})
    assert json.loads((tmp_path / "config.json").read_text()) == {"x": 1}
    fresh = build_tiny_model(seed=0)
    meta = load_lora(path, fresh)
    after = lora_state_dict(fresh)
    assert before.keys() == after.keys() and all(k.startswith("unet.") for k in after)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert meta["rank"] == 4 and meta["caption"] == "a red circle" and meta["base_model"] == "tiny-seed0"
    z = torch.randn(1, 4, 4, 8, 8)
    t, e = torch.tensor([300]), torch.zeros(1, 77, 16)
    torch.testing.assert_close(fresh.unet(z, t, e).sample, model.unet(z, t, e).sample, rtol=0, atol=0)
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
    assert "lora_adapter_metadata" in md and json.loads(md["lora_adapter_metadata"])["unet.r"] == 4


def test_mismatched_files_are_refused(tmp_path):
    model = _trained_like()
    path = save_lora(tmp_path / "lora.safetensors", model, LoraConfig(rank=4))
    other_arch = build_tiny_model(seed=0, block_out_channels=(16, 32, 32))
    with pytest.raises(LoraFileError, match="trained for base model"):
        load_lora(path, other_arch)
    with pytest.raises(LoraFileError, match="does not fit|shape"):
        load_lora(path, other_arch, strict_model=False)
    assert not has_lora(other_arch)  # a refused file leaves no half-loaded adapter behind

    tensors, meta = read_lora(path)
    bad_rank = dict(meta, rank=8)
    save_file(tensors, str(tmp_path / "rank.safetensors"), metadata={"motion_matcher": json.dumps(bad_rank)})
    with pytest.raises(LoraFileError, match="rank"):
        load_lora(tmp_path / "rank.safetensors", build_tiny_model())

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(LoraFileError, match="not made by this tool"):
        load_lora(tmp_path / "foreign.safetensors", build_tiny_model())
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5 + b"not a safetensors file")
    with pytest.raises(LoraFileError, match="not a readable"):
        load_lora(tmp_path / "junk.safetensors", build_tiny_model())
    with pytest.raises(LoraFileError, match="does not exist"):
        load_lora(tmp_path / "missing.safetensors", build_tiny_model())


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = _trained_like(seed=0)
    path = save_lora(tmp_path / "lora.safetensors", model, LoraConfig(rank=4))
    good = path.read_bytes()
    import motion_core.lora_io as lio

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(lio, "save_file", boom)
    with pytest.raises(OSError):
        save_lora(path, _trained_like(seed=1), LoraConfig(rank=4))
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]


def test_diffusers_pipeline_reads_our_file_and_matches_our_sampler(tmp_path):
    """TextToVideoSDPipeline.load_lora_weights reads our file into a PEFT-capable UNet3D: same output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import TextToVideoSDPipeline
    model = _trained_like(seed=5)
    save_lora(tmp_path / "lora.safetensors", model, LoraConfig(rank=4))
    noise = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = sample(model, "a red circle", SampleConfig(num_inference_steps=4, guidance_scale=5.0, lora_cutoff=0,
                                                      beta=0.0), latent_shape=(4, 8, 8), init_noise=noise,
                  decode=False).latents

    fresh = build_tiny_model(seed=0)
    pipe = TextToVideoSDPipeline(vae=fresh.vae, text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer,
                                 unet=fresh.unet, scheduler=fresh.scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path), weight_name="lora.safetensors")
    theirs = pipe("a red circle", num_frames=4, height=16, width=16, num_inference_steps=4, guidance_scale=5.0,
                  latents=noise.clone(), output_type="latent").frames
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    # and the LoRA really acted: without it the pipeline gives something else
    base = build_tiny_model(seed=0)
    pipe_base = TextToVideoSDPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                      unet=base.unet, scheduler=base.scheduler)
    pipe_base.set_progress_bar_config(disable=True)
    plain = pipe_base("a red circle", num_frames=4, height=16, width=16, num_inference_steps=4, guidance_scale=5.0,
                      latents=noise.clone(), output_type="latent").frames
    assert (plain - ours).abs().max() > 1e-3


def test_diffusers_loads_our_model_folder_and_lora_from_disk(tmp_path):
    """A saved model folder is a diffusers pipeline folder: ``from_pretrained`` reads it, then our LoRA file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import DiffusionPipeline, TextToVideoSDPipeline, UNet3DConditionModel
    from motion_core.models import UNet3DWithPeft, save_model

    folder = save_model(build_tiny_model(seed=0), tmp_path / "model")
    assert json.loads((folder / "unet" / "config.json").read_text())["_class_name"] == "UNet3DConditionModel"
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    assert type(pipe) is TextToVideoSDPipeline and type(pipe.unet) is UNet3DConditionModel

    model = _trained_like(seed=3)
    save_lora(tmp_path / "lora" / "motion.safetensors", model, LoraConfig(rank=4))
    noise = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = sample(model, "a blue star", SampleConfig(num_inference_steps=3, guidance_scale=4.0, lora_cutoff=0,
                                                     beta=0.0), latent_shape=(4, 8, 8), init_noise=noise,
                  decode=False).latents
    # the stock UNet class has no PEFT mixin (diffusers #6640): hand the pipeline ours, as the README says
    pipe = TextToVideoSDPipeline.from_pretrained(str(folder),
                                                 unet=UNet3DWithPeft.from_pretrained(str(folder), subfolder="unet"))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name="motion.safetensors")
    theirs = pipe("a blue star", num_frames=4, height=16, width=16, num_inference_steps=3, guidance_scale=4.0,
                  latents=noise.clone(), output_type="latent").frames
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
