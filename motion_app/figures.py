"""Pictures for the page: the training loss curve and the reference clip's motion features.

- ``loss_figure``: the loss smoothed (each step faint), with its cross-attention (CA) and temporal self-attention
  (TSA) parts each relative to its own start;
- ``cross_attention_picture``: for a few caption words, where each word's cross-attention falls in every frame
  (the paper's figure 3: the maps follow the object as it moves);
- ``temporal_attention_picture``: frame-to-frame temporal attention as heat maps (the paper's figure 4), averaged
  over the picture and at the object's and the background's place.

Works on numpy arrays only (the model run that produces the maps lives in ``motion_app.media``). Uses matplotlib's
object API, never pyplot: pyplot keeps global state that is not safe across the app's threads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

# Distinct, colour-blind-friendly line colours (Okabe-Ito).
COLORS = {"loss": "#000000", "ca": "#E69F00", "tsa": "#0072B2"}
PART_LABELS = {"loss": "total", "ca": "CA part (λ_CA · L_CA)", "tsa": "TSA part (λ_TSA · L_TSA)"}
STOPWORDS = frozenset("a an the on in of at to and with by from over under into onto is are its his her their this "
                      "that".split())


def smooth(ys: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean of the last ``w`` values at every step (NaNs skipped), so the curve starts at step one."""
    ok = ~np.isnan(ys)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, ys, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(len(ys))
    lo = np.maximum(0, idx - w + 1)
    count = n[idx + 1] - n[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (c[idx + 1] - c[lo]) / np.maximum(count, 1), np.nan)


def smoothing_window(n: int) -> int:
    """About a fifteenth of the run, at least 5 steps: one step's loss is noisy (a random t and noise each)."""
    return max(5, n // 15) if n >= 10 else 1


def loss_figure(records: list[dict[str, Any]], total: int | None = None) -> Figure:
    """The loss as a reader can judge it: the total smoothed (raw steps faint, log scale when positive) and, below,
    the CA and TSA parts each relative to its own start (1 = its mean over the first window), since the two can
    differ by 1000x. Legend outside the plot. Whether the motion was learned is the motion report's call."""
    steps = np.array([int(r["step"]) for r in records])
    parts = sorted({k for r in records for k in r if k not in ("step", "t", "loss")})
    series = {k: np.array([float(r.get(k, math.nan)) for r in records]) for k in ["loss", *parts]}
    parts = [k for k in parts if not np.all(np.isnan(series[k]))]
    fig = Figure(figsize=(8.5, 4.2 if parts else 2.8), dpi=100, layout="constrained")
    axes = fig.subplots(2 if parts else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    w = smoothing_window(len(records))
    if records:
        ys = series["loss"]
        # Faint raw points under a smoothed curve; on a run too short to smooth, the raw points are the curve.
        ax.plot(steps, ys, ".-" if w == 1 else ".", color=COLORS["loss"], alpha=0.25 if w > 1 else 0.9,
                markersize=3 if w > 1 else 5, label="total, each step")
        if w > 1:
            ax.plot(steps, smooth(ys, w), color=COLORS["loss"], linewidth=2, label=f"total, mean of {w} steps")
        finite = ys[np.isfinite(ys)]
        if finite.size and np.all(finite > 0):
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "the loss appears here once training starts", ha="center", va="center",
                transform=ax.transAxes, color="#666666")
    ax.set_ylabel("loss")
    fig.suptitle("Training loss (whether the motion was learned: see the motion report in section 3)", fontsize=9)
    if parts:
        bx = axes[1]
        for k in parts:
            ys = series[k]
            base = np.nanmean(ys[:w]) if np.any(~np.isnan(ys[:w])) else math.nan
            if not math.isfinite(base) or base == 0:
                continue
            bx.plot(steps, ys / base, ".", color=COLORS.get(k), alpha=0.2, markersize=3)
            bx.plot(steps, smooth(ys, w) / base, color=COLORS.get(k), linewidth=1.8,
                    label=f"{PART_LABELS.get(k, k)} ÷ start ({base:.2g})")
        bx.axhline(1.0, color="#999999", linewidth=0.8, linestyle="--")
        bx.set_ylabel("part ÷ its start")
    axes[-1].set_xlabel("step")
    if total:
        axes[-1].set_xlim(0, max(total, int(steps[-1]) if len(steps) else 1))
    for a in axes:
        a.grid(True, which="major", alpha=0.3)
    if records:
        fig.legend(loc="outside right center", fontsize=8, frameon=False)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)  # a polling page never shows a half-written picture
    return path


def caption_words(tokens: list[str], max_words: int = 4) -> list[tuple[str, list[int]]]:
    """Group CLIP BPE tokens into words and pick the content words.

    ``tokens``: the caption's tokens as the tokenizer spells them (a word ends with ``</w>``), without the start
    token. Returns (word, columns in the 77-token attention maps), columns counted after the start token (1 + i).
    Stop words are skipped unless nothing else is left; at most ``max_words`` words.
    """
    words: list[tuple[str, list[int]]] = []
    cur, cols = "", []
    for i, tok in enumerate(tokens):
        cur += tok.replace("</w>", "")
        cols.append(1 + i)
        if tok.endswith("</w>") or i == len(tokens) - 1:
            if cur:
                words.append((cur, cols))
            cur, cols = "", []
    content = [w for w in words if w[0].lower() not in STOPWORDS and any(c.isalnum() for c in w[0])]
    return (content or words)[:max_words]


def _frame_indices(n: int, at_most: int = 8) -> list[int]:
    if n <= at_most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (at_most - 1)) for i in range(at_most)})


def _grid(hw: int, aspect: float) -> tuple[int, int]:
    """(h, w) of a map of ``hw`` cells whose picture has width / height = ``aspect``."""
    h = max(1, round(math.sqrt(hw / aspect)))
    while h > 1 and hw % h:
        h -= 1
    return h, hw // h


def cross_attention_picture(frames: np.ndarray, ca: np.ndarray, words: list[tuple[str, list[int]]],
                            grid: tuple[int, int] | None = None) -> Figure:
    """Rows: the frames, then one row per word with its cross-attention over the frame.

    ``frames``: uint8 (F, H, W, 3); ``ca``: (F, HW, 77) probabilities. Each word's maps share one colour scale
    across frames, so what moves between frames is the attention, not the scaling.
    """
    f, hw, _ = ca.shape
    fh, fw = frames.shape[1:3]
    gh, gw = grid or _grid(hw, fw / fh)
    cols = _frame_indices(f)
    rows = 1 + len(words)
    fig = Figure(figsize=(1.3 * len(cols) + 0.8, 1.3 * rows + 0.3), dpi=100, layout="constrained")
    axes = fig.subplots(rows, len(cols), squeeze=False)
    for j, k in enumerate(cols):
        axes[0, j].imshow(frames[k])
        axes[0, j].set_title(f"frame {k}", fontsize=8)
    axes[0, 0].set_ylabel("clip", fontsize=9)
    for i, (word, wcols) in enumerate(words, start=1):
        maps = ca[:, :, wcols].sum(-1).reshape(f, gh, gw)
        lo, hi = float(maps.min()), float(maps.max())
        for j, k in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(frames[k], alpha=0.45)
            ax.imshow(maps[k], cmap="inferno", alpha=0.65, vmin=lo, vmax=hi if hi > lo else lo + 1e-9,
                      extent=(-0.5, fw - 0.5, fh - 0.5, -0.5), interpolation="bilinear")
        axes[i, 0].set_ylabel(f"“{word}”", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Cross-attention: where each caption word looks, frame by frame", fontsize=10)
    return fig


def temporal_attention_picture(tsa: np.ndarray, ca: np.ndarray | None = None,
                               words: list[tuple[str, list[int]]] | None = None) -> Figure:
    """Frame-to-frame temporal self-attention ``tsa`` (HW, F, F): the mean over places, and, given the
    cross-attention ``ca`` (F, HW, 77) and caption ``words``, at the place the first word attends to most (the
    moving object) and least (background)."""
    panels: list[tuple[str, np.ndarray]] = [("mean over the picture", tsa.mean(0))]
    if ca is not None and words:
        word, wcols = words[0]
        where = ca[:, :, wcols].sum(-1).mean(0)  # (HW,)
        panels.append((f"at “{word}” (most attended place)", tsa[int(where.argmax())]))
        panels.append(("at the background (least attended)", tsa[int(where.argmin())]))
    fig = Figure(figsize=(3.3 * len(panels), 3.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, m) in zip(axes, panels):
        im = ax.imshow(m, cmap="viridis")  # own scale per panel: the rows differ by little
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("key frame", fontsize=8)
        ax.set_ylabel("query frame", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Temporal self-attention: how each frame attends to the others", fontsize=10)
    return fig
