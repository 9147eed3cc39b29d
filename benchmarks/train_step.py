"""Time a motion-feature-matching training step against a plain DDPM LoRA step on the same model, in one run.

    python benchmarks/train_step.py                                  # embedded shapes model, CPU
    python benchmarks/train_step.py --model tiny --steps 10
    python benchmarks/train_step.py --model zeroscope-config --device cuda --frames 16 --size 384   # GPU

``zeroscope-config`` builds Zeroscope's UNet3D architecture from its config with random weights (no download):
enough for speed and memory. The two objectives alternate step by step so that both see the same machine load;
the ratio is motion / ddpm seconds per step (target <= 1.5: the extra work is two truncated forward passes and
one truncated backward). Peak memory: CUDA's allocator peak on a GPU; on a CPU torch's allocation records
(motion_core/memtrack.py). Prints a Markdown table; not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from motion_core.attention import MotionFeatureExtractor  # noqa: E402
from motion_core.config import LoraConfig, LossConfig  # noqa: E402
from motion_core.lora_io import add_lora  # noqa: E402
from motion_core.memtrack import cpu_peak_bytes  # noqa: E402
from motion_core.models import T2VModel, load_model, zeroscope_architecture  # noqa: E402
from motion_core.objectives import ObjectiveContext, get_objective  # noqa: E402
from motion_core.preflight import prepare  # noqa: E402
from motion_core.testing import build_tiny_model  # noqa: E402
from motion_core.train import resolve_amp  # noqa: E402


def zeroscope_like(device: torch.device) -> T2VModel:
    """Zeroscope v2 576w's UNet3D from its published config (STACK.md), random weights."""
    return zeroscope_architecture(device)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="default (embedded), tiny, zeroscope-config, folder, hub id")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--frames", type=int, default=None, help="frames (default: the model's)")
    ap.add_argument("--size", type=int, default=None, help="pixel height = width (default: the model's)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per objective (after 2 warm-up steps)")
    ap.add_argument("--grad-checkpointing", default="off", choices=["on", "off"])
    ap.add_argument("--half-weights", action="store_true",
                    help="bf16 frozen weights, the extractor's path in fp32 (as train_lora with autocast)")
    args = ap.parse_args(argv)

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    if args.model == "tiny":
        model = build_tiny_model()
    elif args.model == "zeroscope-config":
        model = zeroscope_like(dev)
    else:
        model = load_model(None if args.model == "default" else args.model, device=dev, dtype="fp32")
    model.unet.to(dev, torch.float32)
    ckpt = args.grad_checkpointing == "on"
    vd = model.video_defaults
    frames = args.frames or int(vd.get("num_frames", 16))
    size = args.size or int(vd.get("height", 384))
    vae_scale = 8 if model.vae is None else model.vae_scale
    h = size // vae_scale
    cross = int(model.unet.config.cross_attention_dim)
    amp = resolve_amp(args.precision, dev)
    params = add_lora(model, LoraConfig(rank=args.rank, dropout=0.0))
    if args.half_weights:
        prepare(model, True, amp is not None)
    extractor = MotionFeatureExtractor(model, checkpointing=ckpt)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, 4, frames, h, h, generator=g).to(dev)
    text = torch.randn(1, 77, cross, generator=g).to(dev)
    times: dict[str, list[float]] = {"motion": [], "ddpm": []}
    peaks: dict[str, float] = {}

    def step(name: str) -> float:
        ctx = ObjectiveContext(model, LossConfig(objective=name), extractor if name == "motion" else None, amp,
                               None, ckpt)
        t = torch.tensor([700], device=dev)
        eps = torch.randn(z0.shape, generator=g).to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = get_objective(name)(ctx, z0, text, t, eps)
        out.loss.backward()
        for p in params:
            p.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for name in times:  # warm-up and peak memory, one objective at a time
        for _ in range(2):
            step(name)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(name)
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
        else:
            peaks[name] = cpu_peak_bytes(lambda name=name: step(name))[0] / 2**30
    for _ in range(args.steps):  # alternate so both see the same load
        for name in times:
            times[name].append(step(name))

    med = {k: statistics.median(v) for k, v in times.items()}
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"model {model.source}, {frames} frames x {size} x {size} (latent {h} x {h}), LoRA rank {args.rank}, "
          f"denoiser precision {amp or torch.float32}, checkpointing {args.grad_checkpointing}, half weights "
          f"{args.half_weights}, {where}\n")
    mem = "peak GPU memory (GiB)" if dev.type == "cuda" else "step peak above weights (GiB, allocation records)"
    print(f"| objective | s / step (median of {args.steps}) | steps / s | {mem} |")
    print("|---|---|---|---|")
    for k in times:
        print(f"| {k} | {med[k]:.3f} | {1 / med[k]:.2f} | {peaks[k]:.2f} |")
    print(f"\nratio motion / ddpm = {med['motion'] / med['ddpm']:.2f} (target <= 1.5); "
          f"400 motion steps ~ {400 * med['motion'] / 60:.1f} min")


if __name__ == "__main__":
    main()
