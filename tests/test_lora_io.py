"""LoRA files: bit-exact round trip, refusal of foreign or damaged files, diffusers pipeline interop."""

from __future__ import annotations

import contextlib
import json
import signal
import struct
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from motion_core.config import LORA_MAX_HEADER_BYTES, LORA_MAX_TENSORS, LoraConfig, SampleConfig
from motion_core.lora_io import (
    LoraFileError,
    add_lora,
    base_model_warning,
    has_lora,
    load_lora,
    lora_state_dict,
    read_lora,
    save_lora,
    target_modules_regex,
)
from motion_core.sample import sample
from motion_core.testing import build_tiny_model


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


# ---------------------------------------------------------------------------------------------------------------
# Hostile and broken files (issue 18): metadata is data, a failed load changes nothing, bounds come first.
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (not hang) when the block runs too long. Python's regex engine checks for signals while it
    backtracks, so a catastrophic pattern is interrupted too."""

    def stop(*_):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _rewrite(src, dest, tensors=None, meta=None, raw_meta=None):
    """Copy of a LoRA file with its tensors and/or our metadata replaced."""
    t0, m0 = read_lora(src)
    md = {"motion_matcher": raw_meta if raw_meta is not None else json.dumps(m0 if meta is None else meta)}
    save_file(t0 if tensors is None else tensors, str(dest), metadata=md)
    return dest


def _forward(model):
    z = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    return model.unet(z, torch.tensor([300]), torch.zeros(1, 77, 16)).sample


@pytest.mark.parametrize("targets", [r"(.*)*z", r".*", r"(a+)+$", "../../etc/passwd", "__import__('os')"])
def test_metadata_targets_are_never_compiled_or_followed(tmp_path, targets):
    good = save_lora(tmp_path / "good.safetensors", _trained_like(seed=1), LoraConfig(rank=4))
    tensors, meta = read_lora(good)
    bad = _rewrite(good, tmp_path / "bad.safetensors", meta=dict(meta, targets=targets))
    model = build_tiny_model(seed=0)
    with time_limit(10):  # `(.*)*z` froze the app: the old loader handed it to peft as a regex
        load_lora(bad, model)
    assert lora_state_dict(model).keys() == tensors.keys()
    for k, v in lora_state_dict(model).items():
        assert torch.equal(v, tensors[k]), k


def test_a_failed_load_leaves_the_model_exactly_as_it_was(tmp_path):
    first = save_lora(tmp_path / "first.safetensors", _trained_like(seed=1), LoraConfig(rank=4))
    tensors, meta = read_lora(first)
    a_key = next(k for k in tensors if ".lora_A." in k)
    nan = dict(tensors)
    nan[a_key] = tensors[a_key].clone()
    nan[a_key][0, 0] = float("nan")
    wrong_shape = dict(tensors)
    wrong_shape[a_key] = torch.zeros(4, tensors[a_key].shape[1] + 1)
    unknown = dict(tensors)
    unknown["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.lora_A.weight"] = torch.zeros(4, 16)
    unknown["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.lora_B.weight"] = torch.zeros(16, 4)
    no_partner = {k: v for k, v in tensors.items() if k != a_key}
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", LORA_MAX_HEADER_BYTES + 1) + b"{" + b" " * (LORA_MAX_HEADER_BYTES + 8))
    many = {f"unet.x{i}.lora_A.weight": torch.zeros(1, 1) for i in range(LORA_MAX_TENSORS + 1)}
    cases = {
        "nan": (_rewrite(first, tmp_path / "nan.safetensors", tensors=nan), "NaN"),
        "shape": (_rewrite(first, tmp_path / "shape.safetensors", tensors=wrong_shape), "shapes"),
        "unknown layer": (_rewrite(first, tmp_path / "unknown.safetensors", tensors=unknown), "does not fit"),
        "no partner": (_rewrite(first, tmp_path / "partner.safetensors", tensors=no_partner), "partner"),
        "rank": (_rewrite(first, tmp_path / "rank.safetensors", meta=dict(meta, rank=8)), "rank"),
        "rank text": (_rewrite(first, tmp_path / "rtext.safetensors", meta=dict(meta, rank="4; rm")), "rank"),
        "alpha": (_rewrite(first, tmp_path / "alpha.safetensors", meta=dict(meta, alpha=-1)), "alpha"),
        "list meta": (_rewrite(first, tmp_path / "list.safetensors", raw_meta="[1, 2]"), "damaged"),
        "deep meta": (_rewrite(first, tmp_path / "deep.safetensors", raw_meta="[" * 60000), "metadata"),
        "huge header": (huge, "header"),
        "many tensors": (_rewrite(first, tmp_path / "many.safetensors", tensors=many), "tensors"),
        "garbage": (tmp_path / "junk.safetensors", "not a readable"),
    }
    (tmp_path / "junk.safetensors").write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00{\"a\":1" + b"\xff" * 50)

    model = build_tiny_model(seed=0)
    base = {k: v.clone() for k, v in model.unet.state_dict().items()}
    out0 = _forward(model)
    for what, (path, msg) in cases.items():  # on a model without a LoRA: it stays a plain model
        with time_limit(10), pytest.raises(LoraFileError, match=msg):
            load_lora(path, model)
        assert not has_lora(model), what
        torch.testing.assert_close(_forward(model), out0, rtol=0, atol=0)
    after = model.unet.state_dict()
    for k, v in base.items():
        assert torch.equal(after[k], v), k

    load_lora(first, model)  # with a LoRA: it keeps that LoRA, bit for bit
    out1 = _forward(model)
    for what, (path, msg) in cases.items():
        with pytest.raises(LoraFileError, match=msg):
            load_lora(path, model)
        assert has_lora(model), what
        for k, v in lora_state_dict(model).items():
            assert torch.equal(v, tensors[k]), (what, k)
        torch.testing.assert_close(_forward(model), out1, rtol=0, atol=0)


def test_a_load_that_fails_inside_peft_is_rolled_back_and_training_still_works(tmp_path, monkeypatch):
    import motion_core.lora_io as lio
    from motion_core.config import RunConfig
    from motion_core.train import train_lora

    first = save_lora(tmp_path / "first.safetensors", _trained_like(seed=1), LoraConfig(rank=4))
    second = save_lora(tmp_path / "second.safetensors", _trained_like(seed=2), LoraConfig(rank=4))
    tensors = read_lora(first)[0]
    model = build_tiny_model(seed=0)
    load_lora(first, model)

    real_set, calls = lio.set_peft_model_state_dict, []

    def broken(*a, **k):  # fails once, inside the load; the rollback's own call then works
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Target modules .* not found in the base model")
        return real_set(*a, **k)

    monkeypatch.setattr(lio, "set_peft_model_state_dict", broken)
    with pytest.raises(LoraFileError, match="model is unchanged"):
        load_lora(second, model)
    monkeypatch.undo()
    for k, v in lora_state_dict(model).items():
        assert torch.equal(v, tensors[k]), k

    real_add, adds = type(model.unet).add_adapter, []

    def failing_add(self, cfg, adapter_name="default"):  # the first call injects, then fails, as peft's did
        real_add(self, cfg, adapter_name)
        adds.append(1)
        if len(adds) == 1:
            raise ValueError("simulated failure after injection")

    monkeypatch.setattr(type(model.unet), "add_adapter", failing_add)
    with pytest.raises(LoraFileError):
        load_lora(second, model)
    monkeypatch.undo()
    for k, v in lora_state_dict(model).items():
        assert torch.equal(v, tensors[k]), k

    load_lora(second, model)  # a good file loads afterwards (was: AttributeError ... 'peft_config')
    cfg = RunConfig()
    cfg.train.steps, cfg.lora.rank, cfg.loss.objective = 2, 4, "ddpm"
    res = train_lora(model, torch.rand(8, 3, 32, 32), "a red circle", tmp_path / "run", cfg)
    assert res.steps_done == 2 and res.lora_path.is_file()


def test_a_lora_for_another_base_model_with_the_same_shapes_loads_with_a_warning(tmp_path):
    path = save_lora(tmp_path / "lora.safetensors", _trained_like(seed=1), LoraConfig(rank=4))
    tensors, meta = read_lora(path)
    other = dict(meta, base_model="someone/other-model", base_fingerprint="someone/other-model|" +
                 meta["base_fingerprint"].split("|")[1])
    moved = _rewrite(path, tmp_path / "moved.safetensors", meta=other)
    model = build_tiny_model(seed=0)
    got = load_lora(moved, model)
    assert has_lora(model)
    warning = base_model_warning(got, model)
    assert warning and "someone/other-model" in warning and "tiny-seed0" in warning
    assert base_model_warning(read_lora(path)[1], model) is None


def test_records_name_the_model_folder_not_the_servers_path(tiny_model_dir, tmp_path):
    from motion_core.config import RunConfig
    from motion_core.models import load_model
    from motion_core.train import train_lora

    model = load_model(str(tiny_model_dir), device="cpu")
    cfg = RunConfig()
    cfg.train.steps, cfg.lora.rank, cfg.loss.objective = 1, 2, "ddpm"
    res = train_lora(model, torch.rand(8, 3, 32, 32), "a red circle", tmp_path / "run", cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    meta = read_lora(res.lora_path)[1]
    assert saved["model"] == meta["base_model"] == tiny_model_dir.name
    assert str(tiny_model_dir.parent) not in json.dumps(saved) + json.dumps(meta)
