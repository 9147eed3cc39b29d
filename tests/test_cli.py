"""The command line end to end on a tiny model folder: train a few steps, sample, invert, clear errors."""

from __future__ import annotations

import json
import re

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
    assert cfg["train"]["batch_size"] == 1 and cfg["train"]["recolour"] == 0  # the library's, as the model says none
    assert cfg["train"]["blur"] == 0
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"": {"red": [255, 0, 0], "green": [0, 255, 0], "blue": [0, 0, 255]}}))
    capsys.readouterr()
    rc = main(["train", str(clip), "--caption", "a red square", "--model", str(tiny_model_dir), "--out",
               str(tmp_path / "run2"), "--steps", "1", "--rank", "4", "--batch-size", "2", "--recolour", "0.5",
               "--recolour-names", str(names), "--blur", "1.5", "--device", "cpu"])
    cfg2 = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert rc == 0 and cfg2["train"]["batch_size"] == 2 and cfg2["train"]["recolour"] == 0.5
    assert cfg2["train"]["blur"] == 1.5
    assert cfg2["train"]["recolour_names"][""]["green"] == [0, 255, 0]
    # red under the five channel orders: red twice, green twice, blue twice, minus the identity
    out = capsys.readouterr().out
    assert "recoloured copies: 5, under a blue square; a green square; a red square" in out

    capsys.readouterr()
    rc = main(["sample", "--run", str(run), "--prompt", "a blue circle", "--model", str(tiny_model_dir),
               "--steps", "3", "--seed", "5", "--base", "--gif", "--report", "--device", "cpu"])
    assert rc == 0
    mp4s = sorted((run / "samples").glob("*.mp4"))
    assert [p.name for p in mp4s] == ["base_seed5_beta0.3.mp4", "lora_seed5_beta0.3.mp4"]
    for p in mp4s:
        info = probe_video(p)
        assert (info.width, info.height) == (32, 32) and info.codec == "h264"
        assert read_video(p, VideoConfig(num_frames=8, height=32, width=32)).shape == (8, 3, 32, 32)
    assert len(list((run / "samples").glob("*.gif"))) == 2
    assert list((run / "inversion").glob("inv-*.pt"))  # inverted once, cached for the next sample

    # --report: the motion report of each video against the run's reference, printed and kept as JSON.
    printed = capsys.readouterr().out
    (rep,) = json.loads((run / "samples" / "report.json").read_text())
    assert rep["seed"] == 5 and rep["base"] is not None
    assert rep["sentence"] in printed and f"{rep['lora']['motion_discrepancy']:.4g}" in printed
    assert f"{rep['base']['motion_discrepancy']:.4g}" in printed and "unavailable" in printed
    assert (run / "samples" / "report_seed5.png").stat().st_size > 1000


def test_invert_command(tiny_model_dir, clip, tmp_path):
    out = tmp_path / "inv.pt"
    assert main(["invert", str(clip), "--out", str(out), "--steps", "3", "--model", str(tiny_model_dir)]) == 0
    assert out.is_file()
    run = tmp_path / "s"
    assert main(["sample", "--inverted", str(out), "--prompt", "a cat", "--model", str(tiny_model_dir),
                 "--steps", "3", "--out", str(run), "--seed", "1"]) == 0
    assert len(list(run.glob("*.mp4"))) == 1


def test_clear_errors(tiny_model_dir, clip, tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    assert main(["train", str(bad), "--caption", "x", "--model", str(tiny_model_dir), "--steps", "1"]) == 2
    assert "not a video" in capsys.readouterr().err.lower()
    assert main(["train", str(clip), "--caption", "x", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest not in ("help",):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_help_is_fast_and_shows_defaults():
    """`motion-matcher --help` imports neither torch nor diffusers (it took 10.6 s on a busy machine with them),
    and every flag's default is shown."""
    import subprocess
    import sys

    code = ("import sys; from motion_core.cli import build_parser; p = build_parser(); "
            "sub = next(a for a in p._actions if a.dest == 'command'); print(sub.choices['train'].format_help()); "
            "print(sub.choices['sample'].format_help()); p.format_help(); "
            "sys.exit(3 if {'torch', 'diffusers'} & set(sys.modules) else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, "torch or diffusers was imported for --help" + res.stderr
    text = " ".join(res.stdout.split())
    for shown in ("optimisation steps (default: the model's own, else 400)",
                  "AdamW learning rate (default: the model's own, else 0.0005)",
                  "LoRA strength (default: 1.0)", "(default: motion)",
                  "offset into the clip in seconds (default: 0.0)"):
        assert shown in text, shown
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: these inputs must be refused before it loads."""
    import motion_core.models as models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(models, "load_model", refuse)


def _nan_lora(tiny_model_dir, path):
    import torch
    from safetensors.torch import save_file

    from motion_core.config import LoraConfig
    from motion_core.lora_io import add_lora, read_lora, save_lora

    model = load_model(tiny_model_dir, device="cpu")
    add_lora(model, LoraConfig(rank=2))
    save_lora(path, model, LoraConfig(rank=2))
    tensors, meta = read_lora(path)
    k = next(iter(tensors))
    tensors[k] = torch.full_like(tensors[k], float("nan"))
    save_file(tensors, str(path), metadata={"motion_matcher": json.dumps(meta)})
    return path


def test_inputs_are_refused_before_the_model_loads(tiny_model_dir, clip, tmp_path, capsys, no_model):
    import time

    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    nan = _nan_lora(tiny_model_dir, tmp_path / "nan.safetensors")
    inv = tmp_path / "inv.pt"
    inv.write_bytes(b"x")
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"": {"red": [255, 0]}}))
    sample = ["sample", "--inverted", str(inv), "--model", str(tiny_model_dir)]
    cases = [
        (["train", str(bad), "--caption", "x", "--model", str(tiny_model_dir)], "not a video"),
        (["train", str(clip), "--caption", "x" * 10_000], "caption is too long"),
        (["train", str(clip), "--caption", "x", "--seed", str(2**70)], "seed must be in"),
        (["train", str(clip), "--caption", "x", "--height", "100"], "height must be a multiple of 8"),
        (["train", str(clip), "--caption", "x", "--recolour", "2"], r"recolour must be in \[0, 1\], got 2"),
        (["train", str(clip), "--caption", "x", "--batch-size", "0"], "batch_size must be in"),
        (["train", str(clip), "--caption", "x", "--blur", "-1"], r"blur must be in \[0, 32\] pixels, got -1"),
        (["train", str(clip), "--caption", "x", "--recolour-names", str(tmp_path / "none.json")], "no such file"),
        (["train", str(clip), "--caption", "x", "--recolour-names", str(bad)], "is not JSON"),
        (["train", str(clip), "--caption", "x", "--recolour-names", str(names)], "three numbers in"),
        ([*sample, "--prompt", "a cat", "--steps", "0"], r"steps must be in \[1, 1000\], got 0"),
        ([*sample, "--prompt", "a cat", "--guidance-rescale", "2"], r"guidance rescale must be in \[0, 1\], got 2"),
        ([*sample, "--prompt", "a cat", "--seed", str(2**70)], "seed must be in"),
        ([*sample, "--prompt", "a cat", "--seed", "-2"], "seed must be in"),
        ([*sample, "--prompt", "p" * 10_000], "prompt is too long"),
        ([*sample, "--prompt", "a cat", "--lora", str(nan)], "NaN"),
        (["invert", str(bad), "--out", str(tmp_path / "o.pt")], "not a video"),
        (["invert", str(clip), "--out", str(tmp_path / "o.pt"), "--steps", "0"], "steps must be in"),
    ]
    for argv, msg in cases:
        t0 = time.perf_counter()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search(msg, err) and "Traceback" not in err, (argv[:3], err)
        assert time.perf_counter() - t0 < 5, argv


def test_damaged_checkpoint_is_named_with_the_way_out_and_errors_start_their_own_line(tiny_model_dir, clip,
                                                                                       tmp_path, capsys):
    run = tmp_path / "run"
    common = ["train", str(clip), "--caption", "a red square", "--model", str(tiny_model_dir), "--out", str(run),
              "--rank", "2", "--objective", "ddpm", "--checkpoint-every", "1"]
    assert main([*common, "--steps", "2"]) == 0
    kept = sorted(p.name for p in run.iterdir())
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated, as by a full disk
    capsys.readouterr()
    assert main([*common, "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "--no-resume" in err and "Traceback" not in err, err
    before = err[: err.index("error:")]
    assert before == "" or before.endswith("\n"), repr(before[-80:])  # the bar was ended first
    assert sorted(p.name for p in run.iterdir()) == kept  # the run's files are all still there
    assert main([*common, "--steps", "2", "--no-resume"]) == 0
    # a resume with another learning rate would mix two runs: refused, with the setting named and the way out
    config = (run / "config.json").read_text()
    capsys.readouterr()
    assert main([*common, "--steps", "3", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "train.learning_rate" in err and "--no-resume" in err and "Traceback" not in err, err
    assert (run / "config.json").read_text() == config


def test_a_resumed_run_says_so_and_the_bar_counts_only_new_steps(tiny_model_dir, clip, tmp_path, capsys,
                                                                 monkeypatch):
    import motion_core.cli as cli

    run = tmp_path / "run"
    common = ["train", str(clip), "--caption", "a red square", "--model", str(tiny_model_dir), "--out", str(run),
              "--rank", "2", "--objective", "ddpm", "--checkpoint-every", "1"]
    assert main([*common, "--steps", "2"]) == 0
    bars = []
    real_bar = cli._bar
    monkeypatch.setattr(cli, "_bar", lambda total, desc: bars.append(real_bar(total, desc)) or bars[-1])
    capsys.readouterr()
    assert main([*common, "--steps", "3"]) == 0
    assert "resuming from step 2 of 3" in capsys.readouterr().err
    bar = bars[0]
    assert (bar.initial, bar.n, bar.total) == (2, 3, 3)  # tqdm's rate is (n - initial) / time


def test_seed_minus_one_is_random_and_a_lora_for_another_model_warns(tiny_model_dir, clip, tmp_path, capsys):
    from safetensors.torch import save_file

    from motion_core.config import LoraConfig
    from motion_core.lora_io import add_lora, read_lora, save_lora

    model = load_model(tiny_model_dir, device="cpu")
    add_lora(model, LoraConfig(rank=2))
    path = save_lora(tmp_path / "lora.safetensors", model, LoraConfig(rank=2))
    tensors, meta = read_lora(path)
    meta["base_fingerprint"] = "someone/another-model|" + meta["base_fingerprint"].split("|")[1]
    save_file(tensors, str(path), metadata={"motion_matcher": json.dumps(meta)})
    inv = tmp_path / "inv.pt"
    assert main(["invert", str(clip), "--out", str(inv), "--steps", "2", "--model", str(tiny_model_dir)]) == 0
    capsys.readouterr()
    out = tmp_path / "s"
    assert main(["sample", "--inverted", str(inv), "--prompt", "a cat", "--model", str(tiny_model_dir),
                 "--lora", str(path), "--steps", "2", "--out", str(out), "--seed", "-1"]) == 0
    err = capsys.readouterr().err
    assert "warning: lora.safetensors" in err and "someone/another-model" in err
    seed = int(re.search(r"seed: (\d+) \(drawn at random\)", err).group(1))
    assert [p.name for p in out.glob("*.mp4")] == [f"lora_seed{seed}_beta0.3.mp4"]
    assert json.loads((out / "sample_config.json").read_text())["seed"] == seed


def test_sample_flags_reach_the_sampling_config():
    from types import SimpleNamespace

    from motion_core.cli import _sample_cfg, build_parser

    args = build_parser().parse_args(["sample", "--prompt", "a cat", "--guidance-rescale", "0.5", "--guidance", "4"])
    cfg = _sample_cfg(args, None)
    assert (cfg.guidance_rescale, cfg.guidance_scale) == (0.5, 4.0)
    own = SimpleNamespace(sample_defaults={"guidance_rescale": 1.0})  # left out: the model's own
    assert _sample_cfg(build_parser().parse_args(["sample", "--prompt", "a cat"]), own).guidance_rescale == 1.0
