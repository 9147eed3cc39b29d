"""Measure a paths-world model and write its card: the page a user reads before using the embedded model.

    python -m shapes_world.card --model M --flow-only --out runs/flow        # time the default flow, alone
    python -m shapes_world.ladder --model M --out runs/ladder                # motion transfer, every rung
    python -m shapes_world.card --model M --ladder runs/ladder --flow runs/flow --out runs/card --write

What it measures (each target is computed, never typed in):
1. VAE reconstruction PSNR on 40 clips of a seed the training data never used.
2. Prompt following of the base model on 40 prompts (beta 0, pure noise): the detector's colour and shape of
   the sampled object against the prompt, and one coherent object (exactly one object of that colour in every
   frame).
3. Motion transfer, from the ladder's ``summary.json``: L1 within 2x the oracle; L3 LoRA / base trajectory distance
   <= 0.5 at beta 0 and 0.3 with the prompted colour kept in >= 80 %, on the training families and on the
   held-out ones.
4. The default flow (model loading, LoRA training with the model's defaults, inversion, one sample) on this CPU,
   timed alone by ``--flow-only``: <= 2 minutes.

``--write`` writes ``README.md`` (the card) and ``transfer.png`` (reference, LoRA and base frames) into the model
folder; the run-by-run history stays in ``training_info.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from motion_core.config import SampleConfig, VideoConfig
from motion_core.lora_io import load_lora, remove_lora
from motion_core.models import T2VModel, decode_latents, encode_video, load_model, vae_factor
from motion_core.sample import invert_cached, sample
from motion_core.train import train_lora
from motion_core.video import frames_from_array, to_uint8

from . import ladder, paths
from .evaluate import following_scores, judge_clip


def vae_psnr(model: T2VModel, n_clips: int = 40, seed: int = 10_000) -> float:
    """Mean PSNR (dB) of VAE round trips of clips of a seed the training data did not use."""
    vd = VideoConfig.for_model(model).to_dict()
    vals = []
    for c in paths.iter_dataset(n_clips, seed=seed, frames=int(vd["num_frames"]), height=int(vd["height"]),
                                width=int(vd["width"])):
        x = torch.from_numpy(c.frames).float().permute(0, 3, 1, 2) / 255
        rec = decode_latents(model, encode_video(model, x))[0]
        vals.append(10 * math.log10(1.0 / max(float(((rec - x) ** 2).mean()), 1e-12)))
    return float(np.mean(vals))


CARD_SEED = 20_000  # the card's prompts are drawn from seeds CARD_SEED, CARD_SEED + 1, ... (one a prompt)


def prompt_following(model: T2VModel, n: int = 40, seed: int = CARD_SEED, guidance: float | None = None,
                     rescale: float | None = None, steps: int | None = None) -> dict:
    """The base model at beta 0 on the captions of n random clips: colour, shape, coherence, background.

    ``guidance``, ``rescale`` and ``steps`` replace the model's own guidance scale, rescale and DDIM steps
    (``benchmarks/guidance_sweep.py`` chooses them on other seeds)."""
    vd = VideoConfig.for_model(model).to_dict()
    shape = (int(vd["num_frames"]), int(vd["height"]) // model.vae_scale, int(vd["width"]) // model.vae_scale)
    own = ladder.default_config(model).sample.to_dict()  # the model's steps, guidance and rescale
    if guidance is not None:
        own["guidance_scale"] = guidance
    if rescale is not None:
        own["guidance_rescale"] = rescale
    if steps is not None:
        own["num_inference_steps"] = steps
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        prompt = paths.caption(paths.sample_spec(rng))
        cfg = SampleConfig.from_dict({**own, "beta": 0.0, "seed": seed + i})
        out = sample(model, prompt, cfg, latent_shape=shape, use_lora=False)
        rows.append(judge_clip(to_uint8(out.frames[0]), prompt))
    return following_scores(rows)


def flow_timing(model_dir: str) -> dict:
    """Wall time of what a user runs first: load the model, learn reference 0's motion, invert it, one sample."""
    load_before = list(os.getloadavg())  # near 0 on an idle machine; another job shows here
    t_all = time.perf_counter()
    model = load_model(model_dir, device="cpu")
    t_load = time.perf_counter() - t_all
    clip = ladder.reference(0, model)
    frames = frames_from_array(clip.frames)
    cfg = ladder.default_config(model)  # the model's own training and sampling defaults
    scfg = cfg.sample
    scfg.seed = 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train_lora(model, frames, clip.caption, Path(tmp) / "run", cfg)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        eps_inv = invert_cached(model, encode_video(model, frames), scfg.num_inference_steps, Path(tmp) / "cache")
        t_inv = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample(model, ladder.NEW_PROMPTS[0], scfg, eps_inv=eps_inv)
    t_sample = time.perf_counter() - t0
    return {"load_s": t_load, "train_s": t_train, "train_steps": res.steps_done, "invert_s": t_inv,
            "sample_s": t_sample, "total_s": time.perf_counter() - t_all, "threads": torch.get_num_threads(),
            "load_average_before": load_before}


def transfer_picture(model: T2VModel, ladder_dir: Path, path: Path, ref: int = 0) -> str:
    """Reference frames over the LoRA's and the base model's for a new prompt (beta 0, seed 0), 4x enlarged."""
    clip = ladder.reference(ref, model)
    prompt = ladder.new_prompts(ref, 1)[0]
    load_lora(ladder_dir / f"ref{ref}" / "motion" / "lora.safetensors", model)
    scfg = ladder.default_config(model).sample
    scfg.beta, scfg.seed = 0.0, 0
    shape = (clip.frames.shape[0], *(s // model.vae_scale for s in clip.frames.shape[1:3]))
    rows = [clip.frames]
    for use_lora in (True, False):
        rows.append(to_uint8(sample(model, prompt, scfg, latent_shape=shape, use_lora=use_lora).frames[0]))
    remove_lora(model)
    strips = [np.pad(np.concatenate(list(r), 1), ((1, 1), (0, 0), (0, 0)), constant_values=255) for r in rows]
    img = Image.fromarray(np.concatenate(strips, 0))
    img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(path)
    return prompt


def checks(res: dict) -> list[tuple[str, str, str, bool]]:
    """(check, target, measured, met) for every number measured; parts not measured (ladder, flow) are left out."""
    pf, out = res["prompt_following"], []
    out += [("VAE reconstruction PSNR, held-out clips", ">= 30 dB", f"{res['vae_psnr']:.1f} dB",
             res["vae_psnr"] >= 30),
            (f"base model, {pf['n']} prompts: prompted colour", ">= 90 %", f"{100 * pf['colour_acc']:.0f} %",
             pf["colour_acc"] >= 0.9),
            ("prompted shape", ">= 80 %", f"{100 * pf['shape_acc']:.0f} %", pf["shape_acc"] >= 0.8),
            ("one coherent object", ">= 90 %", f"{100 * pf['coherent']:.0f} %", pf["coherent"] >= 0.9)]
    lad = res.get("ladder", {})
    for part in ("trained", "held_out"):
        s = lad.get(part)
        if not s:
            continue
        r, g = s["ratios"], s["groups"]
        name = "training families" if part == "trained" else "held-out families"
        if part == "trained" and "L1 / oracle" in r:
            o, l1 = g["L0 oracle beta=0"]["distance"], g["L1 lora beta=0"]["distance"]
            l1_lora = "DDPM LoRA"
            if res.get("ladder_l1"):  # how the L1 LoRA was trained (ladders older than --l1-set do not say)
                t1 = res["ladder_l1"]
                dropout = t1["train"].get("caption_dropout") or 0
                lr = t1["train"].get("learning_rate")  # the rate matters since models set their own
                l1_lora += (f" ({t1['train']['steps']} steps" + (f" at {lr:g}" if lr else "")
                            + f", t >= {t1['loss']['t_min'] or 0}"
                            + (f", caption dropout {dropout:g})" if dropout else ")"))
            out.append((f"L1: {l1_lora}, own caption, beta 0 ({name})", "<= 2 x oracle",
                        f"{r['L1 / oracle']:.1f} x ({l1:.3f} / {o:.3f})", r["L1 / oracle"] <= 2))
        for beta in ("0", "0.3"):
            key = f"L3 lora/base beta={beta}"
            lo, ba = g.get(f"L3 lora beta={beta}"), g.get(f"L3 base beta={beta}")
            if lo is None or ba is None:
                continue
            if key in r:
                measured = f"{r[key]:.2f} ({lo['distance']:.3f} / {ba['distance']:.3f}, n = {lo['n']})"
            else:  # the detector found no object in every LoRA or every base sample: a miss, not a gap in the page
                measured = (f"no distance: {lo['untracked']} of {lo['n']} LoRA and {ba['untracked']} of {ba['n']} "
                            "base samples have no object to track")
            out.append((f"L3: MotionMatcher LoRA / base distance, beta {beta} ({name})", "<= 0.5", measured,
                        key in r and r[key] <= 0.5))
            out.append((f"L3: prompted colour kept, beta {beta} ({name})", ">= 80 %",
                        f"{100 * lo['colour_ok']:.0f} %", lo["colour_ok"] >= 0.8))
        out += _baseline_checks(g, name, res.get("ladder_pairs", {}).get(part))
    if "flow" in res:
        fl = res["flow"]
        out.append(("default flow on this CPU, timed alone", "<= 2 min",
                    f"{fl['total_s'] / 60:.1f} min ({fl['train_steps']} LoRA steps {fl['train_s']:.0f} s, inversion "
                    f"{fl['invert_s']:.1f} s, sample {fl['sample_s']:.1f} s; {fl['threads']} threads)",
                    fl["total_s"] <= 120))
    return out


def _text(group: dict) -> float | None:
    """Text alignment of a ladder cell: the mean of prompted colour and prompted shape kept (as the protocol's)."""
    return None if group.get("shape_ok") is None else (group["colour_ok"] + group["shape_ok"]) / 2


def paired_text(rows: list[dict]) -> dict[str, dict[str, list[int]]]:
    """Per part (trained / held_out) and L3 baseline: ``[MotionMatcher ahead, baseline ahead, pairs]``, counting
    the samples that share reference, prompt, seed and beta and differ in text alignment (colour and shape kept).
    The means on the card hide how few samples a gap of a point or two is."""
    l3 = {(r["variant"], r["ref"], r["prompt"], r["seed"], r["beta"]): r for r in rows
          if r["rung"] == "L3" and "shape_ok" in r}
    out: dict[str, dict[str, list[int]]] = {}
    for (variant, *key), other in l3.items():
        mm = l3.get(("lora", *key))
        if variant in ("lora", "base") or mm is None:
            continue
        cell = out.setdefault("held_out" if mm["held_out"] else "trained", {}).setdefault(variant, [0, 0, 0])
        t_m, t_o = int(mm["colour_ok"]) + int(mm["shape_ok"]), int(other["colour_ok"]) + int(other["shape_ok"])
        cell[0] += t_m > t_o
        cell[1] += t_o > t_m
        cell[2] += 1
    return out


def _baseline_checks(groups: dict, name: str, pairs: dict[str, list[int]] | None = None
                     ) -> list[tuple[str, str, str, bool]]:
    """MotionMatcher against each baseline the ladder sampled beside it (``ladder --baselines``): a shorter
    trajectory distance at every beta, at no lower text alignment (``pairs``: ``paired_text``'s counts, shown)."""
    out = []
    betas = sorted({k.split("beta=")[1] for k in groups if k.startswith("L3 lora ")}, key=float)
    names = sorted({k.split(" ")[1] for k in groups if k.startswith("L3 ")} - {"lora", "base"})
    for v in names:
        cells = [(groups.get(f"L3 lora beta={b}"), groups.get(f"L3 {v} beta={b}")) for b in betas]
        if not cells or any(m is None or o is None or m["distance"] is None or o["distance"] is None
                            or _text(m) is None or _text(o) is None for m, o in cells):
            continue
        dist = " and ".join(f"{m['distance']:.3f} vs {o['distance']:.3f}" for m, o in cells)
        t_m = float(np.mean([_text(m) for m, _ in cells]))
        t_o = float(np.mean([_text(o) for _, o in cells]))
        ok = all(m["distance"] < o["distance"] for m, o in cells) and t_m >= t_o
        paired = ""
        if pairs and v in pairs:
            a, b, n = pairs[v]
            paired = f" (of {n} paired samples, MotionMatcher's text better in {a}, `{v}`'s in {b})"
        out.append((f"L3: MotionMatcher beats `{v}` ({name})", "shorter distance, text no worse",
                    f"distance (beta {' / '.join(betas)}) {dist}; text {100 * t_m:.0f} vs {100 * t_o:.0f} %{paired}",
                    ok))
    return out


def quality_md(res: dict) -> str:
    rows = checks(res)
    met = sum(1 for r in rows if r[3])
    ladder_cmd = f"`{res.get('ladder_command', 'not run')}`"
    if res.get("ladder_sources"):  # the pooled runs' commands are listed under the card's "Rebuild"
        ladder_cmd += f", pooling {len(res['ladder_sources'])} ladder runs"
    lines = [f"**Targets met: {met} of {len(rows)}.** Measured on {res['hardware']} by `{res['command']}` "
             f"(ladder: {ladder_cmd}).", "",
             "| check | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {c} | {t} | {m} | {'yes' if ok else '**no**'} |" for c, t, m, ok in rows]
    return "\n".join(lines) + "\n"


def defaults_line(side: dict) -> str:
    """The sidecar's sampling and training defaults as the card prints them: the colour table by its names only."""
    own = {k: dict(side[k]) for k in ("sample", "train") if k in side}
    names = own.get("train", {}).get("recolour_names")
    if names:
        own["train"]["recolour_names"] = {k: sorted(v) for k, v in names.items()}
    return json.dumps(own)


def shape_counts(rows: list[dict]) -> dict[str, list[int]]:
    """Per prompted shape of ``prompt_following``'s rows: [drawn right, asked]."""
    per: dict[str, list[int]] = {}
    for r in rows:
        cell = per.setdefault(paths.parse(r["prompt"])["shape"], [0, 0])
        cell[0] += bool(r["shape_ok"])
        cell[1] += 1
    return per


def shape_line(res: dict) -> str:
    """How often each prompted shape came out right on the card's prompts, weakest first: what a user will meet."""
    per = shape_counts(res["prompt_following"].get("rows", []))
    if not per:
        return ""
    order = sorted(per, key=lambda k: per[k][0] / per[k][1])
    return ("How often the prompted shape comes out, on the card's prompts: "
            + ", ".join(f"{k} {per[k][0]} of {per[k][1]}" for k in order) + ".")


def pooled_runs(res: dict) -> str:
    """The commands of the ladder runs a merged ladder pools, for the card's "Rebuild" (empty for one run)."""
    if not res.get("ladder_sources"):
        return ""
    cmds = "\n".join(res["ladder_sources"])
    return (f"\nThe quality table's ladder pools these runs (then `{res['ladder_command']}`; a run with "
            "`--first-seed` samples further seeds from the LoRAs of an earlier run, copied into its folder):"
            f"\n\n```bash\n{cmds}\n```\n")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def init_line(info: dict) -> str:
    """The card's word on a model whose first run started from another's weights (``recipe --init-from``)."""
    init = info.get("init_from")
    if not init:
        return ""
    return (f"\nIts first run started the UNet and text encoder from the model then at `{init['folder']}` "
            f"({init.get('unet_steps')} UNet steps; `--init-from`), so a replay needs that model there: the replay "
            "checks its UNet weights by their SHA-256 and stops if they are not the same.\n")


def write_card(folder: Path, res: dict, prompt: str) -> None:
    info = json.loads((folder / "training_info.json").read_text())["info"]
    side = json.loads((folder / "motion_matcher.json").read_text())
    p = info["params"]
    vd = side["video"]
    factor = vae_factor(json.loads((folder / "vae" / "config.json").read_text()))
    runs = 1 + len(info.get("continued", []))
    n = res.get("ladder_samples") or {"prompts": 3, "seeds": 2}  # (results written before the card counted them)
    card = f"""---
license: apache-2.0
library_name: diffusers
tags: [text-to-video, motion-customization, motionmatcher, toy-model]
---
# shapes-t2v: the embedded text-to-video model

A small text-to-video diffusion model that runs on any CPU with no download: the app, the command line and the
tests use it by default, and because its world is procedural the true motion of every clip is known, so motion
transfer is *measured*, not judged by eye. It has Zeroscope's classes and folder layout (`AutoencoderKL`,
`CLIPTextModel` + `CLIPTokenizer`, `UNet3DConditionModel`, `DDIMScheduler`, `model_index.json`), so
`motion_core.models.load_model("assets/shapes-t2v")` and diffusers' `TextToVideoSDPipeline.from_pretrained` read it.

## What it draws
{vd['num_frames']} frames of {vd['height']} x {vd['width']} pixels at {vd['fps']:g} fps: one object, a
{', '.join(paths.SHAPES[:-1])} or {paths.SHAPES[-1]}, coloured {', '.join(paths.COLOURS[:-1])} or
{paths.COLOURS[-1]}, on a {', '.join(list(paths.BACKGROUNDS)[:-1])} or {list(paths.BACKGROUNDS)[-1]} background
({', '.join(paths.BG_COLOURS)}). Prompts take the captions' form: *"a red circle on a plain white background"*.
Motion is not in the prompt: the base model draws a random smooth path (curves, arcs and loops, bounces,
wiggles, zooms, camera pans); a motion LoRA learnt from a reference clip pins it to the reference's path.

{shape_line(res)}

It cannot draw anything else: no other words, no two objects, no text, no real scenes. For real videos use
Zeroscope on a GPU (`--model cerspense/zeroscope_v2_576w`).
Its guidance was learnt against the empty caption only: leave the negative prompt empty (`docs/results.md`
measures what one in the captions' form does).

![reference, MotionMatcher LoRA and base model](transfer.png)

Top: a reference clip ({ladder.REFERENCES[0][4]} path). Middle: the motion LoRA learnt from it, prompted
*"{prompt}"* (pure noise, beta 0). Bottom: the base model, same prompt and seed.

## Quality
{quality_md(res)}
Motion transfer is the trajectory distance of the detector's track to the reference's (mean centroid distance /
frame side, plus a zoom term), averaged over {len(ladder.REFERENCES) - len(paths.HELD_OUT)} references from the
training families and {len(paths.HELD_OUT)} from families the training data never drew
({', '.join(paths.HELD_OUT)}), {_count(n['prompts'], 'new prompt')} and {_count(n['seeds'], 'seed')} each
(`shapes_world/ladder.py`).

## Model
| part | parameters |
|---|---|
| UNet3DConditionModel ({', '.join(map(str, info.get('unet_channels', [32, 64, 64])))} channels) | \
{p['unet'] / 1e6:.2f} M |
| AutoencoderKL (4 latent channels, factor {factor}) | {p['vae'] / 1e6:.2f} M |
| CLIPTextModel (64 hidden, 2 layers) + word-level tokenizer | {p['text_encoder'] / 1e6:.2f} M |

`motion_matcher.json` holds what this model needs that Zeroscope does not: the block the motion features are read
from ({', '.join(side['capture_blocks'])}), the video size, and sampling and training defaults
({defaults_line(side)}).

## Rebuild
Trained on a 2-core CPU in {runs} run{'s' if runs > 1 else ''} ({info['unet_steps']} UNet steps, \
{info['wall_seconds'] / 60:.0f} min in all); `training_info.json` records every run's command, steps and losses.
One command replays them (stages stop on a wall-clock budget, so step counts depend on the machine):

```bash
python -m shapes_world.recipe --replay assets/shapes-t2v/training_info.json --out assets/shapes-t2v
```
{init_line(info)}{pooled_runs(res)}"""
    (folder / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ladder", default=None, help="a ladder run's folder (its summary.json and LoRAs)")
    ap.add_argument("--flow", default=None, help="a --flow-only run's folder")
    ap.add_argument("--flow-only", action="store_true", help="only time the default flow (run it alone)")
    ap.add_argument("--prompts", type=int, default=40, help="prompts of the prompt-following check")
    ap.add_argument("--write", action="store_true", help="write README.md and transfer.png into the model folder")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python -m shapes_world.card " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.flow_only:
        res = {"flow": flow_timing(args.model), "command": cmd}
        (out / "results.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res["flow"]))
        return
    model = load_model(args.model, device="cpu")
    threads = torch.get_num_threads()
    res: dict = {"model": args.model, "command": cmd,
                 "hardware": f"{platform.machine()} CPU, {os.cpu_count()} cores, {threads} torch "
                             f"thread{'s' if threads != 1 else ''}"}
    res["vae_psnr"] = vae_psnr(model)
    res["prompt_following"] = prompt_following(model, args.prompts)
    if args.ladder:
        summary = json.loads((Path(args.ladder) / "summary.json").read_text())
        res["ladder"] = {k: summary[k] for k in ("trained", "held_out") if k in summary}
        res["ladder_command"] = summary.get("command", f"python -m shapes_world.ladder --out {args.ladder}")
        res["ladder_l1"] = summary.get("settings", {}).get("l1_train")
        if summary.get("sources"):  # a merged ladder (ladder --merge): the runs it pools
            res["ladder_sources"] = summary["sources"]
        rows = [json.loads(x) for x in (Path(args.ladder) / "rows.jsonl").read_text().splitlines() if x.strip()]
        l3 = [r for r in rows if r["rung"] == "L3"]
        res["ladder_pairs"] = paired_text(l3)
        res["ladder_samples"] = {"prompts": max((len({r["prompt"] for r in l3 if r["ref"] == i})
                                                 for i in {r["ref"] for r in l3}), default=0),
                                 "seeds": len({r["seed"] for r in l3})}
    if args.flow:
        res["flow"] = json.loads((Path(args.flow) / "results.json").read_text())["flow"]
    (out / "results.json").write_text(json.dumps(res, indent=1))
    md = quality_md(res)
    (out / "report.md").write_text(md)
    print(md)
    if args.write:
        folder = Path(args.model)
        prompt = transfer_picture(model, Path(args.ladder), folder / "transfer.png") if args.ladder else ""
        write_card(folder, res, prompt)


if __name__ == "__main__":
    main()
