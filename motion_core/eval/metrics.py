"""Evaluation metrics for motion customization (docs/method.md "Evaluation"; arXiv 2502.13234, Sec. 4.2).

Every metric is a plain function. The maths is kept apart from any model so it can be tested on synthetic inputs:

* :func:`motion_discrepancy` -- symmetric Chamfer distance between two sets of point tracks.
* :func:`video_motion_discrepancy` -- the same, tracking both videos first; names the tracker it used.
* :func:`trajectory_distance` -- distance between two object-centroid trajectories, optionally with scale.
* :func:`clip_t_from_embeddings` / :func:`frame_consistency_from_embeddings` -- CLIP-T and frame consistency
  given embeddings; :func:`clip_scores` computes the embeddings with a local CLIP model.
* :func:`imagereward_score` -- mean per-frame ImageReward, only when the package and its weights are installed.

Model-backed metrics never download anything: when weights are missing they raise :class:`MetricUnavailable`,
whose message says what is missing and how to get it.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

# Upper bound on the number of float64 elements materialised at once by the chunked Chamfer distance.
_CHAMFER_CHUNK_ELEMS = 1 << 24


class MetricUnavailable(RuntimeError):
    """A metric needs a model, package or weights that are not present locally; the message says how to get them."""


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _to_numpy(x: Any, dtype: type = np.float64) -> np.ndarray:
    """Convert a numpy array, torch tensor or nested sequence to a numpy array of ``dtype``."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_tracks(tracks: np.ndarray, name: str) -> None:
    if tracks.ndim != 3 or tracks.shape[2] != 2:
        raise ValueError(f"{name} must have shape (N, F, 2) (x, y pixel coordinates); got {tracks.shape}")
    if tracks.shape[0] < 1:
        raise ValueError(f"{name} holds no tracks (N = 0); the Chamfer distance is undefined")
    if not np.all(np.isfinite(tracks)):
        raise ValueError(f"{name} contains non-finite coordinates")


# ----------------------------------------------------------------------------------------------------------------
# motion discrepancy
# ----------------------------------------------------------------------------------------------------------------


def motion_discrepancy(tracks_gen: Any, tracks_ref: Any, num_frames: int, height: int, width: int) -> float:
    """Symmetric Chamfer distance between two sets of point tracks (paper Sec. 4.2, App. G).

    With generated tracks ``T_i`` (i = 1..N) and reference tracks ``T_hat_j`` (j = 1..N_hat), each in R^{F x 2}::

        C * ( (1/N) sum_i min_j ||T_i - T_hat_j||^2 + (1/N_hat) sum_j min_i ||T_i - T_hat_j||^2 ),  C = 1/(2 F H W)

    where ``||.||^2`` is the squared Frobenius norm of the F x 2 difference. Each direction is averaged over its own
    set, so ``N != N_hat`` is allowed. The result is symmetric in its two arguments.

    Args:
        tracks_gen: (N, F, 2) tracks of the generated video, in pixels (numpy array or torch tensor).
        tracks_ref: (N_hat, F, 2) tracks of the reference video, same pixel frame.
        num_frames: F; must equal the second dimension of both track arrays.
        height: frame height H in pixels.
        width: frame width W in pixels.

    Returns:
        The discrepancy as a Python float (0 for identical track sets).
    """
    a = _to_numpy(tracks_gen)
    b = _to_numpy(tracks_ref)
    _check_tracks(a, "tracks_gen")
    _check_tracks(b, "tracks_ref")
    if a.shape[1] != num_frames or b.shape[1] != num_frames:
        raise ValueError(
            f"num_frames={num_frames} but tracks_gen has {a.shape[1]} and tracks_ref has {b.shape[1]} frames"
        )
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"num_frames, height and width must be positive; got {num_frames}, {height}, {width}")

    a = a.reshape(a.shape[0], -1)  # (N, 2F)
    b = b.reshape(b.shape[0], -1)  # (N_hat, 2F)
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    # Direct differences (not the |a|^2 + |b|^2 - 2ab expansion) keep the result exact for identical sets;
    # chunking over rows of ``a`` bounds memory for dense grids.
    chunk = max(1, _CHAMFER_CHUNK_ELEMS // max(1, m * d))
    row_min = np.empty(n, dtype=np.float64)
    col_min = np.full(m, np.inf, dtype=np.float64)
    for start in range(0, n, chunk):
        diff = a[start : start + chunk, None, :] - b[None, :, :]
        d2 = np.einsum("ijk,ijk->ij", diff, diff)  # (chunk, N_hat) squared Frobenius distances
        row_min[start : start + chunk] = d2.min(axis=1)
        np.minimum(col_min, d2.min(axis=0), out=col_min)
    c = 1.0 / (2.0 * num_frames * height * width)
    return float(c * (row_min.mean() + col_min.mean()))


def video_motion_discrepancy(
    frames_gen: Any,
    frames_ref: Any,
    tracker: str = "auto",
    grid: int = 10,
    return_tracks: bool = False,
    **tracker_kwargs: Any,
) -> dict[str, Any]:
    """Track both videos with the same tracker and return their :func:`motion_discrepancy`.

    Args:
        frames_gen: (F, H, W, 3) uint8 generated video.
        frames_ref: (F, H, W, 3) uint8 reference video with the same shape (resize beforehand).
        tracker: ``"auto"``, ``"lk"`` or ``"cotracker3"`` (see :func:`motion_core.eval.trackers.get_tracker`).
        grid: points per side of the regular query grid.
        return_tracks: also return the kept tracks, ``"tracks_gen"`` and ``"tracks_ref"`` ((N, F, 2) arrays, for
            pictures such as the app's motion report); they are not JSON-serialisable.
        **tracker_kwargs: options bound into the tracker (e.g. ``fb_threshold``, ``repo_dir``, ``checkpoint``).

    Returns:
        ``{"motion_discrepancy": float, "tracker": name, "num_tracks_gen": int, "num_tracks_ref": int}``.
        Only tracks the tracker marks valid are used; if a video has no valid track all of its tracks are used
        and ``"all_tracks_fallback"`` is True.
    """
    from motion_core.eval.trackers import get_tracker  # local import: trackers imports this module

    gen = np.asarray(frames_gen)
    ref = np.asarray(frames_ref)
    if gen.shape != ref.shape or gen.ndim != 4:
        raise ValueError(f"videos must both be (F, H, W, 3) with equal shapes; got {gen.shape} and {ref.shape}")
    name, track_fn = get_tracker(tracker, **tracker_kwargs)
    fallback = False
    kept = []
    for frames in (gen, ref):
        tracks, valid = track_fn(frames, grid=grid)
        if not np.any(valid):
            fallback = True
            valid = np.ones(len(tracks), dtype=bool)
        kept.append(np.asarray(tracks)[valid])
    num_frames, height, width = gen.shape[:3]
    value = motion_discrepancy(kept[0], kept[1], num_frames, height, width)
    out = {
        "motion_discrepancy": value,
        "tracker": name,
        "num_tracks_gen": len(kept[0]),
        "num_tracks_ref": len(kept[1]),
        "all_tracks_fallback": fallback,
    }
    if return_tracks:
        out.update(tracks_gen=kept[0], tracks_ref=kept[1])
    return out


# ----------------------------------------------------------------------------------------------------------------
# centroid trajectories
# ----------------------------------------------------------------------------------------------------------------


def trajectory_distance(
    centroids_a: Any,
    centroids_b: Any,
    size: float | Sequence[float],
    scales_a: Any | None = None,
    scales_b: Any | None = None,
    scale_weight: float = 1.0,
    relative: bool = False,
) -> float:
    """Distance between two object trajectories, normalised by the frame size.

    Position term: the mean over frames of the Euclidean distance between the two (x, y) centroids, measured in
    frame units. ``size`` is either a single number (both axes divided by it) or ``(height, width)``, in which case
    x is divided by ``width`` and y by ``height`` (normalised image coordinates, so 1.0 = one frame extent).

    Scale term (for zooms), added when ``scales_a`` and ``scales_b`` are given: ``scale_weight`` times the mean over
    frames of ``|log(scale_a / scale_b)|``. The log ratio was chosen over a normalised difference because it is
    symmetric, independent of the unit of the scales (pixels, area, box diagonal, ...) and treats a 2x zoom-in and a
    2x zoom-out as equally wrong (``log 2 ~ 0.69`` per frame).

    Args:
        centroids_a: (F, 2) centroids (x, y) in pixels.
        centroids_b: (F, 2) centroids (x, y) in pixels.
        size: frame size, a number or (height, width).
        scales_a: optional (F,) positive object scales for trajectory a.
        scales_b: optional (F,) positive object scales for trajectory b.
        scale_weight: weight of the scale term.
        relative: if True, subtract each trajectory's first-frame centroid first, so only the motion is compared,
            not where the object starts.

    Returns:
        The distance as a float (0 for identical trajectories).
    """
    a = _to_numpy(centroids_a)
    b = _to_numpy(centroids_b)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape != b.shape or a.shape[0] < 1:
        raise ValueError(f"centroids must both be (F, 2) with F >= 1 and equal shapes; got {a.shape} and {b.shape}")
    size_arr = np.asarray(size, dtype=np.float64).reshape(-1)
    if size_arr.size == 1:
        norm = np.array([size_arr[0], size_arr[0]])
    elif size_arr.size == 2:
        norm = np.array([size_arr[1], size_arr[0]])  # (height, width) -> divide x by width, y by height
    else:
        raise ValueError(f"size must be a number or (height, width); got {size!r}")
    if np.any(norm <= 0):
        raise ValueError(f"size must be positive; got {size!r}")
    if relative:
        a = a - a[:1]
        b = b - b[:1]
    dist = float(np.linalg.norm((a - b) / norm, axis=1).mean())

    if (scales_a is None) != (scales_b is None):
        raise ValueError("give both scales_a and scales_b, or neither")
    if scales_a is not None:
        sa = _to_numpy(scales_a).reshape(-1)
        sb = _to_numpy(scales_b).reshape(-1)
        if sa.shape != (a.shape[0],) or sb.shape != (a.shape[0],):
            raise ValueError(f"scales must be (F,) with F = {a.shape[0]}; got {sa.shape} and {sb.shape}")
        if np.any(sa <= 0) or np.any(sb <= 0):
            raise ValueError("scales must be positive")
        dist += scale_weight * float(np.abs(np.log(sa / sb)).mean())
    return dist


# ----------------------------------------------------------------------------------------------------------------
# CLIP-T and frame consistency
# ----------------------------------------------------------------------------------------------------------------


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding has zero norm; cosine similarity is undefined")
    return x / norms


def clip_t_from_embeddings(text_emb: Any, frame_embs: Any) -> float:
    """CLIP-T: mean cosine similarity between one text embedding (D,) and every frame embedding (F, D), x100."""
    t = _to_numpy(text_emb).reshape(-1)
    f = _to_numpy(frame_embs)
    if f.ndim != 2 or f.shape[1] != t.shape[0] or f.shape[0] < 1:
        raise ValueError(f"expected text (D,) and frames (F, D); got {t.shape} and {f.shape}")
    return float(100.0 * (_l2_normalise(f) @ _l2_normalise(t)).mean())


def frame_consistency_from_embeddings(frame_embs: Any) -> float:
    """Frame consistency: mean cosine similarity of consecutive frame embeddings (F, D) with F >= 2, x100."""
    f = _to_numpy(frame_embs)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"expected frame embeddings (F, D) with F >= 2; got {f.shape}")
    f = _l2_normalise(f)
    return float(100.0 * np.sum(f[1:] * f[:-1], axis=1).mean())


def _frames_to_pil(frames: Any) -> list[Any]:
    """(F, H, W, 3) uint8 (or float in [0, 1]) array/tensor, or a list of PIL images -> list of RGB PIL images."""
    from PIL import Image

    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], Image.Image):
        return [im.convert("RGB") for im in frames]
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3); got {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0 + 1e-6:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return [Image.fromarray(fr) for fr in arr]


def _looks_like_path(name: str) -> bool:
    return name.startswith((os.sep, ".", "~")) or os.path.exists(os.path.expanduser(name))


@functools.lru_cache(maxsize=2)
def _load_clip(model_dir_or_id: str, device: str) -> tuple[Any, Any]:
    """Load a CLIP model and processor from local files only; raise MetricUnavailable if they are missing."""
    from transformers import CLIPModel, CLIPProcessor

    name = os.path.expanduser(model_dir_or_id)
    if _looks_like_path(model_dir_or_id) and not Path(name).is_dir():
        raise MetricUnavailable(
            f"CLIP weights not found: local directory {model_dir_or_id!r} does not exist. Pass a directory holding "
            f"config.json, model.safetensors and the processor/tokenizer files of a CLIP model (e.g. one saved with "
            f"`huggingface-cli download {DEFAULT_CLIP_MODEL} --local-dir DIR` on a networked machine)."
        )
    try:
        model = CLIPModel.from_pretrained(name, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise MetricUnavailable(
            f"CLIP weights {model_dir_or_id!r} are not available locally (loaded with local_files_only=True; "
            f"nothing is downloaded). Get them on a networked machine with `huggingface-cli download "
            f"{DEFAULT_CLIP_MODEL}` and copy the Hugging Face cache (HF_HOME / ~/.cache/huggingface) here, or pass "
            f"model_dir_or_id=<local directory with the model and processor files>. Loader said: {exc}"
        ) from exc
    return model.to(device).eval(), processor


def _pooled(out: Any) -> Any:
    """transformers >= 5 returns a model output from get_*_features; older versions return the tensor."""
    return out if hasattr(out, "ndim") else out.pooler_output


def _resolve_clip(
    model_dir_or_id: str | None, model: Any | None, processor: Any | None, device: str | None
) -> tuple[Any, Any, str]:
    """(model, processor, name): a preloaded pair as given, else loaded from local files (MetricUnavailable)."""
    if model is None:
        name = model_dir_or_id or DEFAULT_CLIP_MODEL
        model, processor = _load_clip(name, device or "cpu")
        return model, processor, name
    if processor is None:
        raise ValueError("pass the CLIPProcessor together with a preloaded CLIP model")
    if device is not None:
        model = model.to(device)
    return model, processor, str(getattr(model, "name_or_path", "") or type(model).__name__)


def _image_embeddings(frames: Any, model: Any, processor: Any, batch_size: int = 16) -> np.ndarray:
    """CLIP image embeddings (F, D) of a video's frames."""
    import torch

    images = _frames_to_pil(frames)
    if not images:
        raise ValueError("no frames given")
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pix = processor(images=images[start : start + batch_size], return_tensors="pt")["pixel_values"]
            out.append(_pooled(model.get_image_features(pixel_values=pix.to(dev))))
    return torch.cat(out).float().cpu().numpy()


def appearance_similarity(
    frames: Any,
    reference: Any,
    model_dir_or_id: str | None = None,
    *,
    model: Any | None = None,
    processor: Any | None = None,
    device: str | None = None,
) -> float:
    """How much a video looks like the reference: the mean CLIP cosine similarity over every (video frame,
    reference frame) pair, x100. Used as the appearance-leakage score of a motion LoRA (the paper's App. B
    limitation): a LoRA that copies the reference's look scores higher than the base model for the same seed.
    Every pair rather than frame i with frame i, because the two videos need not be in step. Loading as
    :func:`clip_scores` (local files only; :class:`MetricUnavailable` when absent)."""
    model, processor, _ = _resolve_clip(model_dir_or_id, model, processor, device)
    a = _l2_normalise(_image_embeddings(frames, model, processor))
    b = _l2_normalise(_image_embeddings(reference, model, processor))
    return float(100.0 * (a @ b.T).mean())


def clip_scores(
    frames: Any,
    prompt: str,
    model_dir_or_id: str | None = None,
    *,
    model: Any | None = None,
    processor: Any | None = None,
    device: str | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """CLIP-T and frame consistency of one video (x100 cosine similarities, docs/method.md "Evaluation").

    The model is ``openai/clip-vit-base-patch32`` unless ``model_dir_or_id`` (a hub id or local directory) is
    given, and it is loaded with ``local_files_only=True``: if the weights are absent :class:`MetricUnavailable`
    is raised. A ready ``model`` (a transformers ``CLIPModel``) and ``processor`` (``CLIPProcessor``) may be
    passed instead; then nothing is loaded.

    Args:
        frames: (F, H, W, 3) uint8 video (numpy or torch; floats in [0, 1] accepted) or a list of PIL images.
        prompt: the text prompt.
        model_dir_or_id: CLIP checkpoint to load locally (ignored when ``model`` is given).
        model: optional preloaded CLIPModel.
        processor: CLIPProcessor for ``model`` (required with ``model``).
        device: torch device; default the model's device, or "cpu" when loading.
        batch_size: frames per forward pass.

    Returns:
        ``{"clip_t": float, "frame_consistency": float, "clip_model": str}``; frame consistency is NaN for a
        single-frame input.
    """
    import torch

    model, processor, model_name = _resolve_clip(model_dir_or_id, model, processor, device)
    dev = next(model.parameters()).device
    frames_np = _image_embeddings(frames, model, processor, batch_size)
    with torch.no_grad():
        text_in = processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
        text_emb = _pooled(
            model.get_text_features(
                input_ids=text_in["input_ids"].to(dev), attention_mask=text_in["attention_mask"].to(dev)
            )
        )[0]
    text_np = text_emb.float().cpu().numpy()
    consistency = frame_consistency_from_embeddings(frames_np) if len(frames_np) >= 2 else math.nan
    return {
        "clip_t": clip_t_from_embeddings(text_np, frames_np),
        "frame_consistency": consistency,
        "clip_model": model_name,
    }


# ----------------------------------------------------------------------------------------------------------------
# ImageReward
# ----------------------------------------------------------------------------------------------------------------


def imagereward_score(
    frames: Any,
    prompt: str,
    download_root: str | None = None,
    device: str | None = None,
) -> float:
    """Mean per-frame ImageReward-v1.0 score of a video; needs the ``ImageReward`` package and local weights.

    ``<download_root>/ImageReward.pt`` and ``<download_root>/med_config.json`` (default root
    ``~/.cache/ImageReward``, the package's own cache) must already exist, otherwise :class:`MetricUnavailable` is
    raised and nothing is downloaded. Loading can still fail if the package's BLIP text encoder files
    (``bert-base-uncased`` tokenizer) are not in the local Hugging Face cache; that is reported as
    MetricUnavailable too.
    """
    if importlib.util.find_spec("ImageReward") is None:
        raise MetricUnavailable(
            "ImageReward is not installed: `pip install image-reward`, then put ImageReward.pt and med_config.json "
            "(from the THUDM/ImageReward Hugging Face repo) in ~/.cache/ImageReward."
        )
    root = Path(os.path.expanduser(download_root or "~/.cache/ImageReward"))
    checkpoint, med_config = root / "ImageReward.pt", root / "med_config.json"
    missing = [str(p) for p in (checkpoint, med_config) if not p.is_file()]
    if missing:
        raise MetricUnavailable(
            f"ImageReward weights missing: {', '.join(missing)}. Download ImageReward.pt and med_config.json from "
            f"the THUDM/ImageReward Hugging Face repo on a networked machine and copy them into {root}."
        )
    import ImageReward as reward_lib
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = reward_lib.load(str(checkpoint), device=dev, download_root=str(root), med_config=str(med_config))
    except (OSError, ValueError, RuntimeError) as exc:
        raise MetricUnavailable(f"ImageReward could not be loaded from local files in {root}: {exc}") from exc
    with torch.no_grad():
        scores = [float(model.score(prompt, image)) for image in _frames_to_pil(frames)]
    if not scores:
        raise ValueError("no frames given")
    return float(np.mean(scores))
