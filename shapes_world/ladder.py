"""The transfer ladder: where does motion transfer break on a model of the paths world?

    python -m shapes_world.ladder --model assets/shapes-t2v --out runs/ladder              # 6 + 4 references
    python -m shapes_world.ladder --model M --out O --refs 0,6 --set train.learning_rate=2e-3   # a variant
    python -m shapes_world.ladder --model M --out O --refs 0,6 --rungs L3 --cutoffs 500,300,150  # 1 LoRA, 3 cut-offs
    python -m shapes_world.ladder --merge runs/ladder-a runs/ladder-b:L3 --out runs/ladder   # pool finished ladders

Every rung is a trajectory distance to the reference (``evaluate.track_distance``: the detector's centroid track,
mean distance / frame side, plus the zoom term), averaged over references x prompts x seeds:

* **L0 oracle**: the world itself draws each new prompt on the reference's path (``paths.restyle``): the floor
  set by the detector, since a perfect transfer can do no better.
* **L1**: a plain DDPM LoRA on the reference, sampled with the reference's *own* caption at beta 0 and the LoRA on
  at every step (cut-off 0). Can a LoRA on this model imprint a trajectory at all? (On real models such a LoRA
  reproduces its clip.) Target: within 2x the oracle, and far below the base model with the same caption. It is
  trained to imprint, as long as it takes (``--l1-set``, default ``L1_SETS``: 1000 steps on t in [200, 1000), past
  where this model forms its layout, a tenth of them under the empty caption, which guidance subtracts; 400 steps
  on all of [0, 1000) leave it at 9x the oracle, docs/results.md). The
  cut-off is a product setting that keeps a motion LoRA's look out of the finished frames; this rung asks about
  the trajectory alone, and ``diagnose --formation`` shows the paths model settling its path below t = 500.
* **L2**: the same DDPM LoRA with the new prompts at beta 0, cut-off 0: motion plus leaked look is expected.
* **L3**: the MotionMatcher LoRA (the model's training defaults) with the new prompts at beta 0 and 0.3: the
  product. The reference is inverted as the model's sampling defaults say (``invert_with_lora``; ``--set
  sample.invert_with_lora=true`` for the release's choice on a model that inverts with the base model). Target:
  LoRA / base distance <= 0.5 at both betas, prompted colour kept in >= 80 %. ``--baselines
  ddpm,frame-diff,residual`` trains those objectives with the MotionMatcher LoRA's settings (not L1's) and samples
  them beside it (rows named by objective): does the motion loss beat them on distance at no worse text alignment
  (prompted colour and shape kept)? Each row also records the drawn object's size over the reference's
  (``size``, a column of ``ladder.md``): does a LoRA carry the reference's size (which the distance does not
  read), and are its shapes lost where drawn small? Compare variants on the same prompts, circles first: a star
  and a triangle of one radius differ in area, and a star drawn without its points reads smaller.

The base model is sampled beside each rung with the same prompts, seeds and beta. References 0-5 are drawn from
the training families, 6-9 from ``paths.HELD_OUT`` (families the training data never drew). ``--set
section.key=value`` overrides a training setting for both LoRAs (``train.*``, ``lora.*``, ``loss.*``) or a
sampling one (``sample.lora_cutoff``, ...), so the same script measures the variants that decide the model's
defaults. Writes ``rows.jsonl``, ``summary.json``, ``ladder.md`` and one montage per reference in ``--out``.
Rows are saved after each reference; running the same command again skips the references already done (a long
ladder runs in chunks), and a different command on the same folder is refused. A LoRA that a reference's folder
already holds, finished or checkpointed with the same settings, is reused or resumed rather than trained again: to
sample a finished ladder with more seeds, copy its ``ref<i>`` folders into a new ``--out`` and run the same
command there with ``--first-seed 2`` (the rows of both folders together are the larger ladder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from motion_core.config import ConfigError, RunConfig, SampleConfig, VideoConfig
from motion_core.lora_io import remove_lora
from motion_core.models import T2VModel, encode_video, load_model
from motion_core.sample import invert_cached, sample
from motion_core.train import CheckpointError, train_lora
from motion_core.video import frames_from_array, to_uint8

from . import detector, paths
from .evaluate import track_distance
from .protocol_refs import ProtocolError, parse_variants

# (shape, colour, background, bg_colour, family, seed); 0-5 training families, 6-9 held out.
REFERENCES: list[tuple[str, str, str, str, str, int]] = [
    ("circle", "red", "plain", "grey", "curve", 1),
    ("square", "yellow", "gradient", "blue", "arc", 2),
    ("star", "white", "plain", "black", "bounce", 3),
    ("triangle", "green", "dotted", "grey", "wiggle", 4),
    ("circle", "blue", "plain", "white", "zoom", 5),
    ("triangle", "white", "striped", "blue", "pan", 6),
    ("square", "red", "plain", "white", "zigzag", 7),
    ("star", "blue", "plain", "grey", "square", 8),
    ("circle", "yellow", "plain", "black", "figure8", 9),
    ("triangle", "green", "gradient", "white", "spiral", 10),
]
# The L1 / L2 LoRA's training, over the model's defaults: a DDPM LoRA given what it needs to imprint its clip (the
# clip alone, sharp: recoloured or blurred copies would teach it other looks). Sampling with guidance takes the
# empty caption's prediction as its origin, so a tenth of the draws teach that one the clip too; t from 200 reaches
# the path's fine detail (a wiggle, a zoom) that t >= 400 left to the base model (docs/results.md: 2.4, 2.2, 1.8 x).
L1_SETS = ["loss.t_min=200", "train.steps=1000", "train.recolour=0", "train.blur=0", "train.caption_dropout=0.1"]
NEW_PROMPTS = [
    "a blue star on a plain white background",
    "a yellow triangle on a dotted black background",
    "a red square on a gradient grey background",
    "a green circle on a striped white background",
    "a white star on a plain grey background",
    "a black circle on a plain white background",
]


def reference(i: int, model: T2VModel) -> Any:
    """The i-th reference clip, rendered at the model's video size."""
    shape, colour, bg, bgc, family, seed = REFERENCES[i]
    vd = VideoConfig.for_model(model).to_dict()
    return paths.render(paths.make_spec(shape, colour, bg, bgc, family, seed=seed, frames=int(vd["num_frames"]),
                                        height=int(vd["height"]), width=int(vd["width"])))


def new_prompts(i: int, n: int) -> list[str]:
    """n of ``NEW_PROMPTS`` whose shape differs from the reference's (a different start for each reference)."""
    shift = NEW_PROMPTS[i % len(NEW_PROMPTS):] + NEW_PROMPTS[: i % len(NEW_PROMPTS)]
    return [p for p in shift if paths.parse(p)["shape"] != REFERENCES[i][0]][:n]


def default_config(model: T2VModel) -> RunConfig:
    """The model's training and sampling defaults (its sidecar over the library's), as a user gets them."""
    return RunConfig.for_model(model)


def apply_overrides(cfg: RunConfig, scfg: SampleConfig, sets: list[str]) -> None:
    """``section.key=value`` (value read as JSON where it parses, else as a string) into the configs."""
    for item in sets:
        key, _, raw = item.partition("=")
        section, _, name = key.partition(".")
        target = scfg if section == "sample" else getattr(cfg, section, None)
        if target is None or not hasattr(target, name):
            raise SystemExit(f"--set {item}: unknown setting (use train.*, lora.*, loss.* or sample.*)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        setattr(target, name, tuple(value) if isinstance(value, list) else value)
    cfg.validate()
    scfg.validate()


def _size(model_track: detector.Track, ref_track: detector.Track) -> float:
    """The drawn object's median scale over the frames where it was found, over the reference's (1: the
    reference's size; NaN where either was never found). The distance reads only scale *changes* (zooms); the size
    says whether a LoRA also carries the reference's size, which matters where a model loses small shapes
    (``diagnose --shape-survival --radii``)."""
    a, b = model_track.scales[model_track.found], ref_track.scales[ref_track.found]
    return float(np.median(a) / np.median(b)) if len(a) and len(b) else float("nan")


def _score(model_track: detector.Track, ref_track: detector.Track, side: float, prompt: str) -> dict:
    want = paths.parse(prompt)
    return {"distance": track_distance(model_track, ref_track, side), "size": _size(model_track, ref_track),
            "colour_ok": model_track.colour == want["colour"], "shape_ok": model_track.shape == want["shape"],
            "shape": model_track.shape,  # what was drawn: a miss read as the reference's shape is a leak
            "coherent": bool(model_track.coherent)}


def run_reference(model: T2VModel, i: int, args: argparse.Namespace, out: Path) -> list[dict]:
    """All rungs for one reference; returns its rows."""
    vd = VideoConfig.for_model(model).to_dict()
    side = float(max(int(vd["height"]), int(vd["width"])))
    clip = reference(i, model)
    ref_track = detector.track(clip.frames)
    frames = frames_from_array(clip.frames)
    prompts = new_prompts(i, args.prompts)
    family = REFERENCES[i][4]
    rows: list[dict] = []
    strips = [np.concatenate(list(clip.frames), 1)]

    def add(rung: str, variant: str, prompt: str, seed: int, beta: float, score: dict, cutoff: int = 0) -> None:
        rows.append({"ref": i, "family": family, "held_out": family in paths.HELD_OUT, "rung": rung,
                     "variant": variant, "prompt": prompt, "seed": seed, "beta": beta, "lora_cutoff": cutoff,
                     **score})

    # L0: the world draws each new prompt on the reference's path.
    for p in prompts:
        q = paths.parse(p)
        oracle = paths.render(paths.restyle(clip.spec, q["shape"], q["colour"], q["background"], q["bg_colour"]))
        add("L0", "oracle", p, 0, 0.0, _score(detector.track(oracle.frames), ref_track, side, p))

    steps = args.scfg.num_inference_steps
    z0 = encode_video(model, frames)
    eps_inv = invert_cached(model, z0, steps, out / f"ref{i}" / "cache")

    def draw(prompt: str, seed: int, beta: float, use_lora: bool, cutoff: int) -> np.ndarray:
        # the model's sampling settings as a user gets them (guidance rescale, LoRA strength, ...), --set's and
        # --sample-steps / --guidance (folded into args.scfg at start-up)
        scfg = SampleConfig.from_dict({**args.scfg.to_dict(), "beta": beta, "seed": seed, "lora_cutoff": cutoff,
                                       "num_videos": 1})
        # beta 0 blends none of eps_inv: pure noise
        return to_uint8(sample(model, prompt, scfg, eps_inv=eps_inv, use_lora=use_lora).frames[0])

    def sweep(rung: str, prompt_list: list[str], betas: list[float], with_base: bool, name: str = "lora") -> None:
        # L1, L2: the LoRA on at every step (see above); L3: the model's cut-off, or each of --cutoffs (the same
        # LoRA sampled at each, rows named "lora@C"; the base model has no LoRA to cut, so it is drawn once).
        cutoffs = (args.cutoffs or [args.scfg.lora_cutoff]) if rung == "L3" else [0]
        for beta in betas:
            for p in prompt_list:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    variants = [(name if len(cutoffs) == 1 else f"{name}@{c}", True, c) for c in cutoffs]
                    variants += [("base", False, cutoffs[0])] if with_base else []  # (no LoRA: the cut-off is moot)
                    for variant, use_lora, cutoff in variants:
                        vid = draw(p, seed, beta, use_lora, cutoff)
                        add(rung, variant, p, seed, beta, _score(detector.track(vid), ref_track, side, p), cutoff)
                        # the montage: the first sample of the rung's LoRA (the first cut-off) and of the base model
                        if (seed == args.first_seed and p == prompt_list[0] and beta == betas[0] and name == "lora"
                                and variant in (variants[0][0], "base")):
                            strips.append(np.concatenate(list(vid), 1))

    # The LoRAs to train (folder: (objective, settings)) and the rungs each is sampled for: L1 and L2 a DDPM LoRA
    # trained to imprint (args.l1_cfg), L3 the MotionMatcher LoRA and any baselines beside it (args.cfg).
    plan: dict[str, tuple[str, RunConfig, list[str]]] = {}
    for rung in ("L1", "L2"):
        if rung in args.rungs:
            plan.setdefault("ddpm-l1", ("ddpm", args.l1_cfg, []))[2].append(rung)
    if "L3" in args.rungs:
        for objective in ["motion", *args.baselines]:
            plan[objective] = (objective, args.cfg, ["L3"])
    for folder, (objective, base_cfg, rungs) in plan.items():
        cfg = RunConfig.from_dict(base_cfg.to_dict())
        cfg.loss.objective = objective
        t0 = time.perf_counter()
        try:  # a LoRA this folder already finished (or began) with these settings is reused (or resumed)
            train_lora(model, frames, clip.caption, out / f"ref{i}" / folder, cfg)
        except CheckpointError:  # another run's, or damaged: train this one from the start
            remove_lora(model)
            train_lora(model, frames, clip.caption, out / f"ref{i}" / folder, cfg, resume=False)
        train_s = time.perf_counter() - t0
        if args.scfg.invert_with_lora and "L3" in rungs:
            # as the product does for such a model: the reference inverted with this LoRA on, for the LoRA's
            # samples and the base model's beside them (L1 and L2 sample at beta 0 and never read it)
            eps_inv = invert_cached(model, z0, steps, out / f"ref{i}" / "cache", with_lora=True)
        for rung in rungs:
            if rung == "L1":
                sweep("L1", [clip.caption], [0.0], with_base=True)
            elif rung == "L2":
                sweep("L2", prompts, [0.0], with_base=False)
            else:
                product = objective == "motion"
                sweep("L3", prompts, list(args.betas), with_base=product, name="lora" if product else objective)
        remove_lora(model)
        print(json.dumps({"ref": i, "family": family, "lora": folder, "train_s": round(train_s, 1)}),
              flush=True)
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 2), (0, width - s.shape[1]), (0, 0))) for s in strips]
    Image.fromarray(np.concatenate(strips, 0)).resize((width * 3, sum(s.shape[0] for s in strips) * 3),
                                                       Image.NEAREST).save(out / f"ref{i}_{family}.png")
    return rows


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]  # drop NaN (no track)
    return float(np.mean(xs)) if xs else None


def summarize(rows: list[dict]) -> dict:
    """Mean distance, colour and shape kept and coherence per (rung, variant, beta), for all, trained and held-out
    references, and the ratios the targets read (rows of older runs have no ``shape_ok``: reported as None)."""
    out: dict[str, Any] = {}
    for part, keep in (("all", lambda r: True), ("trained", lambda r: not r["held_out"]),
                       ("held_out", lambda r: r["held_out"])):
        sel = [r for r in rows if keep(r)]
        groups: dict[str, dict] = {}
        for key in sorted({(r["rung"], r["variant"], r["beta"]) for r in sel}):
            g = [r for r in sel if (r["rung"], r["variant"], r["beta"]) == key]
            groups[f"{key[0]} {key[1]} beta={key[2]:g}"] = {
                "n": len(g), "distance": _mean([r["distance"] for r in g]),
                "untracked": sum(r["distance"] != r["distance"] for r in g),
                "colour_ok": float(np.mean([r["colour_ok"] for r in g])),
                "shape_ok": _mean([float(r["shape_ok"]) for r in g if "shape_ok" in r]),
                "size": _mean([r["size"] for r in g if "size" in r]),
                "coherent": float(np.mean([r["coherent"] for r in g]))}
        ratios = {}
        l3_variants = sorted({r["variant"] for r in sel if r["rung"] == "L3"} - {"base"})
        for rung, beta, variant in [("L1", 0.0, "lora")] + [("L3", b, v) for b in sorted({r["beta"] for r in sel})
                                                               for v in l3_variants]:
            a, b = groups.get(f"{rung} {variant} beta={beta:g}"), groups.get(f"{rung} base beta={beta:g}")
            if a and b and a["distance"] is not None and b["distance"]:
                ratios[f"{rung} {variant}/base beta={beta:g}"] = a["distance"] / b["distance"]
        oracle, l1 = groups.get("L0 oracle beta=0"), groups.get("L1 lora beta=0")
        if oracle and l1 and oracle["distance"] and l1["distance"] is not None:
            ratios["L1 / oracle"] = l1["distance"] / oracle["distance"]
        if sel:
            out[part] = {"groups": groups, "ratios": ratios}
    return out


def report_md(summary: dict, cmd: str) -> str:
    lines = [f"# Transfer ladder\n\n`{cmd}`\n"]
    for part, s in summary.items():
        lines += [f"\n## {part} references\n",
                  "| rung | variant | beta | n | distance | untracked | colour | shape | size | coherent |",
                  "|---" * 10 + "|"]
        for key, g in s["groups"].items():
            rung, variant, beta = key.split(" ")
            d = "-" if g["distance"] is None else f"{g['distance']:.3f}"
            shape = "-" if g.get("shape_ok") is None else f"{100 * g['shape_ok']:.0f} %"
            size = "-" if g.get("size") is None else f"{g['size']:.2f}"
            lines.append(f"| {rung} | {variant} | {beta.split('=')[1]} | {g['n']} | {d} | {g['untracked']} | "
                         f"{100 * g['colour_ok']:.0f} % | {shape} | {size} | {100 * g['coherent']:.0f} % |")
        lines += [""] + [f"- {k}: {v:.2f}" for k, v in s["ratios"].items()]
    return "\n".join(lines) + "\n"


def _commands(summary_file: Path, command: str) -> list[str]:
    """Every command run on a ladder folder (chunks of references), this one last: the folder's own record."""
    try:
        old = json.loads(summary_file.read_text())
        earlier = old.get("commands") or [old["command"]]
    except (OSError, ValueError, KeyError):
        earlier = []
    return [c for c in earlier if c != command] + [command]


def _resume(out: Path, args: argparse.Namespace) -> tuple[list[dict], set[int]]:
    """Rows of the references an earlier run with the same settings finished in ``out`` (none in a fresh folder).

    Every setting that changes what a row means must match; ``--refs`` and ``--threads`` may differ, so a long
    ladder can run in chunks of references."""
    key = {name: getattr(args, name) for name in ("prompts", "seeds", "betas", "steps", "sample_steps", "guidance",
                                                   "rungs", "baselines", "set")}
    if "L1" in args.rungs or "L2" in args.rungs:
        key["l1_set"] = args.l1_set
    if args.cutoffs:  # only when given, so that ladders begun before the option existed still resume
        key["cutoffs"] = args.cutoffs
    if args.first_seed:  # the same
        key["first_seed"] = args.first_seed
    if args.scfg.guidance_rescale:  # the same (the model's own or --set's)
        key["guidance_rescale"] = args.scfg.guidance_rescale
    key["model"] = str(Path(args.model).resolve())
    # the same folder may hold other weights by now (a training run continued into it)
    key["weights"] = hashlib.sha256(b"".join(hashlib.sha256(f.read_bytes()).digest()
                                             for f in sorted(Path(args.model).rglob("*.safetensors")))).hexdigest()
    marker, rows_file = out / "settings.json", out / "rows.jsonl"
    if not rows_file.exists():
        marker.write_text(json.dumps(key, indent=1))
        return [], set()
    if not marker.exists() or json.loads(marker.read_text()) != key:
        raise SystemExit(f"{out} holds a ladder with other settings (see {marker}); use a new --out")
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    return rows, {r["ref"] for r in rows}


# What a row means besides its own fields: ladders merge only where these agree (``--refs``, ``--seeds`` and
# ``--first-seed`` are what merging adds up; rungs and their LoRAs' settings are checked where both ran them).
MERGE_MUST_MATCH = ("model", "weights", "prompts", "betas", "steps", "sample_steps", "guidance", "guidance_rescale",
                    "set", "cutoffs")
ROW_KEY = ("ref", "rung", "variant", "prompt", "seed", "beta", "lora_cutoff")


def _link(src: Path, dst: Path) -> None:
    """Hard links (no second copy of a ladder's hundreds of MB of LoRAs), copies where the file system refuses."""
    def one(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=one)
    else:
        one(str(src), str(dst))


def _source(arg: str) -> tuple[Path, set[str] | None]:
    """``LADDER`` (all its rows) or ``LADDER:L1,L3`` (those rungs' rows only, and the oracle's)."""
    head, sep, tail = arg.rpartition(":")
    if sep and tail and set(tail.split(",")) <= {"L1", "L2", "L3"}:
        return Path(head), set(tail.split(","))
    return Path(arg), None


def _folder_rungs(name: str) -> set[str]:
    """The rungs a reference folder's subfolder serves: L1 / L2's DDPM LoRA, L3's LoRAs, or all (the cache)."""
    return {"L1", "L2"} if name == "ddpm-l1" else {"L1", "L2", "L3"} if name == "cache" else {"L3"}


def merge(sources: list[str], out: Path, command: str) -> dict:
    """One ladder from several runs on the same model and settings (chunks of references, more seeds, a rung
    trained another way).

    ``LADDER:RUNGS`` takes only those rungs from a folder. Rows are pooled (a row that two sources both hold, e.g.
    the oracle's, must agree and is kept once); each reference's LoRA folders, inversion cache and montage are
    linked from the first source that has them for a rung it gives. Writes ``rows.jsonl``, ``summary.json`` (its
    ``sources`` list each source's command) and ``ladder.md`` in ``out``, which no ladder run resumes (it has no
    ``settings.json``)."""
    if len(sources) < 2:
        raise SystemExit("--merge: give two or more ladder folders")
    paths_, keys, all_rows, summaries = [], [], [], []
    for arg in sources:
        src, only = _source(arg)
        try:
            key = json.loads((src / "settings.json").read_text())
            summaries.append(json.loads((src / "summary.json").read_text()))
            rows_ = [json.loads(x) for x in (src / "rows.jsonl").read_text().splitlines() if x.strip()]
        except (OSError, ValueError) as err:
            raise SystemExit(f"--merge: {src} is not a finished ladder ({type(err).__name__}: {err})") from None
        key["rungs"] = [r for r in key["rungs"] if only is None or r in only]
        paths_.append(src)
        keys.append(key)
        all_rows.append([r for r in rows_ if r["rung"] == "L0" or r["rung"] in key["rungs"]])
    for i, key in enumerate(keys):  # every pair: any two sources must agree where both give a rung
        for src, other in zip(paths_[:i], keys[:i]):
            differ = [k for k in MERGE_MUST_MATCH if key.get(k) != other.get(k)]
            both = set(key["rungs"]) & set(other["rungs"])
            if "L3" in both and key["baselines"] != other["baselines"]:
                differ.append("baselines")
            if both & {"L1", "L2"} and key.get("l1_set") != other.get("l1_set"):
                differ.append("l1_set")
            if differ:
                raise SystemExit(f"--merge: {paths_[i]} was run with other {', '.join(differ)} than {src}")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--merge: {out} is not empty; merge into a new folder")
    rows: dict[tuple, dict] = {}
    for src, src_rows in zip(paths_, all_rows):
        for r in src_rows:
            k = tuple(r.get(f) for f in ROW_KEY)
            if k in rows:  # both must agree on what both record (rows of older runs have no "shape")
                shared = sorted(rows[k].keys() & r.keys())
                if json.dumps([rows[k][f] for f in shared]) != json.dumps([r[f] for f in shared]):  # (NaN as text)
                    raise SystemExit(f"--merge: {src} and an earlier folder disagree on {dict(zip(ROW_KEY, k))}")
                if len(r) > len(rows[k]):
                    rows[k] = r
            else:
                rows[k] = r
    merged = sorted(rows.values(), key=lambda r: r["ref"])  # stable: each reference's rows in their run order
    out.mkdir(parents=True, exist_ok=True)
    for src, key in zip(paths_, keys):
        for item in sorted(src.glob("ref*")):
            if item.is_file():  # a montage
                if not (out / item.name).exists():
                    _link(item, out / item.name)
                continue
            for sub in sorted(item.iterdir()):
                dst = out / item.name / sub.name
                if _folder_rungs(sub.name) & set(key["rungs"]) and not dst.exists():
                    dst.parent.mkdir(exist_ok=True)
                    _link(sub, dst)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in merged))
    summary = summarize(merged)
    summary["command"] = command
    summary["sources"] = [c for src, sm in zip(paths_, summaries)
                          for c in sm.get("commands") or [sm.get("command", str(src))]]
    settings = dict(summaries[0].get("settings", {}))
    settings["l1_train"] = next((sm["settings"]["l1_train"] for sm, key in zip(summaries, keys)
                                 if {"L1", "L2"} & set(key["rungs"]) and "l1_train" in sm.get("settings", {})), None)
    summary["settings"] = settings
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = report_md({k: v for k, v in summary.items() if k in ("all", "trained", "held_out")}, command)
    (out / "ladder.md").write_text(md)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a paths-world model folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--refs", default=",".join(str(i) for i in range(len(REFERENCES))),
                    help="reference indices (0-5 training families, 6-9 held out)")
    ap.add_argument("--prompts", type=int, default=3, help="new prompts per reference")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds run from this one (more seeds for a finished ladder: its LoRAs copied in are reused)")
    ap.add_argument("--betas", default="0,0.3", help="betas of the L3 rung")
    ap.add_argument("--steps", type=int, default=None, help="LoRA steps (default: the model's training default)")
    ap.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default: the model's)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    ap.add_argument("--rungs", default="L1,L2,L3", help="rungs to run besides the oracle (L1,L2,L3)")
    ap.add_argument("--baselines", default="", help="objectives trained and sampled beside L3's MotionMatcher LoRA "
                    "(e.g. ddpm,frame-diff,residual)")
    ap.add_argument("--set", action="append", default=[], help="section.key=value override (repeatable)")
    ap.add_argument("--l1-set", action="append", default=None,
                    help=f"section.key=value for the L1 / L2 DDPM LoRA, after --set (default: {' '.join(L1_SETS)})")
    ap.add_argument("--cutoffs", default="", help="sample L3's LoRAs at each of these cut-offs (e.g. 500,300,200; "
                    "default: the model's one)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--merge", nargs="+", default=None, metavar="LADDER",
                    help="only pool these finished ladders (chunks of references, more seeds) into --out; LADDER:L1 "
                    "takes one rung's rows")
    args = ap.parse_args(argv)
    if args.merge:
        command = "python -m shapes_world.ladder " + " ".join(sys.argv[1:] if argv is None else argv)
        print(report_md({k: v for k, v in merge(args.merge, Path(args.out), command).items()
                         if k in ("all", "trained", "held_out")}, command))
        return
    if not args.model:
        raise SystemExit("--model: give a paths-world model folder (or --merge LADDER ...)")
    try:
        args.baselines = [b for b in parse_variants(args.baselines) if b != "motion"] if args.baselines else []
    except ProtocolError as e:
        raise SystemExit(f"--baselines: {e}") from None
    try:
        refs = [int(x) for x in args.refs.split(",")]
    except ValueError:
        raise SystemExit(f"--refs {args.refs!r}: give comma-separated indices 0-{len(REFERENCES) - 1}") from None
    if not all(0 <= i < len(REFERENCES) for i in refs):
        raise SystemExit(f"--refs {args.refs!r}: indices run from 0 to {len(REFERENCES) - 1}")
    if args.seeds < 1 or args.first_seed < 0:
        raise SystemExit(f"--seeds {args.seeds} --first-seed {args.first_seed}: at least one seed, from 0 up")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    args.cfg = default_config(model)
    args.scfg = args.cfg.sample  # the model's sampling defaults (cut-off ...), as a user gets them
    if args.steps:
        args.cfg.train.steps = args.steps
    apply_overrides(args.cfg, args.scfg, args.set)
    # --sample-steps / --guidance win over the model's and --set's, once, here: every draw and the summary's
    # settings use args.scfg (the resume key keeps the flags as given, so ladders begun before still resume)
    if args.sample_steps is not None:
        args.scfg.num_inference_steps = args.sample_steps
    if args.guidance is not None:  # guidance 0 (none) is a setting, not "the model's"
        args.scfg.guidance_scale = args.guidance
    try:
        args.scfg.validate()
    except ConfigError as e:
        raise SystemExit(f"--sample-steps / --guidance: {e}") from None
    args.l1_set = L1_SETS if args.l1_set is None else args.l1_set
    if any(item.startswith("sample.") for item in args.l1_set):
        raise SystemExit("--l1-set: the L1 LoRA's training only (train.*, lora.*, loss.*); L1 samples at beta 0, "
                         "the LoRA on throughout")
    args.l1_cfg = RunConfig.from_dict(args.cfg.to_dict())
    apply_overrides(args.l1_cfg, SampleConfig.from_dict(args.scfg.to_dict()), args.l1_set)
    try:
        args.cutoffs = [int(c) for c in args.cutoffs.split(",")] if args.cutoffs else []
    except ValueError:
        raise SystemExit(f"--cutoffs {args.cutoffs!r}: give comma-separated timesteps") from None
    try:
        for c in args.cutoffs:
            SampleConfig(lora_cutoff=c).validate()  # the one range check
    except ConfigError as e:
        raise SystemExit(f"--cutoffs: {e}") from None
    args.betas = [float(b) for b in args.betas.split(",")]
    args.rungs = args.rungs.split(",")
    rows, done = _resume(out, args)
    t0 = time.time()
    for i in refs:
        if i in done:
            print(json.dumps({"ref": i, "skipped": "done in an earlier run of this command"}), flush=True)
            continue
        rows += run_reference(model, i, args, out)
        with open(out / "rows.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    summary = summarize(rows)
    summary["seconds"] = round(time.time() - t0, 1)
    summary["command"] = "python -m shapes_world.ladder " + " ".join(sys.argv[1:] if argv is None else argv)
    summary["commands"] = _commands(out / "summary.json", summary["command"])
    summary["settings"] = {"model": args.model, "train": args.cfg.to_dict(), "sample": args.scfg.to_dict(),
                           "l1_train": args.l1_cfg.to_dict()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = report_md({k: v for k, v in summary.items() if k in ("all", "trained", "held_out")}, summary["command"])
    (out / "ladder.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
