"""The evaluation protocol: train one LoRA per (reference, variant), sample new prompts, score, tabulate, plot.

    python -m shapes_world.protocol --protocol shapes6 \\
        --variants motion,ddpm,frame-diff,residual,motion-no-ca,motion-no-tsa --seeds 2 --out runs/eval-shapes6
    python -m shapes_world.protocol --protocol my_protocol.json --model cerspense/zeroscope_v2_576w \\
        --out runs/eval-zs
    python -m shapes_world.protocol --help

A protocol is a JSON list of references, each ``{"reference": <video path | shapes-world spec>, "caption": ...,
"prompts": [...]}`` (optional ``"name"``). A spec is a dict with ``shape``, ``colour``, ``motion`` and optionally
``background``, ``bg_colour``, ``size``, ``speed``, ``seed`` (see ``shapes_world.world.make_spec``); it is
rendered at the model's video size and carries ground-truth tracks. ``--protocol shapes6`` is the built-in one:
six shapes-world references with distinct motions x three prompts that change shape, colour and background.

For each reference the base model (no LoRA) is sampled as a reference row ``base``; for each variant a LoRA is
trained in ``<out>/<reference>/<variant>/`` (``train_lora`` resumes from its checkpoint) and ``--seeds`` videos
(seeds 0..k-1) are sampled per prompt from the beta-blended inverted reference noise (paper App. F). Every sample
is scored and appended to ``results.csv`` at once, so an interrupted run continues where it stopped: finished
LoRAs are loaded, not retrained, and scored samples are skipped. ``table.md`` and ``alignment_vs_motion.png`` are
rewritten from the whole CSV at the end.

Metrics per sample (docs/method.md "Evaluation"):
- motion discrepancy: symmetric Chamfer distance between point tracks of the sample and of the reference clip,
  from ``get_tracker("auto")`` (CoTracker3 when installed, else Lucas-Kanade); the tracker is named in every row;
- text alignment: CLIP-T (x100) and frame consistency when local CLIP weights exist; otherwise, for prompts in the
  shapes-world vocabulary, the detector's prompted-colour / prompted-shape accuracy (mean of the two, in %);
- on shapes-world references also the ground-truth trajectory distance (``trajectory_distance`` between the
  sample's tracked object and the reference object's true centroid path, plus the log ratio of their relative
  scale changes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# This module scores samples, runs the protocol and parses its command line; what is evaluated (variants, protocol
# files, references) is in protocol_refs.py, the results file, tables and plot in protocol_report.py.
from shapes_world.protocol_refs import (
    BASE,
    ORACLE,
    SHAPES6,
    VARIANTS,
    PreparedReference,
    ProtocolError,
    Reference,
    load_protocol,
    parse_protocol,
    parse_variants,
    prepare_reference,
    render_spec,
    to_frames_u8,
    variant_loss,
    video_size,
)
from shapes_world.protocol_report import (
    CSV_FIELDS,
    Stat,
    aggregate,
    append_row,
    format_table,
    plot_alignment_vs_motion,
    read_rows,
    record_protocol,
    render_tables,
    row_key,
    write_reports,
)

__all__ = ["BASE", "CSV_FIELDS", "ORACLE", "VARIANTS", "SHAPES6", "EvalSettings", "PreparedReference",
           "ProtocolError", "Reference", "Stat", "TextScorer", "aggregate", "append_row", "detector_scores",
           "format_table", "load_protocol", "main", "oracle_spec", "parse_protocol", "parse_variants", "plan",
           "plot_alignment_vs_motion", "prepare_reference", "read_rows", "render_spec", "render_tables",
           "run_protocol", "score_sample", "trajectory_score", "write_reports"]

# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------


def point_tracks(track_fn: Callable[..., Any], frames: np.ndarray, grid: int) -> np.ndarray:
    """Valid tracks of a grid, or all of them when none is valid (as ``video_motion_discrepancy`` does)."""
    tracks, valid = track_fn(frames, grid=grid)
    tracks, valid = np.asarray(tracks), np.asarray(valid, dtype=bool)
    return tracks[valid] if valid.any() else tracks


def motion_discrepancy_to(ref_tracks: np.ndarray, frames: np.ndarray, track_fn: Callable[..., Any],
                          grid: int) -> tuple[float, int]:
    """Discrepancy of a sample to the reference's (cached) tracks and the number of sample tracks used."""
    from motion_core.eval.metrics import motion_discrepancy

    gen = point_tracks(track_fn, frames, grid)
    f, h, w = frames.shape[:3]
    return motion_discrepancy(gen, ref_tracks, f, h, w), len(gen)


def detector_scores(frames: np.ndarray, prompt: str) -> tuple[dict[str, Any], Any]:
    """Prompted-colour and prompted-shape correctness of the sample's main object, and its track.

    The main object is the detector's (largest total area); scores are None when the prompt names no shapes-world
    shape or colour.
    """
    from shapes_world import detector, world

    asked = world.parse_caption(prompt)
    tr = detector.track(frames)
    out = {"prompted_colour": asked["colour"] or "", "prompted_shape": asked["shape"] or "",
           "detected_colour": tr.colour, "detected_shape": tr.shape,
           "colour_ok": None if asked["colour"] is None else int(tr.colour == asked["colour"]),
           "shape_ok": None if asked["shape"] is None else int(tr.shape == asked["shape"]),
           "track_found": float(np.mean(tr.found))}
    return out, tr


def trajectory_score(tr: Any, ref: PreparedReference, min_found: float = 0.5) -> float:
    """Ground-truth trajectory distance of a sample's tracked object (NaN without ground truth or a track).

    Positions are compared absolutely (the paper transfers camera framing too), in frame units. Scales are compared
    as changes relative to the first common frame: the prompt changes the shape, and a star and a circle of the same
    nominal size differ in area, but a zoom should still grow both by the same factor.
    """
    from motion_core.eval.metrics import trajectory_distance

    if ref.gt_centroids is None or ref.gt_scales is None:
        return math.nan
    ok = np.asarray(tr.found, dtype=bool) & np.isfinite(tr.scales) & (tr.scales > 0) & (ref.gt_scales > 0)
    if ok.mean() < min_found or ok.sum() < 2:
        return math.nan  # too few frames with the object to say anything about its path
    sa = tr.scales[ok] / tr.scales[ok][0]
    sb = ref.gt_scales[ok] / ref.gt_scales[ok][0]
    h, w = ref.frames.shape[1:3]
    return trajectory_distance(tr.centroids[ok], ref.gt_centroids[ok], (h, w), sa, sb)


class TextScorer:
    """CLIP-T and frame consistency from local CLIP weights; remembers after the first try that they are missing."""

    def __init__(self, clip_model: str | None) -> None:
        self.clip_model = clip_model
        self.unavailable: str | None = None if clip_model else "disabled (--no-clip)"

    def __call__(self, frames: np.ndarray, prompt: str) -> dict[str, float] | None:
        from motion_core.eval.metrics import MetricUnavailable, clip_scores

        if self.unavailable is not None:
            return None
        try:
            res = clip_scores(frames, prompt, self.clip_model)
        except MetricUnavailable as err:
            first = str(err).splitlines()[0]
            self.unavailable = first.split(" (")[0][:200]  # the first clause; the full advice is in the exception
            return None
        return {"clip_t": res["clip_t"], "frame_consistency": res["frame_consistency"]}


def score_sample(frames: np.ndarray, prompt: str, ref: PreparedReference, ref_tracks: np.ndarray,
                 tracker: tuple[str, Callable[..., Any]], text: TextScorer, grid: int) -> dict[str, Any]:
    """Every metric of one sample, as the metric columns of a results row."""
    name, fn = tracker
    md, n_tracks = motion_discrepancy_to(ref_tracks, frames, fn, grid)
    det, tr = detector_scores(frames, prompt)
    row: dict[str, Any] = {"motion_discrepancy": md, "tracker": name, "num_tracks": n_tracks, **det,
                           "trajectory_distance": trajectory_score(tr, ref)}
    clip = text(frames, prompt)
    if clip is not None:
        row.update(clip, text_alignment=clip["clip_t"], text_metric="clip-t")
    elif det["colour_ok"] is not None and det["shape_ok"] is not None:
        # No CLIP here: on the shapes model, "does the video show what the prompt names" is exactly checkable.
        row.update(text_alignment=50.0 * (det["colour_ok"] + det["shape_ok"]), text_metric="detector")
    else:
        row.update(text_alignment=None, text_metric="")
    return row


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EvalSettings:
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: int = 5  # paper: 5 samples per pair
    steps: int = 400  # paper: 400 training steps
    learning_rate: float = 5e-4
    rank: int = 32
    train_seed: int = 0
    precision: str = "auto"
    beta: float = 0.3  # paper's quantitative runs
    sample_steps: int | None = None  # None -> the model's own default, else 75
    guidance: float | None = None  # None -> the model's own default, else 12
    guidance_rescale: float | None = None  # None -> the model's own default, else 0 (no rescale)
    lora_cutoff: int = 500
    grid: int = 10  # tracker grid: grid x grid query points
    clip_model: str | None = "openai/clip-vit-base-patch32"  # None: never try CLIP
    include_base: bool = True
    include_oracle: bool = True  # shapes-world references only

    # Settings that change what a stored LoRA or score means: a re-run into the same folder must use the same.
    FIXED = ("steps", "learning_rate", "rank", "train_seed", "beta", "sample_steps", "guidance", "guidance_rescale",
             "lora_cutoff", "grid")

    def resolve(self, model: Any) -> None:
        """Fill the settings left at None with the model's own sampling defaults."""
        from motion_core.config import SampleConfig

        own = SampleConfig.for_model(model)
        if self.sample_steps is None:
            self.sample_steps = own.num_inference_steps
        if self.guidance is None:
            self.guidance = own.guidance_scale
        if self.guidance_rescale is None:
            self.guidance_rescale = own.guidance_rescale

    def sample_config(self, seed: int) -> Any:
        from motion_core.config import SampleConfig

        return SampleConfig.from_dict({"num_inference_steps": self.sample_steps, "guidance_scale": self.guidance,
                                       "guidance_rescale": self.guidance_rescale or 0.0, "beta": self.beta,
                                       "lora_cutoff": self.lora_cutoff, "seed": seed, "num_videos": 1})

    def run_config(self, model: Any, variant: str) -> Any:
        from motion_core.config import RunConfig, VideoConfig

        cfg = RunConfig(video=VideoConfig.from_dict(video_size(model)), loss=variant_loss(variant))
        cfg.train.steps, cfg.train.learning_rate = self.steps, self.learning_rate
        cfg.train.seed, cfg.train.precision, cfg.lora.rank = self.train_seed, self.precision, self.rank
        cfg.validate()
        return cfg


def check_folder(out: Path, record: dict[str, Any]) -> None:
    """Refuse to mix results made with other settings into ``out``; record the settings on first use."""
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        old.setdefault("guidance_rescale", 0.0)  # folders from before the setting sampled without rescaling
        diff = {k: (old.get(k), v) for k, v in record.items() if old.get(k) != v}
        if diff:
            text = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ProtocolError(f"{out} holds results made with other settings ({text}); use a new --out folder "
                                "or the same settings")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))


def check_reference_folder(folder: Path, ref: Reference) -> None:
    path = folder / "reference.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != ref.definition():
            raise ProtocolError(f"{folder} belongs to another reference definition ({old}); rename the reference "
                                "or use a new --out folder")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ref.definition(), indent=2))


class _Bars:
    """tqdm bars that vanish with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def bar(self, total: int, desc: str, leave: bool = False, position: int | None = None) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=leave, disable=self.quiet, dynamic_ncols=True, position=position)

    def note(self, text: str) -> None:
        if not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(text, file=sys.stderr)


def _train_or_load(model: Any, folder: Path, z0: Any, caption: str, cfg: Any, bars: _Bars) -> str:
    """Load a finished LoRA, else train (resuming from the folder's checkpoint). Returns "loaded" or "trained"."""
    from motion_core.lora_io import load_lora
    from motion_core.train import LORA_FILE, train_lora

    if (folder / LORA_FILE).is_file():
        load_lora(folder / LORA_FILE, model)
        return "loaded"
    bar = bars.bar(cfg.train.steps, f"train {folder.parent.name}/{folder.name}")

    def progress(p: Any) -> None:
        bar.n = p.step
        bar.set_postfix(loss=f"{p.loss:.4g}", refresh=False)
        bar.refresh()

    try:
        train_lora(model, z0, caption, folder, cfg, callback=progress)
    finally:
        bar.close()
    return "trained"


def _row_base(ref: Reference, pref: PreparedReference, variant: str, j: int, prompt: str, seed: int,
              st: EvalSettings) -> dict[str, Any]:
    objective = VARIANTS[variant]["objective"] if variant in VARIANTS else ""
    return {"reference": ref.name, "reference_motion": pref.motion, "variant": variant, "objective": objective,
            "prompt_index": j, "prompt": prompt, "seed": seed, "beta": st.beta,
            "train_steps": st.steps if variant in VARIANTS else 0, "sample_steps": st.sample_steps,
            "guidance": st.guidance}


def _sample_and_score(model: Any, ref: Reference, pref: PreparedReference, variant: str, folder: Path,
                      todo: list[tuple[int, str, int]], eps_inv: Any, ctx: dict[str, Any], out: Path,
                      st: EvalSettings, bars: _Bars) -> None:
    from motion_core.sample import sample
    from motion_core.video import write_mp4

    bar = bars.bar(len(todo), f"sample {ref.name}/{variant}")
    fps = float(video_size(model)["fps"])
    for j, prompt, seed in todo:
        t0 = time.perf_counter()
        res = sample(model, prompt, st.sample_config(seed), eps_inv=eps_inv, use_lora=variant != BASE)
        frames = to_frames_u8(res.frames[0])
        video = write_mp4(frames, folder / "samples" / f"p{j}_seed{seed}.mp4", fps=fps)
        row = _row_base(ref, pref, variant, j, prompt, seed, st)
        row.update(score_sample(frames, prompt, pref, ctx["ref_tracks"], ctx["tracker"], ctx["text"], st.grid))
        row.update(video=str(video.relative_to(out)), seconds=time.perf_counter() - t0)
        append_row(out / "results.csv", row)
        bar.update(1)
    bar.close()


def oracle_spec(ref: Reference, prompt: str) -> dict[str, Any] | None:
    """The reference's spec with the prompt's shape, colours and background (None if the prompt does not say)."""
    from shapes_world import world

    if ref.spec is None:
        return None
    asked = world.parse_caption(prompt)
    keys = ("shape", "colour", "background", "bg_colour")
    if any(asked[k] is None for k in keys) or len(asked["objects"]) != 1:
        return None
    spec = {**ref.spec, **{k: asked[k] for k in keys}}
    if not world.compatible(spec["colour"], spec["bg_colour"]):
        return None
    if spec["motion"].startswith("rotate") and spec["shape"] not in world.ROTATABLE:
        return None
    return spec


def plan(ref: Reference, st: EvalSettings) -> dict[str, list[tuple[int, str, int]]]:
    """Every (prompt index, prompt, seed) to score per variant; the oracle is deterministic, so one seed."""
    variants = ([BASE] if st.include_base else []) + list(st.variants)
    todo = {v: [(j, p, s) for j, p in enumerate(ref.prompts) for s in range(st.seeds)] for v in variants}
    if st.include_oracle and ref.spec is not None:
        todo = {ORACLE: [(j, p, 0) for j, p in enumerate(ref.prompts) if oracle_spec(ref, p)], **todo}
    return todo


def _score_oracle(ref: Reference, pref: PreparedReference, folder: Path, todo: list[tuple[int, str, int]],
                  ctx: dict[str, Any], out: Path, st: EvalSettings, fps: float) -> None:
    from motion_core.video import write_mp4

    f_n, h, w = pref.frames.shape[:3]
    for j, prompt, seed in todo:
        t0 = time.perf_counter()
        frames = render_spec(oracle_spec(ref, prompt), f_n, h, w).frames  # type: ignore[arg-type]
        video = write_mp4(frames, folder / "samples" / f"p{j}_seed{seed}.mp4", fps=fps)
        row = _row_base(ref, pref, ORACLE, j, prompt, seed, st) | {"sample_steps": 0, "guidance": None, "beta": None}
        row.update(score_sample(frames, prompt, pref, ctx["ref_tracks"], ctx["tracker"], ctx["text"], st.grid))
        row.update(video=str(video.relative_to(out)), seconds=time.perf_counter() - t0)
        append_row(out / "results.csv", row)


def run_reference(model: Any, ref: Reference, st: EvalSettings, out: Path, done: set[tuple[str, str, str, int]],
                  tracker: tuple[str, Callable[..., Any]], text: TextScorer, bars: _Bars) -> dict[str, str]:
    """Oracle and base rows and every variant of one reference; returns what happened per variant (for the log)."""

    from motion_core.models import encode_video
    from motion_core.sample import invert_cached
    from motion_core.video import frames_from_array, write_mp4

    folder = out / ref.name
    check_reference_folder(folder, ref)
    todo = {v: [(j, p, s) for j, p, s in items if row_key(ref.name, v, p, s) not in done]
            for v, items in plan(ref, st).items()}
    if not any(todo.values()):
        return {v: "done" for v in todo}  # nothing left: do not even load the clip
    pref = prepare_reference(ref, video_size(model))
    fps = float(video_size(model)["fps"])
    if not (folder / "reference.mp4").is_file():
        write_mp4(pref.frames, folder / "reference.mp4", fps=fps)
    ctx = {"tracker": tracker, "text": text, "ref_tracks": point_tracks(tracker[1], pref.frames, st.grid)}
    z0 = encode_video(model, frames_from_array(pref.frames))
    eps_inv = None
    status: dict[str, str] = {}
    for v, items in todo.items():
        if not items:
            status[v] = "done"
            continue
        if v == ORACLE:
            _score_oracle(ref, pref, folder / v, items, ctx, out, st, fps)
            status[v] = "scored"
            continue
        status[v] = "sampled" if v == BASE else _train_or_load(model, folder / v, z0, ref.caption,
                                                                st.run_config(model, v), bars)
        if eps_inv is None:  # the base model's inversion, shared by all variants and cached on disk
            eps_inv = invert_cached(model, z0, st.sample_steps, folder / "cache")
        _sample_and_score(model, ref, pref, v, folder / v, items, eps_inv, ctx, out, st, bars)
    return status


def run_protocol(model: Any, refs: Sequence[Reference], st: EvalSettings, out: str | Path,
                 quiet: bool = False) -> tuple[Path, Path, Path]:
    """Run (or continue) the protocol into ``out``; returns the paths of results.csv, table.md and the plot."""
    from motion_core.eval.trackers import get_tracker
    from motion_core.lora_io import remove_lora

    out = Path(out)
    st.resolve(model)
    tracker = get_tracker("auto")
    record = {"model": model.fingerprint(), "tracker": tracker[0], **{k: getattr(st, k) for k in st.FIXED}}
    check_folder(out, record)
    record_protocol(out, refs)
    bars = _Bars(quiet)
    text = TextScorer(st.clip_model)
    done = {row_key(r["reference"], r["variant"], r["prompt"], r["seed"]) for r in read_rows(out / "results.csv")}
    wanted = {row_key(r.name, v, p, s) for r in refs for v, items in plan(r, st).items() for _, p, s in items}
    outer = bars.bar(len(refs), "references", leave=True)
    try:
        for ref in refs:
            status = run_reference(model, ref, st, out, done, tracker, text, bars)
            bars.note(f"{ref.name}: " + ", ".join(f"{k} {v}" for k, v in status.items()))
            outer.update(1)
    finally:
        outer.close()
        remove_lora(model)
        if text.unavailable:
            bars.note(f"CLIP text alignment unavailable ({text.unavailable}); the detector's accuracy is used")
        shown = {k: record[k] for k in ("model", "steps", "beta", "sample_steps", "guidance", "tracker")}
        table, png = write_reports(out, {**shown, "seeds": st.seeds, "references": len(refs)}, wanted)
    return out / "results.csv", table, png


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    d = EvalSettings()
    ap = argparse.ArgumentParser(prog="python -m shapes_world.protocol", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    # The protocol may also come first as a positional: `... protocol shapes6 --out runs/eval`.
    ap.add_argument("protocol_pos", nargs="?", default=None, metavar="PROTOCOL", help="same as --protocol")
    ap.add_argument("--protocol", default=None, help="built-in protocol name (shapes6, the default) or a JSON file")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--references", default=None, help="comma-separated reference names: run only these")
    ap.add_argument("--out", default="runs/eval", help="output folder (re-running continues it)")
    ap.add_argument("--seeds", type=int, default=d.seeds, help="samples per prompt, seeds 0..k-1 (paper: 5)")
    ap.add_argument("--steps", type=int, default=d.steps, help="training steps per LoRA (paper: 400)")
    ap.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate")
    ap.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    ap.add_argument("--train-seed", type=int, default=d.train_seed, help="seed of LoRA init, timesteps and noise")
    ap.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16", "fp16"],
                    help="denoiser precision while training")
    ap.add_argument("--beta", type=float, default=d.beta, help="share of inverted noise in z_T (paper: 0.3)")
    ap.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default: the model's, else 75)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's, else 12)")
    ap.add_argument("--lora-cutoff", type=int, default=d.lora_cutoff, help="LoRA on only while t >= this")
    ap.add_argument("--grid", type=int, default=d.grid, help="tracker query grid per side")
    ap.add_argument("--clip-model", default=d.clip_model, help="local CLIP weights for CLIP-T (hub id or folder)")
    ap.add_argument("--no-clip", action="store_true", help="never try CLIP; use the detector's text alignment")
    ap.add_argument("--no-base", action="store_true", help="skip the base-model reference rows")
    ap.add_argument("--no-oracle", action="store_true",
                    help="skip the ground-truth transfer rows (the prompt's scene rendered with the reference motion)")
    ap.add_argument("--model", default=None, help="hub id or folder (default: the embedded shapes-world model)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    return ap


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    if args.seeds < 1 or args.steps < 1 or args.grid < 2:
        raise ProtocolError("--seeds and --steps must be >= 1 and --grid >= 2")
    return EvalSettings(variants=parse_variants(args.variants), seeds=args.seeds, steps=args.steps,
                        learning_rate=args.lr, rank=args.rank, train_seed=args.train_seed, precision=args.precision,
                        beta=args.beta, sample_steps=args.sample_steps, guidance=args.guidance,
                        lora_cutoff=args.lora_cutoff, grid=args.grid,
                        clip_model=None if args.no_clip else args.clip_model, include_base=not args.no_base,
                        include_oracle=not args.no_oracle)


def select_references(refs: list[Reference], names: str | None) -> list[Reference]:
    if not names:
        return refs
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {r.name for r in refs}
    bad = [n for n in wanted if n not in known]
    if bad:
        raise ProtocolError(f"unknown reference(s) {bad}; the protocol has {sorted(known)}")
    return [r for r in refs if r.name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    from motion_core.config import ConfigError
    from motion_core.models import ModelLoadError, load_model
    from motion_core.video import VideoError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]  # a wrapper that hands on a `--` separator (`... -- --protocol shapes6`)
    args = build_parser().parse_args(argv)
    if args.protocol_pos and args.protocol and args.protocol_pos != args.protocol:
        print(f"error: two protocols given ({args.protocol_pos!r} and --protocol {args.protocol!r})", file=sys.stderr)
        return 2
    try:
        st = settings_from_args(args)
        refs = select_references(load_protocol(args.protocol or args.protocol_pos or "shapes6"), args.references)
        model = load_model(args.model, device=args.device)
        paths = run_protocol(model, refs, st, args.out, quiet=args.quiet)
    except (ProtocolError, ConfigError, ModelLoadError, VideoError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue {args.out}", file=sys.stderr)
        return 130
    if not args.quiet:
        for p in paths:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
