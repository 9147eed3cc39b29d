"""Preflight: predicted peaks from the measured fits, the CLI's output, the app's refusal; the memory tracker."""

from __future__ import annotations

import json

import pytest
import torch

from motion_core.cli import main
from motion_core.config import RunConfig
from motion_core.memtrack import cpu_peak_bytes
from motion_core.preflight import MemoryFitError, check_run, fit_line, predict


def test_cli_prints_a_json_line_then_a_sentence_for_a_model_not_on_disk(capsys):
    # HF_HUB_OFFLINE is set (conftest): nothing is downloaded, the hub id falls back to Zeroscope's config.
    rc = main(["preflight", "--model", "someone/not-downloaded", "--frames", "16", "--size", "384",
               "--device", "cuda", "--precision", "bf16", "--grad-checkpointing", "on", "--memory-gb", "24"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2
    rec = json.loads(out[0])
    assert 4 < rec["train_peak_gb"] < 24 and 4 < rec["sample_peak_gb"] < 24 and rec["fits"] is True
    assert "not on disk" in out[1] and "fits the device" in out[1]


def test_predictions_move_the_way_the_settings_do():
    p = lambda **kw: predict("zeroscope-config", **{"frames": 16, "size": 384, "device": "cuda", **kw})  # noqa: E731
    low = p(precision="bf16", grad_checkpointing="on", dtype="fp16")
    assert low.setting == "halfw-amp-ckpt"
    assert p(precision="bf16", grad_checkpointing="off", dtype="fp16").train_peak_gb > 1.5 * low.train_peak_gb
    assert p(precision="bf16", grad_checkpointing="on", dtype="fp32").train_peak_gb > low.train_peak_gb
    assert p(precision="bf16", grad_checkpointing="on", dtype="fp16", frames=8).train_peak_gb < low.train_peak_gb
    assert p(precision="bf16", grad_checkpointing="on", dtype="fp16", size=256).train_peak_gb < low.train_peak_gb
    two = p(precision="bf16", grad_checkpointing="on", dtype="fp16", batch=2)  # two (t, eps) draws a step
    assert low.train_peak_gb < two.train_peak_gb < 2 * low.train_peak_gb and two.sample_peak_gb == low.sample_peak_gb


def test_the_app_check_refuses_what_cannot_fit_and_names_what_does(tiny_model_dir):
    cfg = RunConfig()
    cfg.video.num_frames, cfg.video.height, cfg.video.width = 16, 384, 384
    cfg.train.grad_checkpointing, cfg.train.precision = "off", "fp32"
    with pytest.raises(MemoryFitError, match="--grad-checkpointing on"):
        check_run("zeroscope-config", cfg, device_gb=24.0)
    cfg.train.grad_checkpointing, cfg.train.precision = "on", "bf16"
    assert check_run("zeroscope-config", cfg, device_gb=80.0).fits is True
    cfg.train.batch_size = 8  # eight (t, eps) draws a step: the same video no longer fits 24 GB
    with pytest.raises(MemoryFitError, match="8 draws a step"):
        check_run("zeroscope-config", cfg, device_gb=24.0)
    cfg.train.batch_size = 1
    # Another architecture is measured on the spot (small sizes, CPU); its peak grows with the video too.
    cfg.video.height = cfg.video.width = 32
    small = check_run(str(tiny_model_dir), cfg, device_gb=2.0)
    assert small is not None and small.fits is True and 1.0 < small.train_peak_gb < 2.0  # 1.0: CUDA context
    cfg.video.height = cfg.video.width = 512
    with pytest.raises(MemoryFitError, match="does not fit the device.s 2 GB"):
        check_run(str(tiny_model_dir), cfg, device_gb=2.0)


def test_fit_line_and_the_allocation_tracker():
    a, b = fit_line([(1, 5.0), (2, 7.0), (4, 11.0)])
    assert (a, b) == pytest.approx((3.0, 2.0))

    def work() -> None:
        x = torch.empty(10_000_000, dtype=torch.uint8)
        x.fill_(1)
        del x
        y = torch.empty(4_000_000, dtype=torch.uint8)
        y.fill_(2)

    peak, _ = cpu_peak_bytes(work)
    assert 10_000_000 <= peak < 10_100_000  # the 10 MB tensor, gone before the 4 MB one
