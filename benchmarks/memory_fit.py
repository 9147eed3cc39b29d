"""Measure peak memory of training and sampling steps on Zeroscope's architecture at small sizes (CPU), for the fit.

    OMP_NUM_THREADS=1 python benchmarks/memory_fit.py --weights half --out runs/mem-half.jsonl
    OMP_NUM_THREADS=1 python benchmarks/memory_fit.py --weights fp32 --settings amp-nockpt,amp-ckpt --out ...
    python benchmarks/memory_fit.py --fit runs/mem-*.jsonl        # writes motion_core/preflight_zeroscope.json

Zeroscope's UNet3D from its config, random weights, a rank-32 LoRA (dropout 0.1). Each record is one step's peak
of torch's CPU allocator above the weights (motion_core/memtrack.py): a motion and a DDPM training step per
setting, and a no-grad UNet evaluation at batch 1 (inversion) and 2 (guided sampling). ``--fit`` fits
``a + b * frames * h * w`` (latent positions) per (kind, setting) on the ``fit`` points and reports the error on
the ``check`` points, which the fit never saw. One process holds one weight dtype (fp32: 5.3 GiB of weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from motion_core.config import LoraConfig  # noqa: E402
from motion_core.lora_io import add_lora  # noqa: E402
from motion_core.models import zeroscope_architecture  # noqa: E402
from motion_core.preflight import (  # noqa: E402
    TABLE,
    fit_line,
    measure_denoise_step,
    measure_train_step,
    prepare,
    setting_name,
)

NO_GRAD = ("invert", "guided", "decode")


def parse_points(s: str) -> list[tuple[int, int]]:
    return [(int(f), int(px)) for f, px in (p.split("x") for p in s.split(",") if p)]


def measure_vae(args: argparse.Namespace) -> None:
    """Peak of decoding ``frames`` latent frames at once with Zeroscope's VAE (the sampler decodes 8 at a time)."""
    from diffusers import AutoencoderKL

    from motion_core.memtrack import cpu_peak_bytes
    from motion_core.preflight import ZEROSCOPE_VAE_CONFIG

    torch.set_num_threads(1)
    dtype = torch.bfloat16 if args.weights == "half" else torch.float32
    vae = AutoencoderKL(**ZEROSCOPE_VAE_CONFIG).to(dtype).eval().requires_grad_(False)
    out = open(args.out, "a") if args.out else sys.stdout
    points = [(p, "fit") for p in parse_points(args.points)] + [(p, "check") for p in parse_points(args.check)]
    for (f, px), role in points:
        z = torch.randn(f, 4, px // 8, px // 8, dtype=dtype)
        t0 = time.perf_counter()
        with torch.no_grad():
            peak, _ = cpu_peak_bytes(lambda z=z: vae.decode(z).sample)
        rec = {"kind": "decode", "setting": f"{args.weights}w", "frames": f, "size": px, "role": role, "peak": peak,
               "sec": round(time.perf_counter() - t0, 1)}
        out.write(json.dumps(rec) + "\n")
        out.flush()
        print(json.dumps(rec), file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> None:
    if args.vae:
        measure_vae(args)
        return
    torch.set_num_threads(1)
    half = args.weights == "half"
    model = zeroscope_architecture()
    params = add_lora(model, LoraConfig(rank=32, dropout=0.1))
    out = open(args.out, "a") if args.out else sys.stdout
    points = [(p, "fit") for p in parse_points(args.points)] + [(p, "check") for p in parse_points(args.check)]

    def emit(rec: dict) -> None:
        out.write(json.dumps(rec) + "\n")
        out.flush()
        print(json.dumps(rec), file=sys.stderr, flush=True)

    for s in args.settings.split(","):
        amp, ckpt = s.split("-")[0] == "amp", s.split("-")[1] == "ckpt"
        prepare(model, half, amp)
        name = setting_name(half, amp, ckpt)
        for (f, px), role in points:
            for objective in args.objectives.split(","):
                if role == "check" and objective != "motion":
                    continue
                t0 = time.perf_counter()
                peak = measure_train_step(model, objective, f, px // 8, px // 8, amp, ckpt, params)
                emit({"kind": f"train-{objective}", "setting": name, "frames": f, "size": px, "role": role,
                      "peak": peak, "sec": round(time.perf_counter() - t0, 1)})
    if args.sample:
        prepare(model, half, False) if not half else model.unet.to(torch.bfloat16)
        for p in params:
            p.data = p.data.float()
        for (f, px), role in points:
            for batch, kind in ((1, "invert"), (2, "guided")):
                t0 = time.perf_counter()
                peak = measure_denoise_step(model, batch, f, px // 8, px // 8)
                emit({"kind": kind, "setting": f"{'half' if half else 'fp32'}w", "frames": f, "size": px,
                      "role": role, "peak": peak, "sec": round(time.perf_counter() - t0, 1)})


def fit(files: list[str]) -> None:
    recs = [json.loads(line) for fn in files for line in Path(fn).read_text().splitlines() if line.strip()]
    table: dict[str, dict[str, list[float]]] = {}
    print("| kind | setting | a (GiB) | b (bytes / latent position) | check points: measured -> predicted (GiB) |")
    print("|---|---|---|---|---|")
    for key in sorted({(r["kind"], r["setting"]) for r in recs}):
        rs = [r for r in recs if (r["kind"], r["setting"]) == key]
        pts = [(r["frames"] * (r["size"] // 8) ** 2, r["peak"]) for r in rs if r["role"] == "fit"]
        if len(pts) < 2 or (key[0] in NO_GRAD and key[1] == "fp32w"):  # fp32w no-grad: derived below
            continue
        if key[0] in NO_GRAD:
            # A no-grad pass's peak is one transient buffer, which follows the frame size more than the frame count
            # (4 x 256 px peaks above 8 x 192 px): bound it by its largest bytes per position, no offset.
            a, b = 0.0, max(y / x for x, y in pts)
        else:
            a, b = fit_line(pts)
        table.setdefault(key[0], {})[key[1]] = [a, b]
        checks = []
        for r in (r for r in rs if r["role"] == "check"):
            pred = a + b * r["frames"] * (r["size"] // 8) ** 2
            checks.append(f"{r['frames']}x{r['size']}: {r['peak'] / 2**30:.3f} -> {pred / 2**30:.3f} "
                          f"({100 * (pred - r['peak']) / r['peak']:+.0f} %)")
        print(f"| {key[0]} | {key[1]} | {a / 2**30:.3f} | {b:.0f} | {'; '.join(checks)} |")
    for kind in NO_GRAD:  # fp32 weights: the same buffers at twice the bytes (measured only at small sizes)
        if "halfw" in table.get(kind, {}):
            table[kind]["fp32w"] = [0.0, 2 * table[kind]["halfw"][1]]
            print(f"| {kind} | fp32w | 0 | {2 * table[kind]['halfw'][1]:.0f} | derived: twice halfw's bytes |")
    TABLE.write_text(json.dumps({"model": "zeroscope-config", "units": "bytes; a + b * frames * h * w (latent)",
                                 "measured_by": "benchmarks/memory_fit.py", "fits": table}, indent=1) + "\n")
    print(f"\nwrote {TABLE}\n")
    print_table()


SETTINGS = (("before issue 16: fp32 weights, bf16 autocast", "bf16", "off", "fp32", ""),
            ("+ checkpointing", "bf16", "on", "fp32", ""),
            ("half weights (fp16, extractor path fp32), no checkpointing", "bf16", "off", "fp16", ""),
            ("half weights + checkpointing whole blocks (first version)", "bf16", "on", "fp16", "-block"),
            ("low-memory = GPU default now: half weights + checkpointing", "bf16", "on", "fp16", ""))


def print_table(frames: int = 16, size: int = 384) -> None:
    """Predicted GPU peaks at ``frames x size x size`` for the settings of docs/performance.md."""
    from motion_core.preflight import GPU_OVERHEAD_GB, predict

    print(f"Predicted peaks at {frames} x {size} x {size} on a GPU (GiB; weights of UNet, VAE and text encoder, "
          f"LoRA + Adam, step activations, + {GPU_OVERHEAD_GB} for the CUDA context and allocator slack)\n")
    print("| setting | motion step | DDPM step | inversion / guided sampling |\n|---|---|---|---|")
    for label, prec, ckpt, dtype, suffix in SETTINGS:
        cells, sample = [], ""
        for objective in ("motion", "ddpm"):
            try:
                p = predict("zeroscope-config", frames, size, "cuda", prec, ckpt, dtype, objective=objective,
                            advise=False, fit_suffix=suffix)
                cells.append(f"{p.train_peak_gb:.1f}")
                sample = f"{p.sample_peak_gb:.1f}"
            except ValueError:
                cells.append("not measured")
        print(f"| {label} | {cells[0]} | {cells[1]} | {sample} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", choices=["fp32", "half"], default="half")
    ap.add_argument("--settings", default="amp-nockpt,amp-ckpt", help="comma list of {amp,fp32}-{ckpt,nockpt}")
    ap.add_argument("--points", default="2x64,8x64,2x128", help="fit points: frames x pixels")
    ap.add_argument("--check", default="6x64,3x128", help="points the fit does not see")
    ap.add_argument("--objectives", default="motion,ddpm")
    ap.add_argument("--sample", action="store_true", help="also measure no-grad UNet steps (batch 1 and 2)")
    ap.add_argument("--vae", action="store_true", help="measure VAE decoding (frames decoded at once) instead")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fit", nargs="*", default=None, help="fit the given records instead of measuring")
    args = ap.parse_args(argv)
    if args.fit is not None:
        fit(args.fit) if args.fit else print_table()
    else:
        measure(args)


if __name__ == "__main__":
    main()
