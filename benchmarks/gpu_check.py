"""One prepared GPU check of issue 16: speed, memory and gradient precision of training on Zeroscope's architecture.

    python benchmarks/gpu_check.py                        # one H100/H200: about 5-8 minutes, no network
    python benchmarks/gpu_check.py --tiny --device cpu    # the same code on a tiny model (the CPU test)

Zeroscope's UNet3D and VAE from their configs with random weights (nothing downloaded). For each setting:
``--steps`` motion and DDPM LoRA steps (alternating, after one warm-up each) at 384 x 384 x 16, seconds per step,
the motion/DDPM ratio and the allocator's peak; then DDIM inversion and one guided sample (75 steps each, guidance
on, batch 2) plus the VAE decode, with their peaks; then the LoRA-gradient cosine of the default setting against
an all-fp32 step, with TF32 allowed and with it off. Prints JSON lines, then a Markdown table. Settings:

- ``fp32w-amp-nockpt``: before issue 16 (fp32 weights, bf16 autocast denoiser, no checkpointing);
- ``halfw-amp-ckpt``: the GPU default now (fp16 weights with the extractor's path in fp32, bf16 autocast,
  checkpointing): the low-memory combination.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from motion_core.attention import MotionFeatureExtractor  # noqa: E402
from motion_core.config import LoraConfig, LossConfig  # noqa: E402
from motion_core.ddim import abar_at, ddim_move, inversion_timesteps, sampling_timesteps  # noqa: E402
from motion_core.lora_io import add_lora  # noqa: E402
from motion_core.models import zeroscope_architecture  # noqa: E402
from motion_core.objectives import ObjectiveContext, get_objective  # noqa: E402
from motion_core.preflight import ZEROSCOPE_VAE_CONFIG, prepare  # noqa: E402
from motion_core.testing import build_tiny_model  # noqa: E402


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")


def lora_grad(model, params, objective: str, z0, text, t: int, eps, amp, ckpt: bool) -> torch.Tensor:
    ex = MotionFeatureExtractor(model, checkpointing=ckpt) if objective == "motion" else None
    ctx = ObjectiveContext(model, LossConfig(objective=objective), ex, amp, None, ckpt)
    try:
        get_objective(objective)(ctx, z0, text, torch.tensor([t], device=z0.device), eps).loss.backward()
    finally:
        if ex is not None:
            ex.remove()
    g = torch.cat([p.grad.flatten() for p in params]).double()
    for p in params:
        p.grad = None
    return g


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per objective and setting")
    ap.add_argument("--sample-steps", type=int, default=75)
    ap.add_argument("--settings", default="fp32w-amp-nockpt,halfw-amp-ckpt")
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of Zeroscope (CPU test)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    from diffusers import AutoencoderKL

    model = build_tiny_model() if args.tiny else zeroscope_architecture()
    model.unet.to(dev)
    vae = model.vae if args.tiny else AutoencoderKL(**ZEROSCOPE_VAE_CONFIG)
    vae.to(dev, torch.float16 if dev.type == "cuda" else torch.float32).eval().requires_grad_(False)
    params = add_lora(model, LoraConfig(rank=4 if args.tiny else 32, dropout=0.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero: give every LoRA weight a gradient
        for p in params:
            if p.abs().sum() == 0:
                p.add_(torch.randn(p.shape, generator=g).to(dev) * 1e-3)
    lat = args.size // (8 if not args.tiny else model.vae_scale)
    cross = int(model.unet.config.cross_attention_dim)
    z0 = torch.randn(1, 4, args.frames, lat, lat, generator=g).to(dev)
    text = torch.randn(1, 77, cross, generator=g).to(dev)
    amp_dtype = torch.bfloat16 if dev.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    rows = []

    def emit(rec: dict) -> None:
        rows.append(rec)
        print(json.dumps(rec), flush=True)

    for setting in args.settings.split(","):
        half, ckpt = setting.startswith("half"), setting.endswith("-ckpt")
        prepare(model, half, True)
        if half and dev.type == "cuda":  # what load_model's "auto" gives on a GPU: fp16 weights
            for n, p in model.unet.named_parameters():
                if "lora_" not in n and p.dtype == torch.bfloat16:
                    p.data = p.data.to(torch.float16)
        times: dict[str, list[float]] = {"motion": [], "ddpm": []}
        peaks: dict[str, float] = {}
        for objective in times:  # warm-up, then the peak of one step
            eps = torch.randn(z0.shape, generator=g).to(dev)
            lora_grad(model, params, objective, z0, text, 700, eps, amp_dtype, ckpt)
            reset_peak(dev)
            lora_grad(model, params, objective, z0, text, 700, eps, amp_dtype, ckpt)
            sync(dev)
            peaks[objective] = peak_gib(dev)
        for i in range(args.steps):  # alternate so both objectives see the same machine state
            for objective in times:
                eps = torch.randn(z0.shape, generator=g).to(dev)
                sync(dev)
                t0 = time.perf_counter()
                lora_grad(model, params, objective, z0, text, 500 + (37 * i) % 500, eps, amp_dtype, ckpt)
                sync(dev)
                times[objective].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        emit({"setting": setting, "motion_s": round(med["motion"], 3), "ddpm_s": round(med["ddpm"], 3),
              "ratio": round(med["motion"] / med["ddpm"], 2), "motion_peak_gib": round(peaks["motion"], 2),
              "ddpm_peak_gib": round(peaks["ddpm"], 2)})

    # Inversion and one guided sample with the weights of the last setting (half on a GPU), no autocast.
    unet = model.unet
    wdt = torch.float16 if dev.type == "cuda" else torch.float32
    for n, p in unet.named_parameters():
        if "lora_" not in n:
            p.data = p.data.to(wdt)
    sched = model.scheduler
    with torch.no_grad():
        x, c1 = z0.to(wdt), text.to(wdt)
        reset_peak(dev)
        sync(dev)
        t0 = time.perf_counter()
        for t_from, t_to in inversion_timesteps(sched, args.sample_steps):
            e = unet(x, torch.tensor([max(t_from, 0)], device=dev), encoder_hidden_states=c1).sample
            x = ddim_move(x.float(), e.float(), abar_at(sched, t_from), abar_at(sched, t_to)).to(wdt)
        sync(dev)
        emit({"phase": "inversion", "s": round(time.perf_counter() - t0, 2), "peak_gib": round(peak_gib(dev), 2)})
        reset_peak(dev)
        t0 = time.perf_counter()
        c2 = torch.cat([c1, c1])
        for t, t_prev in sampling_timesteps(sched, args.sample_steps):
            tt = torch.tensor([t, t], device=dev)
            e_u, e_c = unet(torch.cat([x, x]), tt, encoder_hidden_states=c2).sample.chunk(2)
            e = e_u.float() + 12.0 * (e_c.float() - e_u.float())
            x = ddim_move(x.float(), e, abar_at(sched, t), abar_at(sched, t_prev)).to(wdt)
        frames = x.permute(0, 2, 1, 3, 4).reshape(-1, 4, lat, lat).to(vae.dtype)
        out = [vae.decode(frames[i:i + 8]).sample for i in range(0, frames.shape[0], 8)]
        sync(dev)
        emit({"phase": "sample+decode", "s": round(time.perf_counter() - t0, 2), "peak_gib": round(peak_gib(dev), 2),
              "frames_shape": list(torch.cat(out).shape)})

    # Gradient precision: the default setting against all-fp32 (TF32 off), with TF32 allowed and not.
    eps = torch.randn(z0.shape, generator=g).to(dev)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        prepare(model, False, False)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        ref = lora_grad(model, params, "motion", z0, text, 600, eps, None, True)
        prepare(model, True, True)
        for tf32 in (True, False):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            got = lora_grad(model, params, "motion", z0, text, 600, eps, amp_dtype, True)
            emit({"cosine_vs_fp32": round(float(F.cosine_similarity(got, ref, dim=0)), 5), "tf32_allowed": tf32,
                  "setting": "halfw-amp-ckpt"})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"\n{name}, {args.frames} frames x {args.size} x {args.size}, {args.steps} steps per objective\n")
    print("| setting | motion s/step | DDPM s/step | ratio | motion peak GiB | DDPM peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "setting" in r and "ratio" in r:
            print(f"| {r['setting']} | {r['motion_s']} | {r['ddpm_s']} | {r['ratio']} | {r['motion_peak_gib']} |"
                  f" {r['ddpm_peak_gib']} |")


if __name__ == "__main__":
    main()
