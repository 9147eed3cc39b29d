"""Model loading: folders in Zeroscope's layout, clear errors when weights are missing, tiny builder, encoders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from motion_core.models import (
    ModelLoadError,
    decode_latents,
    encode_prompt,
    encode_video,
    load_model,
    resolve_dtype,
)
from motion_core.testing import build_tiny_model


def test_folder_round_trip(tiny_model_dir):
    m = load_model(tiny_model_dir, device="cpu")
    ref = build_tiny_model(seed=0)
    for (k, a), (_, b) in zip(m.unet.state_dict().items(), ref.unet.state_dict().items()):
        assert torch.equal(a, b), k
    assert m.capture_blocks == ref.capture_blocks and m.video_defaults == ref.video_defaults
    torch.testing.assert_close(encode_prompt(m, "a red circle"), encode_prompt(ref, "a red circle"))
    side = json.loads((tiny_model_dir / "motion_matcher.json").read_text())
    assert side["capture_blocks"] == list(ref.capture_blocks)


def test_dtypes(tiny_model_dir):
    m = load_model(tiny_model_dir, device="cpu", dtype="bf16")
    assert m.unet.dtype == torch.bfloat16 and m.vae.dtype == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_missing_hub_weights_give_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_model("cerspense/zeroscope_v2_576w", device="cpu")
    msg = str(err.value)
    assert "cerspense/zeroscope_v2_576w" in msg and "huggingface-cli download" in msg and "embedded" in msg


def test_bad_folders(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope", device="cpu")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(ModelLoadError, match=r"lacks the sub-folder\(s\) \['vae'\]"):
        load_model(partial, device="cpu")
    side = tmp_path / "side"
    shutil.copytree(tiny_model_dir, side)
    (side / "motion_matcher.json").write_text(json.dumps({"capture_blocks": ["down_blocks.7"]}))
    with pytest.raises(ModelLoadError, match="down_blocks.7"):
        load_model(side, device="cpu")
    with pytest.raises(ModelLoadError, match="CUDA"):
        if torch.cuda.is_available():
            raise ModelLoadError("CUDA present: nothing to check")
        load_model(tiny_model_dir, device="cuda")


def test_encode_decode_shapes():
    m = build_tiny_model()
    frames = torch.rand(5, 3, 32, 32)
    z = encode_video(m, frames)
    assert z.shape == (1, 4, 5, 16, 16)
    x = decode_latents(m, z)
    assert x.shape == (1, 5, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        encode_video(m, torch.rand(5, 32, 32, 3))


@pytest.mark.parametrize("vocab", ["world", "tiny"])
def test_word_tokenizer_spells_every_word_as_one_token(vocab, tmp_path):
    """Merges of one word must not split another (e.g. "right"'s r+i inside "triangle"); also after a save/load."""
    from transformers import CLIPTokenizer

    from motion_core.models import build_word_tokenizer
    from motion_core.testing import TINY_WORDS
    from shapes_world import world

    words = list(world.VOCABULARY) if vocab == "world" else TINY_WORDS
    tok = build_word_tokenizer(words)
    tok.save_pretrained(tmp_path)
    for t in (tok, CLIPTokenizer.from_pretrained(tmp_path)):
        split = {w: t.tokenize(w) for w in words if len(t.tokenize(w)) != 1}
        assert not split, split
        ids = t(" ".join(words)).input_ids
        assert len(ids) == len(words) + 2 and t.unk_token_id not in ids[1:-1]  # bos + one id per word + eos
    assert tok.tokenize("zzz") == ["z", "z", "z</w>"]  # an unknown word falls back to characters
