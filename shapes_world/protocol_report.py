"""The evaluation protocol's results: the results file, aggregation over (reference, prompt) pairs, tables, plot.

Part of ``shapes_world/protocol.py`` (the entry point and its documentation).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shapes_world.protocol_refs import BASE, ORACLE, VARIANTS, Reference

# Variant names as the tables and the plot show them, and the paper's two tables.
LABELS: dict[str, str] = {
    ORACLE: "ground-truth transfer (rendered)",
    BASE: "base model (no LoRA)",
    "ddpm": "DDPM loss",
    "residual": "residual frames (VMC-style)",
    "frame-diff": "frame differences (MotionDirector-style)",
    "motion": "MotionMatcher (motion features)",
    "motion-no-ca": "MotionMatcher without CA",
    "motion-no-tsa": "MotionMatcher without TSA",
}
TABLE1 = (ORACLE, BASE, "ddpm", "residual", "frame-diff", "motion")  # paper Table 1: methods side by side
TABLE2 = ("motion", "motion-no-ca", "motion-no-tsa")  # paper Table 2: ablation of the two feature kinds

# ---------------------------------------------------------------------------------------------------------------
# the results file
# ---------------------------------------------------------------------------------------------------------------

CSV_FIELDS = (
    "reference", "reference_motion", "variant", "objective", "prompt_index", "prompt", "seed",
    "text_alignment", "text_metric", "clip_t", "frame_consistency", "colour_ok", "shape_ok",
    "prompted_colour", "prompted_shape", "detected_colour", "detected_shape", "motion_discrepancy", "tracker",
    "num_tracks", "trajectory_distance", "track_found", "beta", "train_steps", "sample_steps", "guidance",
    "video", "seconds",
)
METRICS = ("text_alignment", "frame_consistency", "motion_discrepancy", "trajectory_distance", "colour_ok",
           "shape_ok")


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""  # unavailable metric: an empty cell, read back as NaN
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row (header first for a new file); written at once so an interruption loses at most one sample.

    Processes that run different ``--references`` into one folder may append at the same time: the lock keeps the
    header single and the rows whole.
    """
    with path.open("a", newline="") as f:
        _lock(f)
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if f.seek(0, 2) == 0:  # decided under the lock, so two processes cannot both write the header
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in CSV_FIELDS})
        f.flush()


def _lock(f: Any) -> None:
    """Exclusive advisory lock on an open file until it is closed (no-op where fcntl is missing, e.g. Windows)."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def record_protocol(out: Path, refs: Sequence[Reference]) -> None:
    """Write ``protocol.json``: the references of this run merged by name with those already recorded there."""
    path = out / "protocol.json"
    with (out / ".protocol.lock").open("a") as lock:
        _lock(lock)
        merged: dict[str, Any] = {}
        if path.is_file():
            try:
                merged = {d["name"]: d for d in json.loads(path.read_text())}
            except (ValueError, KeyError, TypeError):
                merged = {}  # an unreadable record is rewritten from this run
        merged.update({r.name: r.definition() | {"prompts": r.prompts} for r in refs})
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(list(merged.values()), indent=2))
        tmp.replace(path)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a results file (complete rows only: a line cut short by a crash is dropped)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("seed") not in (None, "") and None not in r.values()]


def row_key(reference: str, variant: str, prompt: str, seed: int | str) -> tuple[str, str, str, int]:
    return (reference, variant, prompt, int(seed))


def _num(x: str | None) -> float:
    try:
        return float(x) if x not in (None, "") else math.nan
    except ValueError:
        return math.nan


# ---------------------------------------------------------------------------------------------------------------
# aggregation, table, plot
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Stat:
    mean: float  # mean over (reference, prompt) pairs of the per-pair mean over seeds
    sem: float  # standard error of that mean over pairs (NaN with one pair)
    pairs: int  # pairs with a value
    samples: int  # samples with a value


def aggregate(rows: Iterable[dict[str, str]], metrics: Sequence[str] = METRICS) -> dict[str, dict[str, Stat]]:
    """Per variant and metric: the mean over (reference, prompt) pairs of each pair's mean over its samples.

    Averaging pairs (not samples) keeps every pair's weight equal when a run is unfinished or a metric is missing
    for some samples; with complete runs both means agree (the paper: 42 pairs x 5 samples). Accuracies
    (``colour_ok``, ``shape_ok``) are reported in percent.
    """
    per_pair: dict[str, dict[str, dict[tuple[str, str], list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        for m in metrics:
            v = _num(r.get(m))
            if math.isfinite(v):
                scale = 100.0 if m in ("colour_ok", "shape_ok") else 1.0
                per_pair[r["variant"]][m][(r["reference"], r["prompt"])].append(v * scale)
    out: dict[str, dict[str, Stat]] = {}
    for variant, by_metric in per_pair.items():
        out[variant] = {}
        for m, pairs in by_metric.items():
            means = np.array([np.mean(v) for v in pairs.values()])
            sem = float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan
            out[variant][m] = Stat(float(means.mean()), sem, len(means), sum(len(v) for v in pairs.values()))
    return out


def _fmt(stat: Stat | None, digits: int) -> str:
    if stat is None:
        return "-"
    if math.isfinite(stat.sem):
        return f"{stat.mean:.{digits}f} ± {stat.sem:.{digits}f}"
    return f"{stat.mean:.{digits}f}"


TABLE_COLUMNS = (  # (metric, header, digits)
    ("text_alignment", "text align. ↑", 2),
    ("frame_consistency", "frame cons. ↑", 2),
    ("motion_discrepancy", "motion discr. ↓", 4),
    ("trajectory_distance", "GT traj. dist. ↓", 3),
    ("colour_ok", "colour acc. % ↑", 1),
    ("shape_ok", "shape acc. % ↑", 1),
)


def format_table(stats: dict[str, dict[str, Stat]], variants: Sequence[str]) -> str:
    """A Markdown table, one row per variant present, laid out like the paper's tables 1 and 2."""
    present = [v for v in variants if v in stats]
    if not present:
        return "_no results yet_\n"
    cols = [c for c in TABLE_COLUMNS if any(c[0] in stats[v] for v in present)]
    head = "| method | pairs | samples | " + " | ".join(h for _, h, _ in cols) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for v in present:
        s = stats[v]
        pairs = max((st.pairs for st in s.values()), default=0)
        samples = max((st.samples for st in s.values()), default=0)
        cells = [_fmt(s.get(m), d) for m, _, d in cols]
        lines.append(f"| {LABELS.get(v, v)} (`{v}`) | {pairs} | {samples} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_reference_table(rows: Sequence[dict[str, str]], variants: Sequence[str]) -> str:
    """Motion discrepancy per reference (rows) and variant (columns): which motions each objective transfers."""
    refs = list(dict.fromkeys(r["reference"] for r in rows))
    present = [v for v in variants if any(r["variant"] == v for r in rows)]
    if not refs or not present:
        return ""
    lines = ["| reference | " + " | ".join(f"`{v}`" for v in present) + " |", "|" + "---|" * (1 + len(present))]
    for ref in refs:
        stats = aggregate([r for r in rows if r["reference"] == ref], ("motion_discrepancy",))
        motion = next((r["reference_motion"] for r in rows if r["reference"] == ref and r["reference_motion"]), "")
        cells = [_fmt(stats.get(v, {}).get("motion_discrepancy"), 4) for v in present]
        lines.append(f"| {ref}{f' ({motion})' if motion else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _values(rows: Sequence[dict[str, str]], column: str) -> list[str]:
    return sorted({r.get(column, "") for r in rows if r.get(column)})


def render_tables(rows: Sequence[dict[str, str]], settings: dict[str, Any] | None = None) -> str:
    """The whole ``table.md``: settings line, table 1 (objectives), table 2 (ablation), per-reference motion."""
    stats = aggregate(rows)
    metrics = _values(rows, "text_metric")
    text_metric = {"clip-t": "CLIP-T (x100)", "detector": "detector: mean of prompted-colour and prompted-shape "
                   "accuracy, %"}
    described = "; ".join(text_metric.get(m, m) for m in metrics) or "unavailable"
    parts = ["# Evaluation results", ""]
    if settings:
        parts += ["Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    parts += [
        f"Tracker: {', '.join(_values(rows, 'tracker')) or '-'}. Text alignment: {described}"
        + (" (MIXED metrics: rerun in a fresh folder)" if len(metrics) > 1 else "") + ".",
        "Values are means over (reference, prompt) pairs of the per-pair mean over seeds, ± standard error over "
        "pairs. Motion discrepancy: symmetric Chamfer distance of point tracks to the reference clip "
        "(docs/method.md). "
        "GT traj. dist.: mean centroid distance to the reference object's true path (frame units) + mean |log| "
        "ratio of relative scale changes (shapes-world references only).",
        "",
        "## Table 1: objectives (cf. paper Table 1)",
        "",
        format_table(stats, TABLE1),
        "## Table 2: ablation of the motion features (cf. paper Table 2)",
        "",
        format_table(stats, TABLE2),
        "## Motion discrepancy per reference",
        "",
        per_reference_table(rows, (ORACLE, BASE, *VARIANTS)) or "_no results yet_\n",
    ]
    return "\n".join(parts)


def plot_alignment_vs_motion(stats: dict[str, dict[str, Stat]], path: Path,
                             text_label: str = "text alignment") -> bool:
    """Text alignment vs motion discrepancy per variant (cf. paper Fig. 7); False when nothing can be plotted."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    pts = [(v, s["motion_discrepancy"], s["text_alignment"]) for v, s in stats.items()
           if "motion_discrepancy" in s and "text_alignment" in s]
    order = [BASE, *VARIANTS, ORACLE]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for v, md, ta in sorted(pts, key=lambda p: order.index(p[0]) if p[0] in order else len(order)):
        i = order.index(v) if v in order else len(order)  # a variant keeps its colour and marker in every run
        ax.errorbar(md.mean, ta.mean, xerr=np.nan_to_num(md.sem), yerr=np.nan_to_num(ta.sem), fmt="osD^v<>"[i % 7],
                    capsize=3, color=f"C{i % 10}", label=f"{LABELS.get(v, v)} ({v})", alpha=0.85)
    ax.set_xlabel("motion discrepancy (lower = closer to the reference motion)")
    ax.set_ylabel(f"{text_label} (higher = closer to the prompt)")
    ax.set_title("Text alignment vs motion discrepancy (cf. paper Fig. 7)")
    if pts:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no scored samples yet", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return bool(pts)


def write_reports(out: Path, settings: dict[str, Any] | None = None,
                  wanted: set[tuple[str, str, str, int]] | None = None) -> tuple[Path, Path]:
    """(Re)write ``table.md`` and ``alignment_vs_motion.png`` from ``results.csv``.

    ``wanted``: keys (reference, variant, prompt, seed) of the protocol as run now. Rows outside it (an earlier run
    with more seeds, prompts since edited) stay in the CSV but do not enter the tables.
    """
    rows = read_rows(out / "results.csv")
    if wanted is not None:
        rows = [r for r in rows if row_key(r["reference"], r["variant"], r["prompt"], r["seed"]) in wanted]
    table = out / "table.md"
    table.write_text(render_tables(rows, settings))
    metrics = _values(rows, "text_metric")
    label = {"clip-t": "CLIP-T (x100)", "detector": "detector text alignment (%)"}.get(metrics[0], "text alignment") \
        if len(metrics) == 1 else "text alignment"
    png = out / "alignment_vs_motion.png"
    plot_alignment_vs_motion(aggregate(rows), png, label)
    return table, png
