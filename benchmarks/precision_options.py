"""How to keep the motion signal precise with half-precision base weights: measured on Zeroscope's architecture.

    OMP_NUM_THREADS=1 python benchmarks/precision_options.py --frames 4 --size 64

Zeroscope's UNet3D from its config with random weights (no download), a rank-32 LoRA with random B (so every
LoRA weight gets a gradient), the motion objective at t = 500 and 800. For each option it prints the cosine
between its LoRA gradient and the all-fp32 reference's, the seconds of one step (loss + backward, CPU, one run,
options interleaved per timestep), the peak memory of the step above the weights (torch's allocation records,
motion_core/memtrack.py) and the bytes of the weights:

- ``fp32``: every weight and every pass in fp32 (the reference);
- ``fp32-weights``: the trainer before issue 16: fp32 weights, denoiser under bf16 autocast, extractor in fp32;
- ``half+fp32-path``: bf16 weights except the extractor's path (stem and down blocks up to the capture block),
  which is fp32; denoiser under bf16 autocast, extractor in fp32 (what ``train_lora`` does now);
- ``half``: bf16 weights and a bf16 extractor (the naive version; docs/method.md measured it as rounding noise);
- ``half+jvp``: bf16 weights, the feature difference taken as a forward-mode product ``J_M(v_hat) d`` with
  ``d = v_theta - v_hat`` formed in fp32 (torch.autograd.forward_ad), so it is never the cancellation of two
  nearly equal maps; its loss is ``lambda * mean((J d)^2)``, the first-order form of the motion loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from motion_core.attention import MotionFeatureExtractor, extractor_path  # noqa: E402
from motion_core.config import LoraConfig, LossConfig  # noqa: E402
from motion_core.ddim import add_noise, v_t  # noqa: E402
from motion_core.lora_io import add_lora  # noqa: E402
from motion_core.memtrack import cpu_peak_bytes  # noqa: E402
from motion_core.models import zeroscope_architecture  # noqa: E402
from motion_core.objectives import LossOutput, ObjectiveContext, motion_loss, predict_noise  # noqa: E402

OPTIONS = ("fp32", "fp32-weights", "half+fp32-path", "half", "half+jvp")


def jvp_motion_loss(ctx: ObjectiveContext, z0: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
                    eps: torch.Tensor) -> LossOutput:
    """First-order motion loss: ``lambda * mse(J_M(v_hat) d, 0)`` per component, ``d = v_theta - v_hat``."""
    sched = ctx.model.scheduler
    z_t = add_noise(sched, z0, eps, t)
    eps_theta = predict_noise(ctx, z_t, t, text)
    v_hat = v_t(sched, z_t, eps, t)
    d = v_t(sched, z_t, eps_theta, t) - v_hat  # fp32: the difference of two fp32 maps, exact enough
    # The forward-mode product needs the math attention kernel (the fused ones have no forward-AD formula).
    with fwad.dual_level(), sdpa_kernel(SDPBackend.MATH):
        feats = ctx.extractor(fwad.make_dual(v_hat, d), (t - 1).clamp(min=0), text)
        j_ca, j_tsa = fwad.unpack_dual(feats.ca).tangent, fwad.unpack_dual(feats.tsa).tangent
    l_ca, l_tsa = j_ca.float().pow(2).mean(), j_tsa.float().pow(2).mean()
    loss = ctx.cfg.lambda_ca * l_ca + ctx.cfg.lambda_tsa * l_tsa
    return LossOutput(loss, {"ca": float(l_ca), "tsa": float(l_tsa)})


def set_option(model, option: str, path: list[str]) -> torch.dtype | None:
    """Cast the frozen weights for ``option``; return the denoiser's autocast dtype."""
    half = option.startswith("half")
    for n, p in model.unet.named_parameters():
        if "lora_" in n:
            continue
        in_path = any(n == q or n.startswith(q + ".") for q in path)
        want = torch.bfloat16 if half and not (option == "half+fp32-path" and in_path) else torch.float32
        p.data = p.data.to(want)
    return None if option == "fp32" else torch.bfloat16


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="pixels (latent = size / 8)")
    ap.add_argument("--timesteps", default="500,800")
    ap.add_argument("--options", default=",".join(OPTIONS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    model = zeroscope_architecture()
    params = add_lora(model, LoraConfig(rank=32, dropout=0.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            if p.abs().sum() == 0:  # lora_B starts at zero: give every LoRA weight a gradient
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    ex = MotionFeatureExtractor(model)
    path = extractor_path(model.unet, model.capture_blocks)
    lat = args.size // 8
    z0 = torch.randn(1, 4, args.frames, lat, lat, generator=g)
    text = torch.randn(1, 77, 1024, generator=g)
    options = args.options.split(",")
    results: dict[str, dict[str, list[float]]] = {o: {"cos": [], "sec": [], "peak": []} for o in options}
    weights: dict[str, float] = {}
    for t in (int(x) for x in args.timesteps.split(",")):
        eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
        ref = None
        for option in ["fp32"] + [o for o in options if o != "fp32"]:
            amp = set_option(model, option, path)
            weights[option] = sum(p.numel() * p.element_size() for p in model.unet.parameters()) / 2**30
            ctx = ObjectiveContext(model, LossConfig(), ex, amp)
            loss_fn = jvp_motion_loss if option == "half+jvp" else motion_loss
            for p in params:
                p.grad = None

            def step(ctx=ctx, loss_fn=loss_fn, t=t, eps=eps) -> None:
                loss_fn(ctx, z0, text, torch.tensor([t]), eps).loss.backward()

            t0 = time.perf_counter()
            peak, _ = cpu_peak_bytes(step)
            sec = time.perf_counter() - t0
            grad = torch.cat([p.grad.flatten() for p in params]).double()  # fp32 sums over 21 M terms drift
            if option == "fp32":
                ref = grad
            if option in results:
                results[option]["cos"].append(float(F.cosine_similarity(grad, ref, dim=0)))
                results[option]["sec"].append(sec)
                results[option]["peak"].append(peak / 2**30)
            print(json.dumps({"t": t, "option": option, "cos": results.get(option, {}).get("cos", [None])[-1],
                              "sec": round(sec, 2), "peak_gib": round(peak / 2**30, 3)}), flush=True)
    print(f"\nZeroscope architecture (random weights), {args.frames} frames x {args.size} x {args.size}, LoRA rank 32,"
          f" CPU, one thread; t = {args.timesteps}\n")
    print("| option | LoRA-gradient cosine vs fp32 (min) | s / step (mean) | step peak above weights (GiB) |"
          " UNet weights (GiB) |")
    print("|---|---|---|---|---|")
    for o in options:
        r = results[o]
        print(f"| {o} | {min(r['cos']):.4f} | {sum(r['sec']) / len(r['sec']):.1f} | {max(r['peak']):.3f} |"
              f" {weights[o]:.2f} |")


if __name__ == "__main__":
    main()
