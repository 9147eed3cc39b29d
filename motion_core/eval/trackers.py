"""Point trackers for the motion-discrepancy metric (docs/method.md "Evaluation").

The paper tracks a regular grid of points with CoTracker3. Its weights cannot be fetched here, so two trackers
share one interface ``fn(frames, grid=...) -> (tracks, valid)``:

* ``"cotracker3"`` -- :func:`cotracker_tracks`, only when a local co-tracker checkout and the
  ``scaled_offline.pth`` checkpoint exist (nothing is downloaded);
* ``"lk"`` -- :func:`lk_tracks`, OpenCV pyramidal Lucas-Kanade with a forward-backward consistency check.

:func:`get_tracker` picks one and returns its name together with the function, so that every result can say which
tracker produced it (numbers from the two trackers are not comparable).

Both return *all* grid tracks, shape (N, F, 2) as float (x, y) pixel coordinates, plus a (N,) boolean ``valid``
mask; callers keep ``tracks[valid]``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from motion_core.eval.metrics import MetricUnavailable

TrackerFn = Callable[..., tuple[np.ndarray, np.ndarray]]

COTRACKER_HUB_REPO = "facebookresearch_co-tracker_main"  # folder name torch.hub gives the co-tracker checkout
COTRACKER_CHECKPOINT = "scaled_offline.pth"  # CoTracker3 offline weights, as torch.hub caches them


# ----------------------------------------------------------------------------------------------------------------
# Lucas-Kanade
# ----------------------------------------------------------------------------------------------------------------


def grid_points(height: int, width: int, grid: int) -> np.ndarray:
    """``grid x grid`` query points at the centres of a regular grid of cells, (grid*grid, 2) float32 (x, y)."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1; got {grid}")
    xs = (np.arange(grid, dtype=np.float32) + 0.5) * (width / grid)
    ys = (np.arange(grid, dtype=np.float32) + 0.5) * (height / grid)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def _lk_params(height: int, width: int) -> dict[str, Any]:
    """Window size and pyramid depth scaled to the frame: 21 px windows on large frames, smaller on 64x64."""
    import cv2

    short = min(height, width)
    win = int(min(21, max(5, short // 4)))
    win += 1 - win % 2  # odd
    # Coarsest pyramid level should still be at least one window wide; at most 3 extra levels.
    max_level = int(max(0, min(3, math.floor(math.log2(max(short, 1) / win)))))
    return {
        "winSize": (win, win),
        "maxLevel": max_level,
        "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
    }


def _to_gray(frames: Any) -> list[np.ndarray]:
    import cv2  # opencv is the optional "eval" extra; imported where it is used

    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) RGB; got {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0 + 1e-6:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return [cv2.cvtColor(np.ascontiguousarray(fr), cv2.COLOR_RGB2GRAY) for fr in arr]


def _chain(gray: list[np.ndarray], order: range, start: np.ndarray, params: dict[str, Any]):
    """Track ``start`` points frame to frame along ``order``; returns positions per visited frame and an ok mask."""
    import cv2

    pos = {order[0]: start}
    ok = np.ones(len(start), dtype=bool)
    cur = start.reshape(-1, 1, 2)
    for prev_i, next_i in itertools.pairwise(order):
        nxt, status, _ = cv2.calcOpticalFlowPyrLK(gray[prev_i], gray[next_i], cur, None, **params)
        ok &= status.reshape(-1).astype(bool)
        cur = nxt.astype(np.float32)
        pos[next_i] = cur.reshape(-1, 2)
    return pos, ok


def lk_tracks(
    frames: Any,
    grid: int = 10,
    fb_threshold: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Track a regular grid of points from frame 0 through all frames with pyramidal Lucas-Kanade.

    Points are chained frame to frame (0 -> 1 -> ... -> F-1), then tracked back from frame F-1 to frame 0 the
    same way. A track is valid when OpenCV reports success at every step (both directions), it stays inside the
    frame, and its forward-backward round-trip error at frame 0 is at most ``fb_threshold`` pixels.

    Window size and pyramid depth follow the frame size (64x64 frames: 17 px windows, 1 extra pyramid level;
    256x256 and larger: 21 px windows, 3 extra levels).

    Args:
        frames: (F, H, W, 3) uint8 RGB video (numpy or torch; floats in [0, 1] accepted).
        grid: points per side; ``grid * grid`` points at the grid cell centres.
        fb_threshold: maximum forward-backward error in pixels.

    Returns:
        ``(tracks, valid)``: all ``grid*grid`` tracks, (N, F, 2) float32 (x, y) pixels, and the (N,) bool mask of
        valid ones. A single-frame video gives all-valid, motionless tracks.
    """
    gray = _to_gray(frames)
    num_frames = len(gray)
    if num_frames < 1:
        raise ValueError("no frames given")
    height, width = gray[0].shape
    start = grid_points(height, width, grid)
    if num_frames == 1:
        return start[:, None, :].copy(), np.ones(len(start), dtype=bool)
    params = _lk_params(height, width)

    fwd, ok_f = _chain(gray, range(num_frames), start, params)
    bwd, ok_b = _chain(gray, range(num_frames - 1, -1, -1), fwd[num_frames - 1], params)
    tracks = np.stack([fwd[i] for i in range(num_frames)], axis=1).astype(np.float32)  # (N, F, 2)

    fb_error = np.linalg.norm(bwd[0] - start, axis=1)
    inside = (
        (tracks[..., 0] >= 0) & (tracks[..., 0] <= width - 1) & (tracks[..., 1] >= 0) & (tracks[..., 1] <= height - 1)
    ).all(axis=1)
    valid = ok_f & ok_b & inside & np.isfinite(fb_error) & (fb_error <= fb_threshold)
    return tracks, valid


# ----------------------------------------------------------------------------------------------------------------
# CoTracker3
# ----------------------------------------------------------------------------------------------------------------


def _cotracker_paths(repo_dir: str | None, checkpoint: str | None) -> tuple[Path, Path]:
    import torch

    hub = Path(torch.hub.get_dir())
    repo = Path(os.path.expanduser(repo_dir)) if repo_dir else hub / COTRACKER_HUB_REPO
    ckpt = Path(os.path.expanduser(checkpoint)) if checkpoint else hub / "checkpoints" / COTRACKER_CHECKPOINT
    return repo, ckpt


def cotracker_available(repo_dir: str | None = None, checkpoint: str | None = None) -> bool:
    """True when a local co-tracker checkout (with ``hubconf.py``) and the CoTracker3 checkpoint both exist."""
    repo, ckpt = _cotracker_paths(repo_dir, checkpoint)
    return (repo / "hubconf.py").is_file() and ckpt.is_file()


@functools.lru_cache(maxsize=1)
def _load_cotracker(repo: str, ckpt: str, device: str) -> Any:
    import torch

    predictor = torch.hub.load(repo, "cotracker3_offline", source="local", pretrained=False)
    # weights_only: a checkpoint is data; a pickle that would run code is refused instead of executed.
    predictor.model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    return predictor.to(device).eval()


def cotracker_tracks(
    frames: Any,
    grid: int = 10,
    repo_dir: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Track a ``grid x grid`` point grid with offline CoTracker3, from local files only.

    ``repo_dir`` is a clone of facebookresearch/co-tracker (default: torch.hub's cache folder
    ``<hub>/facebookresearch_co-tracker_main``) and ``checkpoint`` the ``scaled_offline.pth`` weights (default:
    ``<hub>/checkpoints/scaled_offline.pth``). The model is built with ``torch.hub.load(repo, "cotracker3_offline",
    source="local", pretrained=False)`` and the checkpoint loaded into it; nothing is downloaded.

    Returns ``(tracks, valid)`` like :func:`lk_tracks`. CoTracker estimates positions through occlusions, so every
    track is kept (``valid`` is all True), as in the paper's metric.

    Raises:
        MetricUnavailable: when the checkout or the checkpoint is missing.
    """
    repo, ckpt = _cotracker_paths(repo_dir, checkpoint)
    if not cotracker_available(str(repo), str(ckpt)):
        raise MetricUnavailable(
            f"CoTracker3 is not available locally: need a co-tracker checkout at {repo} (with hubconf.py; "
            f"`git clone https://github.com/facebookresearch/co-tracker {repo}`) and the checkpoint {ckpt} "
            f"(https://huggingface.co/facebook/cotracker3/resolve/main/{COTRACKER_CHECKPOINT}). "
            f"Use tracker='lk' otherwise."
        )
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = _load_cotracker(str(repo), str(ckpt), dev)
    arr = np.asarray(frames.detach().cpu().numpy() if hasattr(frames, "detach") else frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) RGB; got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0 + 1e-6:
        arr = arr * 255.0
    video = torch.from_numpy(np.ascontiguousarray(arr)).float().permute(0, 3, 1, 2)[None].to(dev)  # B T C H W
    with torch.no_grad():
        pred_tracks, _ = predictor(video, grid_size=grid)  # (1, T, N, 2), (1, T, N)
    tracks = pred_tracks[0].permute(1, 0, 2).float().cpu().numpy()  # (N, T, 2)
    return tracks, np.ones(tracks.shape[0], dtype=bool)


# ----------------------------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------------------------


def get_tracker(name: str = "auto", **kwargs: Any) -> tuple[str, TrackerFn]:
    """Return ``(tracker_name, fn)`` with ``fn(frames, grid=...) -> (tracks, valid)``.

    ``"auto"`` picks ``"cotracker3"`` when :func:`cotracker_available` (with ``repo_dir`` / ``checkpoint`` from
    ``kwargs``), otherwise ``"lk"``. Asking for ``"cotracker3"`` explicitly raises :class:`MetricUnavailable` when
    it is not installed. ``kwargs`` are bound into the returned function (with ``"auto"``, only those the chosen
    tracker accepts).
    """
    name = name.lower()
    if name == "auto":
        ct_kwargs = {k: kwargs[k] for k in ("repo_dir", "checkpoint") if k in kwargs}
        name = "cotracker3" if cotracker_available(**ct_kwargs) else "lk"
        # keep only the options the chosen tracker understands (e.g. fb_threshold is LK-only)
        accepted = inspect.signature(cotracker_tracks if name == "cotracker3" else lk_tracks).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if name == "lk":
        return "lk", functools.partial(lk_tracks, **kwargs)
    if name in ("cotracker3", "cotracker"):
        if not cotracker_available(kwargs.get("repo_dir"), kwargs.get("checkpoint")):
            cotracker_tracks(np.zeros((1, 8, 8, 3), dtype=np.uint8), **kwargs)  # raises the explanatory error
        return "cotracker3", functools.partial(cotracker_tracks, **kwargs)
    raise ValueError(f"unknown tracker {name!r}; choose 'auto', 'lk' or 'cotracker3'")
