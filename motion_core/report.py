"""The motion report of a generated video: did the LoRA learn the reference's motion?

A newcomer's one question after a run. The loss cannot answer it (a motion loss of 1e-6 says nothing a person can
read), so every generated video is measured against the reference with the evaluation's own metric:

* **motion discrepancy** (``motion_core.eval.metrics.video_motion_discrepancy``, the protocol's metric): point
  tracks of a regular grid in the reference and in the video, compared by the symmetric Chamfer distance of
  docs/method.md "Evaluation" (0 = the same tracks; lower = closer). The tracker is CoTracker3 when its checkout and
  weights are on disk, else OpenCV's Lucas-Kanade; the report names it, since the two give different numbers;
* the same for the **base model's** video (same seed and beta), and one plain sentence comparing the two;
* where a CLIP model is on disk: **text alignment** (CLIP-T with the prompt) and **look of the reference**
  (appearance leakage: CLIP similarity of the video's frames to the reference's); otherwise the report says why
  they are missing. Nothing is downloaded.

Used by the app (page and ``/sample`` API) and the CLI (``sample --report``); no UI code here. ``tracks_figure``
draws the reference's and a video's tracks over the video's first frame (matplotlib's object API, no pyplot).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from motion_core.eval.metrics import (
    DEFAULT_CLIP_MODEL,
    MetricUnavailable,
    appearance_similarity,
    clip_scores,
    video_motion_discrepancy,
)

log = logging.getLogger(__name__)

GRID = 10  # 10 x 10 query points, as the evaluation protocol's default
# A ratio of discrepancies within 10% of 1 is reported as "about as closely": one sample per seed is not a
# measurement precise enough to call a few percent either way. A margin, not a significance test.
SAME_WITHIN = 1.1
CLIP_ENV = "MOTION_MATCHER_CLIP"  # a folder (or cached hub id) of a CLIP model for the optional scores
REFERENCE_COLOR, VIDEO_COLOR = "#E69F00", "#0072B2"  # Okabe-Ito orange and blue: colour-blind safe


@dataclass
class VideoScores:
    """One video measured against the reference."""

    motion_discrepancy: float
    tracks: int  # valid point tracks the discrepancy was computed from
    clip_t: float | None = None  # CLIP-T x100 with the prompt; None when no CLIP model is on disk
    look: float | None = None  # CLIP similarity x100 to the reference's frames (appearance leakage)

    def to_dict(self) -> dict[str, Any]:
        return {"motion_discrepancy": self.motion_discrepancy, "tracks": self.tracks, "clip_t": self.clip_t,
                "look": self.look}


@dataclass
class MotionReport:
    tracker: str
    grid: int
    frames: int
    height: int
    width: int
    lora: VideoScores
    base: VideoScores | None
    ratio: float | None  # base discrepancy / LoRA discrepancy: > 1 means the LoRA video is closer to the reference
    verdict: str  # "closer", "same", "further" or "no base"
    sentence: str
    clip: dict[str, Any]  # {"available": bool, "model": str, "reason": str}
    # For pictures only (not in to_dict): kept tracks and the first frame of each video, uint8 (H, W, 3).
    tracks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    first_frames: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: what the API returns and the app stores with each video."""
        return {"tracker": self.tracker, "grid": self.grid, "frames": self.frames, "height": self.height,
                "width": self.width, "lora": self.lora.to_dict(), "base": self.base.to_dict() if self.base else None,
                "ratio": self.ratio, "verdict": self.verdict, "sentence": self.sentence, "clip": dict(self.clip)}


def as_uint8_frames(x: Any) -> np.ndarray:
    """(F, H, W, 3) uint8 from a torch tensor or array, channels first (F, 3, H, W) or last, floats in [0, 1]."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 4:
        raise ValueError(f"a video must be 4-D (F, H, W, 3) or (F, 3, H, W); got {arr.shape}")
    if arr.shape[-1] != 3 and arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] != 3:
        raise ValueError(f"a video needs 3 colour channels; got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def fit_reference(reference: np.ndarray, video: np.ndarray) -> np.ndarray:
    """The reference at the video's frame count and size, so the two sets of tracks share one pixel frame (a LoRA
    may come with a reference read at another size). Extra frames are dropped; the frame is resized."""
    f, h, w = video.shape[:3]
    if reference.shape[0] < f:
        raise ValueError(f"the reference has {reference.shape[0]} frames, the video {f}: too few to compare")
    ref = reference[:f]
    if ref.shape[1:3] != (h, w):
        import cv2

        ref = np.stack([cv2.resize(fr, (w, h), interpolation=cv2.INTER_AREA) for fr in ref])
    return ref


def comparison_sentence(lora_md: float, base_md: float | None) -> tuple[str, str, float | None]:
    """(verdict, sentence, ratio) from the two discrepancies; says so plainly when the LoRA did not help."""
    nums = f"motion discrepancy {lora_md:.3g} vs {base_md:.3g}; lower is closer" if base_md is not None else ""
    if base_md is None:
        return ("no base", f"The LoRA video's motion discrepancy to the reference is {lora_md:.3g} (0 = the same "
                "point tracks). Generate with the base model too to see whether the LoRA helped.", None)
    if lora_md == 0.0 and base_md == 0.0:
        return "same", "Both videos' point tracks match the reference's exactly (motion discrepancy 0).", None
    if lora_md == 0.0:
        return ("closer", f"The LoRA video's point tracks match the reference's exactly; the base model's do not "
                f"(motion discrepancy 0 vs {base_md:.3g}).", None)
    if base_md == 0.0:
        return ("further", f"The base model's point tracks match the reference's exactly; the LoRA video's do not "
                f"(motion discrepancy {lora_md:.3g} vs 0): this sample shows no sign that the motion was learned.",
                0.0)
    ratio = base_md / lora_md
    if ratio >= SAME_WITHIN:
        return "closer", (f"The LoRA video follows the reference's motion {ratio:.1f}x more closely than the base "
                          f"model's ({nums})."), ratio
    if ratio > 1 / SAME_WITHIN:
        return "same", (f"The LoRA video follows the reference's motion about as closely as the base model's "
                        f"({nums}; within {SAME_WITHIN - 1:.0%}): this sample shows no sign that the motion was "
                        "learned."), ratio
    return "further", (f"The LoRA video follows the reference's motion less closely than the base model's "
                       f"({1 / ratio:.1f}x further; {nums}): this sample shows no sign that the motion was "
                       "learned."), ratio


def _clip_source(clip: Any) -> Any:
    """The CLIP model to try: a (model, processor) pair as given, else a folder or hub id (``$MOTION_MATCHER_CLIP``
    or the evaluation's default), loaded from local files only."""
    if clip is not None:
        return clip
    return os.environ.get(CLIP_ENV) or DEFAULT_CLIP_MODEL


def _clip_scores(video: np.ndarray, reference: np.ndarray, prompt: str | None, clip: Any) -> tuple[float | None,
                                                                                                       float]:
    kw: dict[str, Any] = {}
    if isinstance(clip, tuple):
        kw = {"model": clip[0], "processor": clip[1]}
    else:
        kw = {"model_dir_or_id": str(clip)}
    clip_t = clip_scores(video, prompt, **kw)["clip_t"] if prompt else None
    return clip_t, appearance_similarity(video, reference, **kw)


def motion_report(reference: Any, lora_video: Any, base_video: Any | None = None, prompt: str | None = None,
                  clip: Any = None, tracker: str = "auto", grid: int = GRID) -> MotionReport:
    """Measure a LoRA video (and the base model's, if given) against the reference clip.

    Videos: torch tensors or arrays, (F, 3, H, W) or (F, H, W, 3), floats in [0, 1] or uint8. The reference is
    fitted to the LoRA video's frames and size. ``clip``: None (``$MOTION_MATCHER_CLIP`` or
    ``openai/clip-vit-base-patch32`` from local files), a folder or hub id, or a ready ``(model, processor)`` pair.
    """
    lora = as_uint8_frames(lora_video)
    base = as_uint8_frames(base_video) if base_video is not None else None
    ref = fit_reference(as_uint8_frames(reference), lora)
    videos = {"lora": lora, **({"base": base} if base is not None else {})}
    scores: dict[str, VideoScores] = {}
    tracks: dict[str, np.ndarray] = {}
    name = tracker
    for key, vid in videos.items():
        if vid.shape != lora.shape:
            raise ValueError(f"the base model's video {vid.shape} and the LoRA video {lora.shape} differ in shape")
        res = video_motion_discrepancy(vid, ref, tracker=tracker, grid=grid, return_tracks=True)
        name = res["tracker"]
        scores[key] = VideoScores(float(res["motion_discrepancy"]), int(res["num_tracks_gen"]))
        tracks[key], tracks["reference"] = res["tracks_gen"], res["tracks_ref"]
    source = _clip_source(clip)
    clip_info: dict[str, Any] = {"available": False, "model": source if isinstance(source, str) else
                                 type(source[0]).__name__, "reason": ""}
    try:
        for key, vid in videos.items():
            scores[key].clip_t, scores[key].look = _clip_scores(vid, ref, prompt, source)
        clip_info["available"] = True
    except MetricUnavailable as err:
        log.info("CLIP scores unavailable: %s", err)
        clip_info["reason"] = (f"no CLIP model on disk ({clip_info['model']} is not in the local Hugging Face cache "
                               f"or folder; nothing is downloaded). Set {CLIP_ENV} to a CLIP model folder to get "
                               "text alignment and appearance leakage.")
    verdict, sentence, ratio = comparison_sentence(scores["lora"].motion_discrepancy,
                                                   scores["base"].motion_discrepancy if "base" in scores else None)
    return MotionReport(tracker=name, grid=grid, frames=lora.shape[0], height=lora.shape[1], width=lora.shape[2],
                        lora=scores["lora"], base=scores.get("base"), ratio=ratio, verdict=verdict,
                        sentence=sentence, clip=clip_info, tracks=tracks,
                        first_frames={k: v[0] for k, v in videos.items()})


def _fmt(x: float | None, spec: str) -> str:
    return "unavailable" if x is None or not math.isfinite(x) else format(x, spec)


def report_lines(d: dict[str, Any]) -> list[str]:
    """The report (``MotionReport.to_dict()``) as plain text lines, for the command line."""
    rows = [("motion LoRA", d["lora"])] + ([("base model", d["base"])] if d.get("base") else [])
    lines = [d["sentence"], f"{'video':<12} {'motion discrepancy':>19} {'tracks':>7} {'CLIP-T':>11} "
             f"{'look of ref.':>12}"]
    for label, s in rows:
        lines.append(f"{label:<12} {s['motion_discrepancy']:>19.4g} {s['tracks']:>7d} {_fmt(s['clip_t'], '.1f'):>11} "
                     f"{_fmt(s['look'], '.1f'):>12}")
    lines.append(f"point tracks: {tracker_words(d)}")
    if not d["clip"]["available"]:
        lines.append(f"CLIP-T and look of the reference unavailable: {d['clip']['reason']}")
    return lines


def tracker_words(d: dict[str, Any]) -> str:
    name = {"lk": "Lucas-Kanade (OpenCV; CoTracker3 is not installed)", "cotracker3": "CoTracker3"}.get(
        d["tracker"], d["tracker"])
    return f"{name}, a {d['grid']}x{d['grid']} grid over {d['frames']} frames of {d['width']}x{d['height']}"


def tracks_figure(report: MotionReport) -> Any:
    """One panel per video: its first frame, the reference's point tracks (orange) and the video's (blue), with
    each track's start as a dot. Returns a matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    keys = [k for k in ("lora", "base") if k in report.first_frames]
    titles = {"lora": "motion LoRA", "base": "base model"}
    fig = Figure(figsize=(3.0 * len(keys) + 1.6, 3.3), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        ax.imshow(report.first_frames[key], alpha=0.55)
        for tracks, color in ((report.tracks["reference"], REFERENCE_COLOR), (report.tracks[key], VIDEO_COLOR)):
            for tr in tracks:
                ax.plot(tr[:, 0], tr[:, 1], color=color, linewidth=1.0, alpha=0.85)
            ax.scatter(tracks[:, 0, 0], tracks[:, 0, 1], s=5, color=color)
        score = getattr(report, key).motion_discrepancy
        ax.set_title(f"{titles[key]}: discrepancy {score:.3g}", fontsize=9)
        ax.set_xlim(-0.5, report.width - 0.5)
        ax.set_ylim(report.height - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(handles=[_line(REFERENCE_COLOR, "reference's tracks"), _line(VIDEO_COLOR, "this video's tracks")],
               loc="outside right center", fontsize=8, frameon=False)
    return fig


def _line(color: str, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([0], [0], color=color, label=label)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a figure as PNG atomically (a polling page never shows half a picture)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
