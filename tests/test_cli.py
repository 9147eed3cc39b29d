"""The command line end to end on a tiny model folder: train a few steps, sample, invert, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from motion_core.cli import build_parser, main
from motion_core.config import VideoConfig
from motion_core.lora_io import load_lora
from motion_core.models import load_model
from motion_core.video import probe_video, read_video, write_mp4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2 s clip of a bright square moving right, written with ffmpeg (imageio-ffmpeg)."""
    f = np.zeros((24, 48, 48, 3), np.uint8)
    for i in range(24):
        f[i, 16:28, 4 + i:16 + i] = (230, 40, 40)
    path = tmp_path_factory.mktemp("clip") / "square.mp4"
    write_mp4(f, path, fps=12)
    return path


def test_train_then_sample_writes_playable_mp4(tiny_model_dir, clip, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", str(clip), "--caption", "a red square", "--model", str(tiny_model_dir), "--out", str(run),
               "--steps", "2", "--rank", "4", "--device", "cpu"])
    assert rc == 0
    assert (run / "lora.safetensors").is_file() and (run / "reference.mp4").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["steps"] == 2 and cfg["video"]["num_frames"] == 8  # the model's own video size
    load_lora(run / "lora.safetensors", load_model(tiny_model_dir, device="cpu"))

    rc = main(["sample", "--run", str(run), "--prompt", "a blue circle", "--model", str(tiny_model_dir),
               "--steps", "3", "--seed", "5", "--base", "--gif", "--device", "cpu"])
    assert rc == 0
    mp4s = sorted((run / "samples").glob("*.mp4"))
    assert [p.name for p in mp4s] == ["base_seed5_beta0.3.mp4", "lora_seed5_beta0.3.mp4"]
    for p in mp4s:
        info = probe_video(p)
        assert (info.width, info.height) == (32, 32) and info.codec == "h264"
        assert read_video(p, VideoConfig(num_frames=8, height=32, width=32)).shape == (8, 3, 32, 32)
    assert len(list((run / "samples").glob("*.gif"))) == 2
    assert list((run / "cache").glob("inv-*.pt"))  # inverted once, cached for the next sample


def test_invert_command(tiny_model_dir, clip, tmp_path):
    out = tmp_path / "inv.pt"
    assert main(["invert", str(clip), "--out", str(out), "--steps", "3", "--model", str(tiny_model_dir)]) == 0
    assert out.is_file()
    run = tmp_path / "s"
    assert main(["sample", "--inverted", str(out), "--prompt", "a cat", "--model", str(tiny_model_dir),
                 "--steps", "3", "--out", str(run), "--seed", "1"]) == 0
    assert len(list(run.glob("*.mp4"))) == 1


def test_clear_errors(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    assert main(["train", str(bad), "--caption", "x", "--model", str(tiny_model_dir), "--steps", "1"]) == 2
    assert "not a video" in capsys.readouterr().err.lower()
    assert main(["train", str(bad), "--caption", "x", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        if name == "eval":
            continue
        for action in p._actions:
            if action.dest not in ("help",):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
