"""Compare LoRA training settings on one reference of the first shapes world (a model of that world: see
evaluate.py): does the motion loss fall, does motion transfer.

    python benchmarks/lora_settings.py --model runs/first/assets/shapes-t2v --ref 1 --out runs/lora-settings \\
        --variants '{"eps1e-8": {"adam_eps": 1e-8}, "eps1e-12": {"adam_eps": 1e-12}}'

For the base model and then for a LoRA trained with each variant (400 steps unless a variant says otherwise) it
prints one JSON line with
- ``motion_loss_fixed``: the motion loss on the reference averaged over 12 fixed (t, eps) draws (t in [500, 1000)),
  so variants are compared on the same noise, not on their own training stream;
- ``ddpm_other``: the DDPM loss on 6 other clips of the world (how much the LoRA damages the model elsewhere);
- ``dist``: the card's trajectory distance to the reference for 3 new prompts x 2 seeds at beta = 0.3 (the
  evaluation's prompts and sampler settings), ``untracked`` samples and ``colour`` (prompted colour wins).
A variant is a dict of ``lr``, ``adam_eps``, ``rank``, ``objective``, ``steps``, ``weight_decay``,
``capture_blocks``, ``lambda_ca``, ``lambda_tsa`` (training) and ``cutoffs`` (sampling: a list of LoRA cut-offs,
each sampled from the one trained LoRA and reported as ``dist_c<cutoff>``; default the sampler's 500).
``--ref-prompt`` adds ``dist_own``: samples with the reference's own caption, which tells a LoRA that cannot move
the trajectory at all from one that moves it only for the prompt it was trained on. ``montage.png`` stacks the
reference, the base model's and each variant's seed-0 samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from motion_core.attention import MotionFeatureExtractor, lora_disabled  # noqa: E402
from motion_core.config import RunConfig, SampleConfig  # noqa: E402
from motion_core.lora_io import remove_lora  # noqa: E402
from motion_core.models import DEFAULT_MODEL_DIR, encode_prompt, encode_video, load_model  # noqa: E402
from motion_core.objectives import ObjectiveContext, ddpm_loss, motion_loss  # noqa: E402
from motion_core.sample import invert_cached, sample  # noqa: E402
from motion_core.train import train_lora  # noqa: E402
from motion_core.video import frames_from_array, to_uint8  # noqa: E402
from shapes_world import detector, world  # noqa: E402
from shapes_world.evaluate import NEW_PROMPTS, REFERENCES, track_distance  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--ref", type=int, default=1, help=f"reference index 0..{len(REFERENCES) - 1} (evaluate.py)")
    ap.add_argument("--variants", required=True, help="JSON: {name: {setting: value}}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ref-prompt", action="store_true", help="also sample with the reference's own caption")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = json.loads(args.variants)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    vd = model.video_defaults
    f, h, w = int(vd["num_frames"]), int(vd["height"]), int(vd["width"])
    steps = SampleConfig.for_model(model).num_inference_steps

    # 1. The reference, its latents, inversion and the evaluation's new prompts for it.
    ref = REFERENCES[args.ref]
    clip = world.render(world.make_spec(**ref, seed=args.ref, frames=f, height=h, width=w))
    ref_track = detector.track(clip.frames)
    frames = frames_from_array(clip.frames)
    z0, text = encode_video(model, frames), encode_prompt(model, clip.caption).float()
    eps_inv = invert_cached(model, z0, steps, out / "cache")
    prompts = NEW_PROMPTS[args.ref:] + NEW_PROMPTS[: args.ref]
    prompts = [p for p in prompts if world.parse_caption(p)["shape"] != ref["shape"]][:3]

    # 2. Fixed noise draws and other clips, the same for every variant.
    rng = np.random.default_rng(777)
    others = []
    for _ in range(6):
        c = world.render(world.sample_spec(rng, frames=f, n_objects=1))
        others.append((encode_video(model, frames_from_array(c.frames)), encode_prompt(model, c.caption).float()))
    g = torch.Generator().manual_seed(123)
    fixed = [(torch.randint(500, 1000, (1,), generator=g), torch.randn(z0.shape, generator=g)) for _ in range(12)]
    g = torch.Generator().manual_seed(321)
    fixed_all = [(torch.randint(0, 1000, (1,), generator=g), torch.randn(z0.shape, generator=g)) for _ in range(4)]

    def losses(use_lora: bool) -> dict:
        cfg = RunConfig()
        ext = MotionFeatureExtractor(model, None)
        ctx = ObjectiveContext(model, cfg.loss, ext)
        with torch.no_grad(), (contextlib.nullcontext() if use_lora else lora_disabled(model.unet)):
            ml = np.mean([float(motion_loss(ctx, z0, text, t, e).loss) for t, e in fixed])
            dd = np.mean([float(ddpm_loss(ctx, zo, to, t, e).loss) for zo, to in others for t, e in fixed_all])
        ext.remove()
        return {"motion_loss_fixed": float(ml), "ddpm_other": float(dd)}

    def samples(use_lora: bool, cutoff: int = 500) -> tuple[dict, list[np.ndarray]]:
        def run(p: str, seed: int) -> tuple[np.ndarray, float, bool]:
            cfg = SampleConfig.for_model(model, {"beta": 0.3, "seed": seed, "lora_cutoff": cutoff})
            v = to_uint8(sample(model, p, cfg, eps_inv=eps_inv, use_lora=use_lora).frames[0])
            tr = detector.track(v)
            return v, track_distance(tr, ref_track, float(max(h, w))), tr.colour == world.parse_caption(p)["colour"]

        rows, vids = [], []
        for p in prompts:
            for seed in range(2):
                v, dist, colour_ok = run(p, seed)
                rows.append((dist, colour_ok))
                if seed == 0:
                    vids.append(v)
        d = [x for x, _ in rows if not np.isnan(x)]
        out = {"dist": float(np.mean(d)) if d else None, "untracked": len(rows) - len(d),
               "colour": float(np.mean([c for _, c in rows]))}
        if args.ref_prompt:
            own = [run(clip.caption, seed)[1] for seed in range(2)]
            out["dist_own"] = float(np.nanmean(own)) if not all(np.isnan(own)) else None
        return out, vids

    # 3. The base model, then each variant.
    res = {"ref": ref["motion"], "base": losses(False)}
    s, vids = samples(False)
    res["base"].update(s)
    print(json.dumps({"base": res["base"]}), flush=True)
    strips = [np.concatenate(list(clip.frames[::2]), 1), np.concatenate(list(vids[0][::2]), 1)]
    for name, var in variants.items():
        cfg = RunConfig()
        cfg.train.learning_rate = var.get("lr", cfg.train.learning_rate)
        cfg.train.adam_eps = var.get("adam_eps", cfg.train.adam_eps)
        cfg.train.weight_decay = var.get("weight_decay", cfg.train.weight_decay)
        cfg.train.steps = var.get("steps", cfg.train.steps)
        cfg.lora.rank = var.get("rank", cfg.lora.rank)
        cfg.loss.objective = var.get("objective", cfg.loss.objective)
        cfg.loss.lambda_ca = var.get("lambda_ca", cfg.loss.lambda_ca)
        cfg.loss.lambda_tsa = var.get("lambda_tsa", cfg.loss.lambda_tsa)
        if "capture_blocks" in var:
            cfg.loss.capture_blocks = tuple(var["capture_blocks"])
        t0 = time.time()
        train_lora(model, frames, clip.caption, out / name, cfg, resume=False)
        res[name] = {**var, **losses(True), "train_s": time.time() - t0}
        cutoffs = var.get("cutoffs", [500])
        for c in cutoffs:
            s, vids_c = samples(True, c)
            if c == cutoffs[0]:
                res[name].update(s)
                vids = vids_c
            res[name].update({f"{k}_c{c}": val for k, val in s.items()})
        print(json.dumps({name: res[name]}), flush=True)
        strips += [np.concatenate(list(v[::2]), 1) for v in vids[:2]]
        remove_lora(model)
    Image.fromarray(np.concatenate(strips, 0)).save(out / "montage.png")
    (out / "results.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
