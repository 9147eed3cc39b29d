"""Detect, classify and track shapes-world objects in (possibly imperfect, generated) RGB frames.

Method
------
1. Background palette: colours of the one-pixel frame border, with rare colours (an object touching the border)
   dropped; optionally extended by ``bg_hint`` (a ``BG_COLOURS`` name, an RGB triple or an (N, 3) array).
2. A pixel is *object* when it is nearer to one of the saturated object ``COLOURS`` than to every palette colour and
   at least ``bg_threshold`` away from the palette (robust to gradients, stripes, dots and noise, whose colours all
   lie near the palette).
3. Connected object regions (8-connectivity) above ``min_area`` are split by colour when two colours each cover a
   large part; each region gets its majority colour name, a soft alpha (projection of every pixel onto the
   background -> object colour line) and from it the area, centroid and scale (equivalent radius sqrt(area / pi)).
4. Shape label: rotation-invariant contour features of the 4x upsampled alpha (solidity, circularity, min-area-rect
   extent, radial-profile Fourier harmonics 2..6) classified by the nearest neighbours among templates rendered
   by the world at many sizes, angles, sub-pixel offsets and blurs (built once, deterministic).

API
---
* ``detect_objects(frame, bg_hint=None, min_area=None, classify=True) -> list[Detection]`` (largest first).
* ``classify_shape(alpha) -> str`` shape label of a soft or binary mask.
* ``dominant_colour(frames, mask=None, bg_hint=None) -> str`` named colour covering most object pixels ("none").
* ``background_colour(frames) -> str`` the ``BG_COLOURS`` name whose two tones cover most pixels.
* ``track(frames, colour=None, bg_hint=None) -> Track`` main object's centroid (F, 2) and scale (F,) per frame;
  ``Track.coherent`` is True when exactly one object of the tracked colour is found in every frame.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from shapes_world.world import BG_COLOURS, OBJECT_RGB, SHAPE_SCALE, SHAPES, background_tones, rasterize

COLOUR_NAMES: tuple[str, ...] = tuple(OBJECT_RGB)
_OBJ_RGB = np.asarray([OBJECT_RGB[c] for c in COLOUR_NAMES], dtype=np.float32)

BgHint = str | tuple[int, int, int] | np.ndarray | None


@dataclass
class Detection:
    """One detected object. Coordinates in pixels, ``(x, y)`` with pixel centres at integers."""

    colour: str
    centroid: tuple[float, float]
    area: float  # soft area in pixels
    scale: float  # equivalent radius sqrt(area / pi)
    shape: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    mask: np.ndarray  # (H, W) bool
    alpha: np.ndarray  # soft mask on the bbox, float32 in [0, 1] (input of ``classify_shape``)


@dataclass
class Track:
    """The main object through a clip; NaN where it was not found."""

    centroids: np.ndarray  # (F, 2)
    scales: np.ndarray  # (F,)
    areas: np.ndarray  # (F,)
    found: np.ndarray  # (F,) bool
    counts: np.ndarray  # (F,) number of sizeable detections of the tracked colour
    colour: str
    shape: str
    coherent: bool  # exactly one object of the tracked colour in every frame


# ------------------------------------------------------------------------------------------------- pixel labels
def _hint_colours(bg_hint: BgHint) -> np.ndarray:
    if bg_hint is None:
        return np.zeros((0, 3), dtype=np.float32)
    if isinstance(bg_hint, str):
        a, b = background_tones(bg_hint)
        return np.stack([a + (b - a) * t for t in np.linspace(0.0, 1.0, 5)]).astype(np.float32)
    return np.asarray(bg_hint, dtype=np.float32).reshape(-1, 3)


def background_palette(img: np.ndarray, bg_hint: BgHint = None, max_colours: int = 32) -> np.ndarray:
    """(N, 3) float32 background colours: common border colours, frequent non-object colours, hint colours."""
    ring = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]]).astype(np.float32)
    ring_keep = _common(ring, max(4, int(0.03 * len(ring))))
    # Frequent colours anywhere that are far from every object colour (pattern tones the border misses).
    pix = img.reshape(-1, 3).astype(np.float32)
    frequent = pix[_common(pix, max(8, int(0.015 * len(pix))))]
    if len(frequent):
        frequent = _unique_colours(frequent)
        frequent = frequent[_sq_dist(frequent, _OBJ_RGB).min(1) > 60.0**2]
    pal = _unique_colours(np.concatenate([ring[ring_keep] if ring_keep.any() else ring, frequent]))
    if len(pal) > max_colours:
        pal = pal[np.linspace(0, len(pal) - 1, max_colours).astype(int)]
    return np.concatenate([pal, _hint_colours(bg_hint)]).astype(np.float32)


def _unique_colours(pix: np.ndarray) -> np.ndarray:
    """Distinct colours after rounding to multiples of 8 (sorted, float32)."""
    q = np.round(pix / 8.0).astype(np.int64)
    key = np.unique((q[:, 0] * 33 + q[:, 1]) * 33 + q[:, 2])
    return (np.stack([key // 1089, (key // 33) % 33, key % 33], axis=1) * 8.0).astype(np.float32)


def _common(pix: np.ndarray, min_count: int) -> np.ndarray:
    """Boolean (N,): pixels whose coarse colour bin (32 levels per channel) holds at least ``min_count`` pixels."""
    q = np.clip(pix // 32, 0, 7).astype(np.int64)
    key = q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]
    return np.bincount(key, minlength=512)[key] >= min_count


def _sq_dist(pix: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Squared distances (N, K) between pixels (N, 3) and colours (K, 3)."""
    d = (pix * pix).sum(1)[:, None] - 2.0 * pix @ cols.T + (cols * cols).sum(1)[None, :]
    return np.maximum(d, 0.0)


def pixel_labels(
    frame: np.ndarray, bg_hint: BgHint = None, bg_threshold: float = 35.0, confident: float = 80.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel labels of one frame.

    Returns (object mask (H, W) bool, nearest object colour index (H, W), confident (H, W) bool = object pixel
    within ``confident`` of its named colour (not an edge mixture), nearest background colour (H, W, 3)).
    """
    h, w = frame.shape[:2]
    img = frame.reshape(-1, 3).astype(np.float32)
    pal = background_palette(frame, bg_hint)
    d_obj = _sq_dist(img, _OBJ_RGB)
    lab = d_obj.argmin(1)
    d_o = d_obj[np.arange(len(img)), lab]
    d_bg_all = _sq_dist(img, pal)
    nearest_bg = d_bg_all.argmin(1)
    d_b = d_bg_all[np.arange(len(img)), nearest_bg]
    fg = (d_o < d_b) & (d_b > bg_threshold**2)
    sure = fg & (d_o < confident**2)
    return fg.reshape(h, w), lab.reshape(h, w), sure.reshape(h, w), pal[nearest_bg].reshape(h, w, 3)


# --------------------------------------------------------------------------------------------- shape features
_N_ANGLES = 128


def shape_features(alpha: np.ndarray) -> np.ndarray | None:
    """Rotation-invariant features of a soft mask; None when it holds no usable contour."""
    a = cv2.GaussianBlur(np.pad(alpha.astype(np.float32), 3), (0, 0), 0.5)
    up = cv2.resize(a, (a.shape[1] * 4, a.shape[0] * 4), interpolation=cv2.INTER_LINEAR)
    binary = (up >= 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    cnt = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(cnt)
    if area < 16.0 or len(cnt) < 8:
        return None
    hull = cv2.convexHull(cnt)
    solidity = area / max(cv2.contourArea(hull), 1e-6)
    smooth = cv2.approxPolyDP(cnt, 1.0, True)
    perim = cv2.arcLength(smooth, True)
    circularity = 4 * math.pi * area / max(perim * perim, 1e-6)
    (_, _), (rw, rh), _ = cv2.minAreaRect(cnt)
    extent = area / max(rw * rh, 1e-6)
    m = cv2.moments(cnt)
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    pts = cnt[:, 0, :].astype(np.float64)
    theta = np.arctan2(pts[:, 1] - cy, pts[:, 0] - cx)
    rho = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy)
    bins = ((theta + math.pi) / (2 * math.pi) * _N_ANGLES).astype(int) % _N_ANGLES
    prof = np.zeros(_N_ANGLES)
    np.maximum.at(prof, bins, rho)
    filled = prof > 0
    if filled.sum() < _N_ANGLES // 4:
        return None
    grid = np.arange(_N_ANGLES)
    prof = np.interp(grid, grid[filled], prof[filled], period=_N_ANGLES)
    spec = np.abs(np.fft.rfft(prof)) / max(abs(prof.sum()), 1e-6)
    harmonics = spec[2:7] * 4.0
    return np.concatenate([[solidity, circularity, extent], harmonics]).astype(np.float32)


@lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, D), labels (N,), feature scale (D,)) from world renders; deterministic."""
    feats: list[np.ndarray] = []
    labels: list[int] = []
    rng = np.random.default_rng(1234)
    for si, shape in enumerate(SHAPES):
        for base in (4.5, 5.5, 7.0, 8.5, 10.2, 13.4, 17.0, 21.0, 26.0):  # both worlds' radii (zoom included)
            radius = base * SHAPE_SCALE[shape]
            for _ in range(6):
                angle = float(rng.uniform(0, 360)) if shape != "circle" else 0.0
                size = int(2 * radius + 8)
                cx, cy = size / 2 + rng.uniform(-0.5, 0.5), size / 2 + rng.uniform(-0.5, 0.5)
                alpha = rasterize(shape, cx, cy, radius, angle, size, size)
                for sigma in (0.0, 0.7, 1.3):
                    if sigma > 0.12 * radius:  # a heavily blurred small square is a circle: no such templates
                        continue
                    a = cv2.GaussianBlur(alpha, (0, 0), sigma) if sigma > 0 else alpha
                    f = shape_features(a)
                    if f is not None:
                        feats.append(f)
                        labels.append(si)
    x = np.stack(feats)
    scale = np.maximum(x.std(0), 0.04)  # a floor: near-constant features (h2) must not dominate
    return x / scale, np.asarray(labels), scale


def classify_shape(alpha: np.ndarray, k: int = 5) -> str:
    """Shape label of a soft (or binary) object mask by k-nearest templates; "unknown" if it has no contour."""
    f = shape_features(alpha)
    if f is None:
        return "unknown"
    x, labels, scale = _templates()
    d = ((x - f / scale) ** 2).sum(1)
    nearest = np.argsort(d)[:k]
    votes = np.zeros(len(SHAPES))
    for i in nearest:
        votes[labels[i]] += 1.0 / (1.0 + math.sqrt(d[i]))
    return SHAPES[int(votes.argmax())]


# -------------------------------------------------------------------------------------------------- detection
def detect_objects(
    frame: np.ndarray,
    bg_hint: BgHint = None,
    min_area: float | None = None,
    classify: bool = True,
    bg_threshold: float = 35.0,
) -> list[Detection]:
    """Objects in one (H, W, 3) uint8 frame, largest first."""
    h, w = frame.shape[:2]
    min_area = float(min_area if min_area is not None else max(12.0, 0.003 * h * w))
    fg, lab, sure, bg_rgb = pixel_labels(frame, bg_hint, bg_threshold)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    img = frame.astype(np.float32)
    regions: list[tuple[np.ndarray, int]] = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            continue
        x0, y0, bw, bh = stats[i, :4]
        sl = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        region = comp[sl] == i
        counts = np.bincount(lab[sl][region & sure[sl]], minlength=len(COLOUR_NAMES))
        if counts.sum() == 0:  # no pixel is clearly one named colour: take the nearest label of all pixels
            counts = np.bincount(lab[sl][region], minlength=len(COLOUR_NAMES))
        major = [c for c in np.argsort(-counts) if counts[c] >= max(2 * min_area, 0.1 * region.sum())]
        if len(major) <= 1:
            regions.append((_full(region, sl, h, w), int(counts.argmax())))
            continue
        # Two objects touching: give every pixel to the nearest of the major colours, then split again.
        pix = img[sl][region]
        nearest = np.asarray(major)[_sq_dist(pix, _OBJ_RGB[major]).argmin(1)]
        sub_lab = np.full(region.shape, -1)
        sub_lab[region] = nearest
        for c in major:
            m, cc, st, _ = cv2.connectedComponentsWithStats((sub_lab == c).astype(np.uint8), connectivity=8)
            for j in range(1, m):
                if st[j, cv2.CC_STAT_AREA] >= min_area:
                    regions.append((_full(cc == j, sl, h, w), int(c)))
    out = [_describe(mask, c, img, bg_rgb, classify) for mask, c in regions]
    return sorted(out, key=lambda d: -d.area)


def _full(region: np.ndarray, sl: tuple[slice, slice], h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[sl] = region
    return m


def _describe(mask: np.ndarray, c: int, img: np.ndarray, bg_rgb: np.ndarray, classify: bool) -> Detection:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, w)
    y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, h)
    sl = (slice(y0, y1), slice(x0, x1))
    # Soft alpha on the region grown by one pixel: projection onto the background -> object colour segment.
    grown = cv2.dilate(mask[sl].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    obj = _OBJ_RGB[c]
    bg = bg_rgb[sl]
    diff = obj - bg
    alpha = ((img[sl] - bg) * diff).sum(-1) / np.maximum((diff * diff).sum(-1), 1.0)
    alpha = np.where(grown, np.clip(alpha, 0.0, 1.0), 0.0).astype(np.float32)
    alpha[mask[sl]] = np.maximum(alpha[mask[sl]], 0.5)
    area = float(alpha.sum())
    gy, gx = np.mgrid[y0:y1, x0:x1]
    cx, cy = float((alpha * gx).sum() / area), float((alpha * gy).sum() / area)
    shape = classify_shape(alpha) if classify else "unknown"
    return Detection(
        colour=COLOUR_NAMES[c],
        centroid=(cx, cy),
        area=area,
        scale=math.sqrt(area / math.pi),
        shape=shape,
        bbox=(int(x0), int(y0), int(x1), int(y1)),
        mask=mask,
        alpha=alpha,
    )


# --------------------------------------------------------------------------------------------- clip analysis
def dominant_colour(frames: np.ndarray, mask: np.ndarray | None = None, bg_hint: BgHint = None) -> str:
    """Named object colour covering most object pixels over the clip ("none" when there are none).

    ``frames`` (F, H, W, 3) or (H, W, 3); ``mask`` (same leading dims, bool) restricts the pixels considered,
    otherwise the detector's object pixels are used.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
        mask = None if mask is None else np.asarray(mask)[None]
    counts = np.zeros(len(COLOUR_NAMES))
    for f, frame in enumerate(frames):
        if mask is not None:
            pix = frame[np.asarray(mask[f], dtype=bool)].astype(np.float32)
            lab = _sq_dist(pix, _OBJ_RGB).argmin(1) if len(pix) else np.zeros(0, dtype=int)
        else:
            _, labels, sure, _ = pixel_labels(frame, bg_hint)
            lab = labels[sure]
        counts += np.bincount(lab, minlength=len(COLOUR_NAMES))
    return COLOUR_NAMES[int(counts.argmax())] if counts.sum() > 0 else "none"


_BG_NAMES: tuple[str, ...] = tuple(BG_COLOURS)
_BG_TONES = np.asarray([t for c in _BG_NAMES for t in background_tones(c)], dtype=np.float32)  # (2 K, 3)


def background_colour(frames: np.ndarray) -> str:
    """The background colour name of a clip: each pixel votes for the nearest of every colour's two tones.

    The object covers a small part of the frame, and both tones of a textured background vote for the same name,
    so the majority is the background even on stripes or dots. ``frames`` (F, H, W, 3) or (H, W, 3) uint8.
    """
    pix = np.asarray(frames, dtype=np.float32).reshape(-1, 3)
    votes = np.bincount(_sq_dist(pix, _BG_TONES).argmin(1) // 2, minlength=len(_BG_NAMES))
    return _BG_NAMES[int(votes.argmax())]


def track(frames: np.ndarray, colour: str | None = None, bg_hint: BgHint = None, classify: bool = True) -> Track:
    """Follow the main object (largest total area, or the given colour) through (F, H, W, 3) frames."""
    frames = np.asarray(frames)
    f_n = len(frames)
    dets = [detect_objects(fr, bg_hint, classify=False) for fr in frames]
    if colour is None:
        area: Counter[str] = Counter()
        for ds in dets:
            for d in ds:
                area[d.colour] += d.area
        colour = area.most_common(1)[0][0] if area else "none"
    cents = np.full((f_n, 2), np.nan)
    scales = np.full(f_n, np.nan)
    areas = np.full(f_n, np.nan)
    found = np.zeros(f_n, dtype=bool)
    counts = np.zeros(f_n, dtype=int)
    shapes: list[str] = []
    prev: np.ndarray | None = None
    for f, ds in enumerate(dets):
        cand = [d for d in ds if d.colour == colour]
        if not cand:
            continue
        big = max(d.area for d in cand)
        cand = [d for d in cand if d.area >= 0.25 * big]  # ignore specks of the same colour
        counts[f] = len(cand)
        if prev is None:
            best = cand[0]
        else:
            best = min(cand, key=lambda d: float(np.hypot(*(np.asarray(d.centroid) - prev))) - 0.01 * d.area)
        prev = np.asarray(best.centroid)
        cents[f], scales[f], areas[f], found[f] = best.centroid, best.scale, best.area, True
        if classify:
            shapes.append(classify_shape(best.alpha))
    shape = Counter(shapes).most_common(1)[0][0] if shapes else "unknown"
    return Track(cents, scales, areas, found, counts, colour, shape, bool(found.all() and (counts == 1).all()))


__all__ = [
    "BG_COLOURS",
    "COLOUR_NAMES",
    "Detection",
    "Track",
    "background_palette",
    "classify_shape",
    "detect_objects",
    "dominant_colour",
    "pixel_labels",
    "shape_features",
    "track",
]
