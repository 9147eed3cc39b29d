"""Pictures for the page: the training loss curve and the reference clip's motion features.

- ``loss_figure``: the loss per step with its cross-attention (CA) and temporal self-attention (TSA) parts;
- ``cross_attention_picture``: for a few caption words, where each word's cross-attention falls in every frame
  (the paper's figure 3: the maps follow the object as it moves);
- ``temporal_attention_picture``: frame-to-frame temporal attention as heat maps (the paper's figure 4), averaged
  over the picture and at the object's and the background's place.

Works on numpy arrays only (the model run that produces the maps lives in ``app.work``). Uses matplotlib's
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


def loss_figure(records: list[dict[str, Any]], total: int | None = None) -> Figure:
    """Loss per step and its named parts, on a log scale when every value is positive (motion losses span decades)."""
    fig = Figure(figsize=(7, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    steps = [int(r["step"]) for r in records]
    keys = ["loss"] + sorted({k for r in records for k in r if k not in ("step", "t", "loss")})
    positive = True
    for k in keys:
        ys = np.array([float(r.get(k, math.nan)) for r in records])
        if np.all(np.isnan(ys)):
            continue
        positive &= bool(np.all(ys[~np.isnan(ys)] > 0))
        ax.plot(steps, ys, label=PART_LABELS.get(k, k), color=COLORS.get(k), linewidth=1.4 if k == "loss" else 1.0,
                alpha=1.0 if k == "loss" else 0.85)
        if len(ys) >= 20 and k == "loss":  # one step's loss is noisy (random t and noise); show the trend
            w = max(5, len(ys) // 15)
            smooth = np.convolve(np.nan_to_num(ys, nan=0.0), np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1:], smooth, color="#CC79A7", linewidth=2, label=f"total, mean of {w}")
    if records and positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if total:
        ax.set_xlim(0, max(total, steps[-1] if steps else 1))
    if not records:
        ax.text(0.5, 0.5, "the loss appears here once training starts", ha="center", va="center",
                transform=ax.transAxes, color="#666666")
    else:
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.grid(True, which="major", alpha=0.3)
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
