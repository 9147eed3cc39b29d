"""Drawing the shapes world: anti-aliased shapes, patterned backgrounds, whole clips with their ground truth.

Names, units and the public API are described in ``shapes_world/world.py`` (the module to import); what a clip is
(vocabulary, specs, trajectories, captions) is in ``world_specs.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from shapes_world.world_specs import (
    BACKGROUNDS,
    OBJECT_RGB,
    SHAPES,
    SUPERSAMPLE,
    Clip,
    ClipSpec,
    background_tones,
    camera_path,
    caption,
    sample_spec,
    trajectory,
)


# ------------------------------------------------------------------------------------------------------- shapes
def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (N, 2) of a shape with circumradius 1, upright, in screen coordinates (y down)."""
    if shape == "circle":
        a = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
    elif shape == "square":
        a = np.deg2rad([45.0, 135.0, 225.0, 315.0])
    elif shape == "triangle":
        a = np.deg2rad([90.0, 210.0, 330.0])
    elif shape == "star":
        a = np.deg2rad(90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), -r * np.sin(a)], axis=1)
    elif shape == "cross":
        w, h = 0.36, math.sqrt(1.0 - 0.36**2)  # arm half-width, arm length (corners on the unit circle)
        quarter = [[-w, -h], [w, -h], [w, -w]]  # the top arm and the corner towards the right arm
        pts = [quarter]
        for _ in range(3):  # rotate by 90 degrees on screen for the right, bottom and left arms
            pts.append([[-y, x] for x, y in pts[-1]])
        return np.array([p for q in pts for p in q], dtype=np.float64)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return np.stack([np.cos(a), -np.sin(a)], axis=1)


_UNIT_POLYGONS: dict[str, np.ndarray] = {s: _unit_polygon(s) for s in SHAPES}


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float = 0.0) -> np.ndarray:
    """Vertices (N, 2) in pixel coordinates of ``shape`` centred at (cx, cy), rotated ``angle`` degrees ccw."""
    p = _UNIT_POLYGONS[shape] * radius
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    x = p[:, 0] * c + p[:, 1] * s
    y = -p[:, 0] * s + p[:, 1] * c
    return np.stack([x + cx, y + cy], axis=1)


def _inset(poly: np.ndarray, d: float) -> np.ndarray:
    """Move every edge of a closed polygon inwards by ``d`` (mitred corners).

    cv2.fillPoly also fills pixels on the boundary, which grows a shape by about half a (fine) pixel; insetting by
    that much makes the rendered coverage match the ideal area.
    """
    nxt = np.roll(poly, -1, axis=0)
    edge = nxt - poly
    edge /= np.maximum(np.linalg.norm(edge, axis=1, keepdims=True), 1e-9)
    x, y = poly[:, 0], poly[:, 1]
    orient = np.sign(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) or 1.0
    normal = orient * np.stack([-edge[:, 1], edge[:, 0]], axis=1)  # inward normal of edge i (poly[i] -> poly[i+1])
    prev = np.roll(normal, 1, axis=0)  # inward normal of the edge ending at vertex i
    miter = (normal + prev) / np.maximum(1.0 + (normal * prev).sum(1, keepdims=True), 0.2)
    return poly + d * miter


def _alpha_patch(
    shape: str, cx: float, cy: float, radius: float, angle: float, height: int, width: int, ss: int = SUPERSAMPLE
) -> tuple[int, int, np.ndarray] | None:
    """Anti-aliased coverage of a shape on its bounding box: (y0, x0, alpha (h, w) float32) or None if off frame."""
    x0 = max(int(math.floor(cx - radius)) - 1, 0)
    y0 = max(int(math.floor(cy - radius)) - 1, 0)
    x1 = min(int(math.ceil(cx + radius)) + 2, width)
    y1 = min(int(math.ceil(cy + radius)) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return None
    poly = shape_polygon(shape, cx - x0, cy - y0, radius, angle)
    fine = _inset((poly + 0.5) * ss - 0.5, 0.5)  # coarse pixel centre j -> centre of its ss x ss block
    pts = np.round(fine * 16.0).astype(np.int32).reshape(-1, 1, 2)
    canvas = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), dtype=np.uint8)
    cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=4)
    alpha = canvas.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3), dtype=np.float32)
    return y0, x0, alpha


def rasterize(
    shape: str, cx: float, cy: float, radius: float, angle: float = 0.0, height: int = 64, width: int = 64
) -> np.ndarray:
    """Full-frame anti-aliased coverage (H, W) float32 in [0, 1] of one shape."""
    out = np.zeros((height, width), dtype=np.float32)
    patch = _alpha_patch(shape, cx, cy, radius, angle, height, width)
    if patch is not None:
        y0, x0, a = patch
        out[y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]] = a
    return out


# -------------------------------------------------------------------------------------------------- backgrounds
def _value_noise(seed: int, cell: float, xs: np.ndarray, ys: np.ndarray, extent: float) -> np.ndarray:
    """Smooth value noise in [0, 1] at world coordinates, lattice covering [-extent, 2 * extent]."""
    n = int(math.ceil(3 * extent / cell)) + 3
    lattice = np.random.default_rng(seed).random((n, n)).astype(np.float32)
    gx = (xs + extent) / cell
    gy = (ys + extent) / cell
    ix = np.clip(np.floor(gx).astype(np.int64), 0, n - 2)
    iy = np.clip(np.floor(gy).astype(np.int64), 0, n - 2)
    fx = np.clip(gx - ix, 0.0, 1.0)
    fy = np.clip(gy - iy, 0.0, 1.0)
    fx = fx * fx * (3 - 2 * fx)
    fy = fy * fy * (3 - 2 * fy)
    top = lattice[iy, ix] * (1 - fx) + lattice[iy, ix + 1] * fx
    bot = lattice[iy + 1, ix] * (1 - fx) + lattice[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bot * fy


def _background_field(spec: ClipSpec, ox: float, oy: float, rows: int, cols: int, ss: int = SUPERSAMPLE) -> np.ndarray:
    """Supersampled mix weight (rows * ss, cols * ss) in [0, 1] of the second tone; (ox, oy) = world coordinates of
    the top-left coarse pixel centre."""
    h, w, p = spec.height, spec.width, spec.bg_params
    kind = spec.background
    if kind == "plain":
        return np.zeros((rows * ss, cols * ss), dtype=np.float32)
    ys = (np.arange(rows * ss, dtype=np.float32) + 0.5) / ss - 0.5 + oy
    xs = (np.arange(cols * ss, dtype=np.float32) + 0.5) / ss - 0.5 + ox
    xx, yy = np.meshgrid(xs, ys)
    if kind == "gradient":
        t = math.radians(p.get("angle", 90.0))
        proj = xx * math.cos(t) + yy * math.sin(t)
        span = abs(w * math.cos(t)) + abs(h * math.sin(t))
        base = (w / 2) * math.cos(t) + (h / 2) * math.sin(t)
        f = np.clip((proj - base) / max(span, 1.0) + 0.5, 0.0, 1.0)
    elif kind == "striped":
        t = math.radians(p.get("angle", 0.0))
        proj = xx * math.cos(t) + yy * math.sin(t) + p.get("phase", 0.0)
        f = ((proj / p.get("period", 10.0)) % 1.0 < 0.5).astype(np.float32)
    elif kind == "dotted":
        sp = p.get("spacing", 10.0)
        dx = (xx + p.get("phase", 0.0)) % sp - sp / 2
        dy = (yy + p.get("phase", 0.0)) % sp - sp / 2
        f = (dx * dx + dy * dy <= (p.get("dot", 0.22) * sp) ** 2).astype(np.float32)
    elif kind == "checkered":
        c = p.get("cell", 8.0)
        ph = p.get("phase", 0.0)
        f = ((np.floor((xx + ph) / c) + np.floor((yy + ph) / c)) % 2).astype(np.float32)
    elif kind == "mottled":
        v = _value_noise(int(p.get("noise_seed", 0)), p.get("cell", 12.0), xx, yy, float(max(h, w)))
        f = np.clip((v - 0.5) * 4.0 + 0.5, 0.0, 1.0)
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    return f.astype(np.float32)


def _background_frames(spec: ClipSpec, cam: np.ndarray, ss: int = SUPERSAMPLE) -> list[np.ndarray]:
    """Background image (H, W, 3) float32 per frame for view offsets ``cam`` (F, 2).

    The supersampled field is evaluated once on a canvas covering the whole camera path and cropped per frame, so
    offsets are rounded to 1 / ss pixel (camera speeds are multiples of that, see ``world_specs._resolve_object``).
    """
    h, w = spec.height, spec.width
    a, b = background_tones(spec.bg_colour)
    q = np.round(np.asarray(cam) * ss).astype(np.int64)
    q0 = q.min(axis=0)
    span = q.max(axis=0) - q0
    rows, cols = h + -(-int(span[1]) // ss), w + -(-int(span[0]) // ss)
    field = _background_field(spec, q0[0] / ss, q0[1] / ss, rows, cols, ss)
    out: list[np.ndarray] = []
    cache: dict[tuple[int, int], np.ndarray] = {}
    for dx, dy in q - q0:
        key = (int(dx), int(dy))
        if key not in cache:
            crop = field[key[1] : key[1] + h * ss, key[0] : key[0] + w * ss]
            f = crop.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)[..., None]
            cache[key] = a * (1.0 - f) + b * f
        out.append(cache[key])
    return out


# -------------------------------------------------------------------------------------------------------- render
def render(spec: ClipSpec) -> Clip:
    """Render a spec into frames plus ground truth (pure function of the spec)."""
    f_n, h, w = spec.frames, spec.height, spec.width
    cam = camera_path(spec)
    paths = [trajectory(o, f_n) for o in spec.objects]
    n_obj = len(spec.objects)
    centroids = np.stack([p[0] for p in paths]) - cam[None]  # (n_obj, F, 2) in frame coordinates
    scales = np.stack([p[1] for p in paths])
    angles = np.stack([p[2] for p in paths])
    frames = np.empty((f_n, h, w, 3), dtype=np.uint8)
    masks = np.zeros((n_obj, f_n, h, w), dtype=bool)
    backgrounds = _background_frames(spec, cam)
    colours = [np.asarray(OBJECT_RGB[o.colour], dtype=np.float32) for o in spec.objects]
    for f in range(f_n):
        img = backgrounds[f].copy()
        for k, obj in enumerate(spec.objects):
            cx, cy = centroids[k, f]
            patch = _alpha_patch(obj.shape, cx, cy, scales[k, f], angles[k, f], h, w)
            if patch is None:
                continue
            y0, x0, a = patch
            y1, x1 = y0 + a.shape[0], x0 + a.shape[1]
            region = img[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = region + (colours[k] - region) * a[..., None]
            cover = a >= 0.5
            masks[:k, f, y0:y1, x0:x1] &= ~cover  # later objects occlude earlier ones
            masks[k, f, y0:y1, x0:x1] = cover
        frames[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Clip(frames, masks, centroids, scales, angles, cam, caption(spec), spec)


def iter_dataset(
    n: int, seed: int = 0, frames: int = 16, height: int = 64, width: int = 64, first: int = 0, **sample_kwargs: Any
) -> Iterator[Clip]:
    """Yield clips ``first`` to ``first + n - 1``; clip ``i`` depends only on ``(seed, i)`` and the sampling
    arguments, so a dataset can be rendered in pieces, in any order or in parallel."""
    for i in range(first, first + n):
        rng = np.random.default_rng([seed, i])
        yield render(sample_spec(rng, frames=frames, height=height, width=width, **sample_kwargs))


def generate_dataset(
    n: int, seed: int = 0, frames: int = 16, height: int = 64, width: int = 64, **sample_kwargs: Any
) -> list[Clip]:
    """``n`` rendered clips, deterministic for a seed (see ``iter_dataset``)."""
    return list(iter_dataset(n, seed, frames, height, width, **sample_kwargs))
