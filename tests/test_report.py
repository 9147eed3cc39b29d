"""The motion report (``motion_core.report``): the order of its scores on synthetic clips, its plain sentence,
and its CLIP scores, present with a tiny random CLIP and reported as unavailable without one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from motion_core.report import comparison_sentence, motion_report, report_lines, save_figure, tracks_figure


def moving_square(direction: int, frames: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    """A textured square crossing a textured, still background, 3 px a frame right (+1) or left (-1); texture so the
    Lucas-Kanade tracker has corners to follow. (F, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    background = (rng.random((size, size, 1)) * 60 + 40).repeat(3, axis=2)
    patch = rng.random((14, 14, 3)) * 200 + 55
    out = np.empty((frames, size, size, 3), np.uint8)
    for k in range(frames):
        x = 10 + 3 * k if direction > 0 else size - 24 - 3 * k
        fr = background.copy()
        fr[24:38, x:x + 14] = patch
        out[k] = fr.astype(np.uint8)
    return out


def test_a_copy_of_the_reference_scores_better_than_a_clip_moving_the_other_way(tmp_path):
    ref = moving_square(+1)
    copy, other_way = ref.copy(), moving_square(-1)
    rep = motion_report(ref, copy, other_way, tracker="lk", clip="/nonexistent/clip")
    assert rep.lora.motion_discrepancy == 0.0 < rep.base.motion_discrepancy
    assert rep.verdict == "closer" and "match the reference's exactly" in rep.sentence
    # The other way round: the report says plainly that the LoRA video did worse.
    worse = motion_report(ref, other_way, copy, tracker="lk", clip="/nonexistent/clip")
    assert worse.verdict == "further" and "the LoRA video's do not" in worse.sentence and "no sign" in worse.sentence
    # A clip moving the same way but slower sits between the two.
    slower = np.stack([ref[0]] + [ref[k // 2] for k in range(1, 8)])
    mid = motion_report(ref, slower, other_way, tracker="lk", clip="/nonexistent/clip")
    assert 0 < mid.lora.motion_discrepancy < mid.base.motion_discrepancy
    assert mid.verdict == "closer" and f"{mid.ratio:.1f}x more closely" in mid.sentence
    d = json.loads(json.dumps(mid.to_dict(), allow_nan=False))  # what the API returns: strict JSON
    assert d["tracker"] == "lk" and d["lora"]["tracks"] > 0 and d["ratio"] == pytest.approx(mid.ratio)
    png = save_figure(tracks_figure(mid), tmp_path / "tracks.png")
    assert png.stat().st_size > 5000


def test_channels_first_float_videos_and_other_sizes_are_accepted():
    ref = moving_square(+1)
    video = ref[:, ::2, ::2].transpose(0, 3, 1, 2).astype(np.float32) / 255  # (F, 3, 32, 32) in [0, 1]
    rep = motion_report(ref, video, tracker="lk", clip="/nonexistent/clip")
    assert (rep.frames, rep.height, rep.width) == (8, 32, 32) and rep.base is None and rep.verdict == "no base"
    assert "Generate with the base model too" in rep.sentence
    with pytest.raises(ValueError, match="too few"):
        motion_report(ref[:4], video, tracker="lk")


def test_the_sentence_follows_the_ratio():
    assert comparison_sentence(0.01, 0.023)[:1] == ("closer",)
    assert "2.3x more closely" in comparison_sentence(0.01, 0.023)[1]
    assert comparison_sentence(0.01, 0.0105)[0] == "same"
    verdict, text, ratio = comparison_sentence(0.02, 0.01)
    assert verdict == "further" and "2.0x further" in text and ratio == 0.5


def test_clip_scores_are_unavailable_without_a_model_and_say_why():
    ref = moving_square(+1)
    rep = motion_report(ref, ref, moving_square(-1), prompt="a square", tracker="lk", clip="/nonexistent/clip")
    assert rep.clip["available"] is False and "no CLIP model on disk" in rep.clip["reason"]
    assert rep.lora.clip_t is None and rep.base.look is None
    text = "\n".join(report_lines(rep.to_dict()))
    assert "unavailable" in text and "Lucas-Kanade" in text


def test_clip_scores_with_a_tiny_random_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from motion_core.testing import build_tiny_model

    tok = build_tiny_model(seed=0).tokenizer
    cfg = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32,
                                  "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
                                  "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                  "pad_token_id": tok.pad_token_id},
                     vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                                    "num_hidden_layers": 1, "num_attention_heads": 2}, projection_dim=8)
    import torch

    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    ref, other = moving_square(+1), moving_square(-1, seed=1)
    rep = motion_report(ref, ref, other, prompt="a square", tracker="lk", clip=(model, proc))
    assert rep.clip["available"] is True
    assert 99 < rep.lora.look <= 100  # the reference itself: every pair of frames shows the same texture
    assert rep.base.look < rep.lora.look  # another texture looks less like the reference
    assert -100 <= rep.lora.clip_t <= 100
