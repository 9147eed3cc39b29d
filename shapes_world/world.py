"""Procedural "shapes world": seeded clips of coloured shapes moving over patterned backgrounds, with ground truth.

Every clip is drawn from a small, fully known world, so the true motion of every generated training video is known and
motion transfer can be measured exactly.

Vocabulary of the world
-----------------------
* ``SHAPES``: circle, square, triangle, star, cross (``ROTATABLE`` = the four that visibly rotate).
* ``COLOURS``: object colour name -> RGB (eight saturated colours). ``BG_COLOURS``: background colour name -> RGB
  (muted colours; an object is never drawn on a background whose tones are close to its own colour).
* ``BACKGROUNDS``: plain, gradient, striped, dotted, checkered, mottled (the names are the caption adjectives). Each
  pattern mixes the background colour with a second, slightly lighter/darker tone (``background_tones``).
* ``SIZES``: small / medium / large (radius as a fraction of ``min(height, width)``); ``SPEEDS``: slow / medium / fast.
* ``MOTIONS``: static; straight lines in 8 directions (left, right, up, down, up_left, up_right, down_left,
  down_right); orbit_cw / orbit_ccw (one full circle, so the clip ends where it started); zigzag_left / zigzag_right;
  bounce (off the frame walls); zoom_in / zoom_out (the object grows / shrinks); rotate_cw / rotate_ccw (in place,
  not for circles); pan_left / pan_right / pan_up / pan_down (the camera moves: background and objects shift together
  in the frame the opposite way). Two-object clips ("pairs") give each object its own, different motion.

Coordinates: pixel ``(row i, column j)`` has its centre at ``(x, y) = (j, i)``; y grows downwards. Angles are in
degrees, positive = counter-clockwise as seen on screen. ``camera[f]`` is the offset of the view in world pixels; an
object at world position ``p`` appears at ``p - camera[f]`` (``pan_left`` makes ``camera[:, 0]`` decrease).

API
---
* ``sample_spec(rng, frames=16, height=64, width=64, motion=None, n_objects=None, shape=None, colour=None,
  background=None, bg_colour=None, size=None, speed=None, pair_prob=0.2) -> ClipSpec`` -- random, fully resolved spec.
* ``make_spec(shape, colour, background="plain", bg_colour="grey", motion="static", size="medium", speed="medium",
  seed=0, frames=16, height=64, width=64, pair_with=None) -> ClipSpec`` -- a chosen clip (``pair_with`` =
  ``(shape, colour, motion)`` of a second object).
* ``render(spec) -> Clip`` -- pure function of the spec. ``Clip.frames`` (F, H, W, 3) uint8, ``.masks``
  (n_obj, F, H, W) bool (visible pixels, alpha >= 0.5), ``.centroids`` (n_obj, F, 2) float (x, y),
  ``.scales`` (n_obj, F) circumradius in px, ``.angles`` (n_obj, F) degrees, ``.camera`` (F, 2), ``.caption``
  (plain), ``.motion_caption``, ``.spec``.
* ``caption(spec, with_motion=False) -> str``; ``parse_caption(text) -> dict`` (shape, colour, background, bg_colour,
  motion, objects); ``VOCABULARY`` (every word a caption can use, sorted).
* ``generate_dataset(n, seed=0, frames=16, height=64, width=64, **sample_kwargs) -> list[Clip]`` -- clip ``i`` depends
  only on ``(seed, i)``; ``iter_dataset`` yields the same clips lazily.
* ``rasterize(shape, cx, cy, radius, angle, height, width) -> (H, W) float32`` coverage in [0, 1] (anti-aliased,
  4x4 supersampled); ``trajectory(obj, frames)`` and ``camera_path(spec)`` give the world-space ground truth;
  ``compatible(colour, bg_colour)`` says whether an object colour may be drawn on a background colour.

Speed: ~1000 clips of 16 x 64 x 64 in ~10 s on one core.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
ROTATABLE: tuple[str, ...] = ("square", "triangle", "star", "cross")

# Saturated object colours; the closest pair (yellow / orange) is > 100 apart in RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 190, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 225, 40),
    "purple": (150, 50, 210),
    "orange": (250, 130, 0),
    "cyan": (20, 210, 220),
    "white": (245, 245, 245),
}
# Every object colour the renderer and the detector know: the first world draws ``COLOURS``, the second
# (``paths.py``) also black.
OBJECT_RGB: dict[str, tuple[int, int, int]] = {**COLOURS, "black": (25, 25, 25)}

# Muted background colours; the second pattern tone is derived by ``background_tones``.
BG_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "grey": (115, 115, 115),
    "white": (225, 225, 225),
    "blue": (35, 50, 130),
    "dark green": (25, 85, 40),
    "brown": (105, 65, 35),
}

BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "striped", "dotted", "checkered", "mottled")
TEXTURED: tuple[str, ...] = ("striped", "dotted", "checkered", "mottled")  # backgrounds that show camera motion

SIZES: dict[str, float] = {"small": 0.12, "medium": 0.16, "large": 0.21}  # radius / min(H, W)
# Circumradius multiplier per shape so that the shapes look similarly big at the same size name.
SHAPE_SCALE: dict[str, float] = {"circle": 0.85, "square": 0.95, "triangle": 1.15, "star": 1.2, "cross": 1.0}
SPEEDS: dict[str, float] = {"slow": 0.22, "medium": 0.36, "fast": 0.5}  # distance over the clip / min(H, W)

DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up_left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up_right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down_left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down_right": (math.sqrt(0.5), math.sqrt(0.5)),
}
PANS: tuple[str, ...] = ("pan_left", "pan_right", "pan_up", "pan_down")
MOTIONS: tuple[str, ...] = (
    "static",
    *DIRECTIONS,
    "orbit_cw",
    "orbit_ccw",
    "zigzag_left",
    "zigzag_right",
    "bounce",
    "zoom_in",
    "zoom_out",
    "rotate_cw",
    "rotate_ccw",
    *PANS,
)
# Motions whose speed name changes the clip (and gets an adverb in motion captions).
SPEED_MOTIONS: frozenset[str] = frozenset(
    [*DIRECTIONS, "zigzag_left", "zigzag_right", "bounce", "rotate_cw", "rotate_ccw", *PANS]
)

MOTION_PHRASES: dict[str, str] = {
    "static": "standing still",
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "up_left": "moving up and left",
    "up_right": "moving up and right",
    "down_left": "moving down and left",
    "down_right": "moving down and right",
    "orbit_cw": "circling clockwise",
    "orbit_ccw": "circling counterclockwise",
    "zigzag_left": "zigzagging left",
    "zigzag_right": "zigzagging right",
    "bounce": "bouncing around",
    "zoom_in": "growing",
    "zoom_out": "shrinking",
    "rotate_cw": "spinning clockwise",
    "rotate_ccw": "spinning counterclockwise",
}
PAN_PHRASES: dict[str, str] = {p: "as the camera pans " + p.split("_")[1] for p in PANS}
SPEED_ADVERBS: dict[str, str] = {"slow": "slowly", "fast": "quickly"}

MIN_CONTRAST = 100.0  # min RGB distance between an object colour and every tone of its background
SUPERSAMPLE = 4


def _caption_words() -> tuple[str, ...]:
    words = {"a", "an", "and", "on", "background"}
    for table in (SHAPES, COLOURS, BG_COLOURS, BACKGROUNDS, MOTION_PHRASES.values(), PAN_PHRASES.values()):
        for item in table:
            words.update(item.split())
    words.update(SPEED_ADVERBS.values())
    return tuple(sorted(words))


VOCABULARY: tuple[str, ...] = _caption_words()


# ----------------------------------------------------------------------------------------------------------- specs
@dataclass
class ObjectSpec:
    """One object: appearance names, motion name and the resolved trajectory parameters (pixels, frames)."""

    shape: str
    colour: str
    size: str = "medium"
    motion: str = "static"
    speed: str = "medium"
    radius: float = 10.0  # circumradius in px at the start (zoom changes it)
    params: dict[str, float] = field(default_factory=dict)


@dataclass
class ClipSpec:
    """Everything needed to render a clip deterministically."""

    objects: list[ObjectSpec]
    background: str = "plain"
    bg_colour: str = "grey"
    bg_params: dict[str, float] = field(default_factory=dict)
    camera: str = "static"  # "static" or one of PANS
    camera_speed: float = 0.0  # px / frame
    frames: int = 16
    height: int = 64
    width: int = 64
    seed: int = 0

    @property
    def motion(self) -> str:
        """The clip-level motion label: the camera pan if any, else the first object's motion."""
        return self.camera if self.camera != "static" else self.objects[0].motion


@dataclass
class Clip:
    """A rendered clip with per-frame, per-object ground truth (see module docstring for units)."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    masks: np.ndarray  # (n_obj, F, H, W) bool
    centroids: np.ndarray  # (n_obj, F, 2) float64 (x, y)
    scales: np.ndarray  # (n_obj, F) circumradius px
    angles: np.ndarray  # (n_obj, F) degrees
    camera: np.ndarray  # (F, 2) view offset px
    caption: str
    spec: ClipSpec

    @property
    def motion_caption(self) -> str:
        return caption(self.spec, with_motion=True)

    @property
    def motion(self) -> str:
        return self.spec.motion

    @property
    def areas(self) -> np.ndarray:
        """(n_obj, F) visible mask area in pixels."""
        return self.masks.sum(axis=(2, 3))


# ------------------------------------------------------------------------------------------------------ colours
def background_tones(bg_colour: str) -> tuple[np.ndarray, np.ndarray]:
    """(base, second) float RGB tones of a background colour; second is ~70 lighter (dark colours) or darker."""
    base = np.asarray(BG_COLOURS[bg_colour], dtype=np.float32)
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    second = base + 0.28 * (255.0 - base) if lum < 140 else base * 0.72
    return base, second


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def compatible(colour: str, bg_colour: str) -> bool:
    """True when an object of ``colour`` stands out from every tone of a ``bg_colour`` background."""
    a, b = background_tones(bg_colour)
    return _segment_distance(np.asarray(OBJECT_RGB[colour], dtype=np.float32), a, b) >= MIN_CONTRAST


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
    offsets are rounded to 1 / ss pixel (camera speeds are multiples of that, see ``_resolve_object``).
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


# -------------------------------------------------------------------------------------------------- trajectories
def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates into [lo, hi] (a ball bouncing between two walls)."""
    span = max(hi - lo, 1e-6)
    u = np.mod(x - lo, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


def _triangle_wave(u: np.ndarray) -> np.ndarray:
    """Period-1 triangle wave in [-1, 1] with value 0 and rising slope at u = 0."""
    v = np.mod(u + 0.25, 1.0)
    return 1.0 - 4.0 * np.abs(v - 0.5)


def trajectory(obj: ObjectSpec, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-space centre (F, 2), circumradius (F,) and angle (F,) of an object over the clip."""
    p, m = obj.params, obj.motion
    t = np.arange(frames, dtype=np.float64)
    u = t / max(frames - 1, 1)
    radius = np.full(frames, obj.radius)
    angle = np.full(frames, p.get("angle0", 0.0))
    x = np.full(frames, p.get("x0", 0.0))
    y = np.full(frames, p.get("y0", 0.0))
    if m in DIRECTIONS:
        x = x + p["vx"] * t
        y = y + p["vy"] * t
    elif m in ("orbit_cw", "orbit_ccw"):
        phi = p["phase"] + p["sweep"] * u
        x = p["cx"] + p["orbit_radius"] * np.cos(phi)
        y = p["cy"] - p["orbit_radius"] * np.sin(phi)
    elif m in ("zigzag_left", "zigzag_right"):
        x = x + p["vx"] * t
        y = y + p["amp"] * _triangle_wave(t / p["period"])
    elif m == "bounce":
        x = _fold(x + p["vx"] * t, p["lo_x"], p["hi_x"])
        y = _fold(y + p["vy"] * t, p["lo_y"], p["hi_y"])
    elif m in ("zoom_in", "zoom_out"):
        radius = p["r0"] * (p["r1"] / p["r0"]) ** u
    elif m in ("rotate_cw", "rotate_ccw"):
        angle = angle + p["sweep"] * u
    elif m == "path":  # per-frame samples of a path drawn by ``paths.py``
        x = np.array([p[f"x{f}"] for f in range(frames)])
        y = np.array([p[f"y{f}"] for f in range(frames)])
        radius = np.array([p[f"r{f}"] for f in range(frames)])
    elif m != "static" and m not in PANS:
        raise ValueError(f"unknown motion {m!r}; known: {MOTIONS}")
    return np.stack([x, y], axis=1), radius, angle


def camera_path(spec: ClipSpec) -> np.ndarray:
    """View offset (F, 2) in pixels; zero for a static camera."""
    cam = np.zeros((spec.frames, 2))
    if spec.camera == "path":  # per-frame offsets drawn by ``paths.py``
        return np.array([[spec.bg_params[f"cx{f}"], spec.bg_params[f"cy{f}"]] for f in range(spec.frames)])
    if spec.camera != "static":
        d = np.asarray(DIRECTIONS[spec.camera.split("_", 1)[1]])
        cam = np.arange(spec.frames)[:, None] * spec.camera_speed * d[None, :]
    return cam


# ------------------------------------------------------------------------------------------------ spec sampling
def _bounds(radius: float, height: int, width: int) -> tuple[float, float, float, float]:
    m = radius + 1.5
    return m, width - 1 - m, m, height - 1 - m


def _start_range(lo: float, hi: float, disp: float) -> tuple[float, float, float]:
    """Feasible start interval on one axis for a total displacement ``disp``; returns (lo, hi, scale <= 1)."""
    span = hi - lo
    scale = 1.0 if abs(disp) <= span or abs(disp) < 1e-9 else span / abs(disp)
    d = disp * scale
    return lo - min(0.0, d), hi - max(0.0, d), scale


def _resolve_object(
    rng: np.random.Generator, shape: str, colour: str, size: str, motion: str, speed: str, frames: int, h: int, w: int
) -> tuple[ObjectSpec, float]:
    """Resolve trajectory parameters; returns the object and the camera speed (px / frame, pans only)."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; known: {MOTIONS}")
    if motion in ("rotate_cw", "rotate_ccw") and shape not in ROTATABLE:
        raise ValueError(f"rotation is not visible for a {shape}; use one of {ROTATABLE}")
    side = float(min(h, w))
    r = SIZES[size] * side * SHAPE_SCALE[shape]
    n = max(frames - 1, 1)
    frac = SPEEDS[speed]
    p: dict[str, float] = {"angle0": 0.0}
    cam_speed = 0.0
    lo_x, hi_x, lo_y, hi_y = _bounds(r, h, w)

    def uniform(a: float, b: float) -> float:
        return float(rng.uniform(min(a, b), max(a, b)))

    if motion in DIRECTIONS or motion in PANS:
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
        name = motion if motion in DIRECTIONS else opposite[motion.split("_")[1]]  # content moves against the camera
        dx, dy = DIRECTIONS[name]
        dist = frac * side
        ax, bx, sx = _start_range(lo_x, hi_x, dx * dist)
        ay, by, sy = _start_range(lo_y, hi_y, dy * dist)
        dist *= min(sx, sy)
        ax, bx, _ = _start_range(lo_x, hi_x, dx * dist)
        ay, by, _ = _start_range(lo_y, hi_y, dy * dist)
        p.update(x0=uniform(ax, bx), y0=uniform(ay, by))
        if motion in DIRECTIONS:
            p.update(vx=dx * dist / n, vy=dy * dist / n)
        else:  # a multiple of 1 / SUPERSAMPLE px, so the background is cropped exactly (and stays in bounds)
            cam_speed = math.floor(dist / n * SUPERSAMPLE) / SUPERSAMPLE
    elif motion in ("orbit_cw", "orbit_ccw"):
        rad = min(uniform(0.16, 0.24) * side, (hi_x - lo_x) / 2 - 1, (hi_y - lo_y) / 2 - 1)
        rad = max(rad, 2.0)
        cx = uniform(lo_x + rad, hi_x - rad)
        cy = uniform(lo_y + rad, hi_y - rad)
        sign = -1.0 if motion == "orbit_cw" else 1.0
        p.update(cx=cx, cy=cy, orbit_radius=rad, phase=uniform(0, 2 * math.pi), sweep=sign * 2 * math.pi)
    elif motion in ("zigzag_left", "zigzag_right"):
        dx = -1.0 if motion == "zigzag_left" else 1.0
        amp = min(uniform(0.08, 0.12) * side, (hi_y - lo_y) / 2)
        ax, bx, sx = _start_range(lo_x, hi_x, dx * frac * side)
        p.update(
            x0=uniform(ax, bx),
            y0=uniform(lo_y + amp, hi_y - amp),
            vx=dx * frac * side * sx / n,
            amp=amp,
            period=max(frames / uniform(2.0, 2.7), 3.0),
        )
    elif motion == "bounce":
        extent = min(hi_x - lo_x, hi_y - lo_y)
        dist = {"slow": 0.9, "medium": 1.2, "fast": 1.6}[speed] * extent
        theta = math.radians(uniform(25, 65) + 90 * int(rng.integers(4)))
        vx, vy = dist * math.cos(theta) / n, dist * math.sin(theta) / n
        x0, y0 = uniform(lo_x, hi_x), uniform(lo_y, hi_y)
        for _ in range(10):  # make sure it hits a wall at least once
            ex, ey = x0 + vx * n, y0 + vy * n
            if not (lo_x <= ex <= hi_x and lo_y <= ey <= hi_y):
                break
            x0, y0 = uniform(lo_x, hi_x), uniform(lo_y, hi_y)
        else:
            x0 = hi_x - 1 if vx > 0 else lo_x + 1
        p.update(x0=x0, y0=y0, vx=vx, vy=vy, lo_x=lo_x, hi_x=hi_x, lo_y=lo_y, hi_y=hi_y)
    elif motion in ("zoom_in", "zoom_out"):
        big = min(r * uniform(1.6, 2.0), side / 2 - 3)
        lx, hx, ly, hy = _bounds(big, h, w)
        p.update(x0=uniform(lx, hx), y0=uniform(ly, hy))
        if motion == "zoom_in":
            p.update(r0=r, r1=big)
        else:
            p.update(r0=big, r1=r)
        r = p["r0"]
    elif motion in ("rotate_cw", "rotate_ccw"):
        sweep = {"slow": 90.0, "medium": 150.0, "fast": 240.0}[speed]
        p.update(x0=uniform(lo_x, hi_x), y0=uniform(lo_y, hi_y), sweep=-sweep if motion == "rotate_cw" else sweep)
    else:  # static
        p.update(x0=uniform(lo_x, hi_x), y0=uniform(lo_y, hi_y))
    obj = ObjectSpec(shape=shape, colour=colour, size=size, motion=motion, speed=speed, radius=r, params=p)
    return obj, cam_speed


def _sample_bg_params(rng: np.random.Generator, background: str, side: float, camera: str) -> dict[str, float]:
    if background == "gradient":
        return {"angle": float(rng.choice([0.0, 90.0, 45.0, 135.0]))}
    if background == "striped":
        if camera in ("pan_left", "pan_right"):
            angles = [0.0, 45.0, 135.0]  # stripes across the pan direction, so the pan is visible
        elif camera in ("pan_up", "pan_down"):
            angles = [90.0, 45.0, 135.0]
        else:
            angles = [0.0, 90.0, 45.0, 135.0]
        return {
            "angle": float(rng.choice(angles)),
            "period": side * float(rng.uniform(0.14, 0.22)),
            "phase": float(rng.uniform(0, 20)),
        }
    if background == "dotted":
        return {"spacing": side * float(rng.uniform(0.14, 0.2)), "dot": 0.22, "phase": float(rng.uniform(0, 10))}
    if background == "checkered":
        return {"cell": side * float(rng.uniform(0.1, 0.16)), "phase": float(rng.uniform(0, 10))}
    if background == "mottled":
        return {"cell": side * float(rng.uniform(0.15, 0.25)), "noise_seed": float(rng.integers(1 << 30))}
    return {}


def _overlaps(a: ObjectSpec, b: ObjectSpec, frames: int) -> bool:
    pa, ra, _ = trajectory(a, frames)
    pb, rb, _ = trajectory(b, frames)
    return bool(np.any(np.linalg.norm(pa - pb, axis=1) < ra + rb + 2.0))


def _build(
    rng: np.random.Generator,
    first: tuple[str, str, str, str, str],
    second: tuple[str, str, str, str, str] | None,
    background: str,
    bg_colour: str,
    frames: int,
    height: int,
    width: int,
    seed: int,
) -> ClipSpec:
    """Resolve one or two objects (retrying to avoid overlap) and the background into a ClipSpec."""
    for name, val, known in (("background", background, BACKGROUNDS), ("bg_colour", bg_colour, BG_COLOURS)):
        if val not in known:
            raise ValueError(f"unknown {name} {val!r}; known: {tuple(known)}")
    for shape, colour, size, _, speed in [first] + ([second] if second else []):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; known: {tuple(COLOURS)}")
        if size not in SIZES or speed not in SPEEDS:
            raise ValueError(f"size must be in {tuple(SIZES)} and speed in {tuple(SPEEDS)}")
        if not compatible(colour, bg_colour):
            raise ValueError(f"a {colour} object does not stand out on a {bg_colour} background")
    camera = first[3] if first[3] in PANS else "static"
    objs: list[ObjectSpec] = []
    cam_speed = 0.0
    linear = [d for d in DIRECTIONS if d != first[3]]
    for attempt in range(90):
        a, cam_speed = _resolve_object(rng, *first, frames, height, width)
        objs = [a]
        if second is None:
            break
        m2 = camera if camera != "static" else second[3]
        if camera == "static" and attempt >= 30:  # the two keep colliding: simpler motions for the second object
            m2 = linear[int(rng.integers(len(linear)))] if attempt < 60 or first[3] == "static" else "static"
        speed2 = first[4] if camera != "static" else second[4]  # one camera: the same pan for both objects
        b, _ = _resolve_object(rng, *second[:3], m2, speed2, frames, height, width)
        objs = [a, b]
        if not _overlaps(a, b, frames):
            break
    if camera != "static":
        for o in objs:
            o.motion, o.speed = "static", first[4]
    bg_params = _sample_bg_params(rng, background, float(min(height, width)), camera)
    return ClipSpec(objs, background, bg_colour, bg_params, camera, cam_speed, frames, height, width, seed)


def make_spec(
    shape: str,
    colour: str,
    background: str = "plain",
    bg_colour: str = "grey",
    motion: str = "static",
    size: str = "medium",
    speed: str = "medium",
    seed: int = 0,
    frames: int = 16,
    height: int = 64,
    width: int = 64,
    pair_with: tuple[str, str, str] | None = None,
) -> ClipSpec:
    """A chosen clip; placement and free parameters are drawn from ``seed``. Raises ValueError on bad names."""
    rng = np.random.default_rng(seed)
    second = (pair_with[0], pair_with[1], "small", pair_with[2], speed) if pair_with else None
    first = (shape, colour, "small" if pair_with and size == "large" else size, motion, speed)
    return _build(rng, first, second, background, bg_colour, frames, height, width, seed)


def sample_spec(
    rng: np.random.Generator,
    frames: int = 16,
    height: int = 64,
    width: int = 64,
    motion: str | None = None,
    n_objects: int | None = None,
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    bg_colour: str | None = None,
    size: str | None = None,
    speed: str | None = None,
    pair_prob: float = 0.2,
) -> ClipSpec:
    """A random clip spec; any argument given is kept fixed. ``n_objects`` None -> 2 with probability ``pair_prob``."""

    def pick(options: Sequence[str]) -> str:
        return str(options[int(rng.integers(len(options)))])

    motion = motion or pick(MOTIONS)
    n_obj = n_objects if n_objects is not None else (2 if rng.random() < pair_prob else 1)
    if n_obj not in (1, 2):
        raise ValueError(f"n_objects must be 1 or 2, got {n_obj}")
    background = background or pick(TEXTURED if motion in PANS else BACKGROUNDS)
    if bg_colour is None:
        options = [b for b in BG_COLOURS if colour is None or compatible(colour, b)]
        bg_colour = pick(options)
    rotating = motion in ("rotate_cw", "rotate_ccw")
    shape = shape or pick(ROTATABLE if rotating else SHAPES)
    colour = colour or pick([c for c in COLOURS if compatible(c, bg_colour)])
    size = size or pick(("small", "medium") if n_obj == 2 else tuple(SIZES))
    speed = speed or pick(tuple(SPEEDS))
    second = None
    if n_obj == 2:
        shape2 = pick([s for s in SHAPES if s != shape])
        colour2 = pick([c for c in COLOURS if c != colour and compatible(c, bg_colour)])
        others = [m for m in MOTIONS if m != motion and m not in PANS and not m.startswith("zoom")]
        if shape2 not in ROTATABLE:
            others = [m for m in others if not m.startswith("rotate")]
        second = (shape2, colour2, "small", pick(others), pick(tuple(SPEEDS)))
    seed = int(rng.integers(1 << 31))
    return _build(
        rng, (shape, colour, size, motion, speed), second, background, bg_colour, frames, height, width, seed
    )


# ------------------------------------------------------------------------------------------------------ captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: ObjectSpec, with_motion: bool, camera: str) -> str:
    text = f"{_article(obj.colour)} {obj.colour} {obj.shape}"
    if with_motion and camera == "static":
        adverb = SPEED_ADVERBS.get(obj.speed, "") if obj.motion in SPEED_MOTIONS else ""
        text += (f" {adverb}" if adverb else "") + " " + MOTION_PHRASES[obj.motion]
    return text


def caption(spec: ClipSpec, with_motion: bool = False) -> str:
    """Plain caption, e.g. "a red triangle on a striped blue background"; with_motion adds "moving left" etc."""
    objs = " and ".join(_object_phrase(o, with_motion, spec.camera) for o in spec.objects)
    text = f"{objs} on a {spec.background} {spec.bg_colour} background"
    if with_motion and spec.camera != "static":
        adverb = SPEED_ADVERBS.get(spec.objects[0].speed, "")
        text += " " + PAN_PHRASES[spec.camera].replace("pans", f"{adverb} pans" if adverb else "pans")
    return text


_PHRASE_TO_MOTION = sorted(((v, k) for k, v in MOTION_PHRASES.items()), key=lambda kv: -len(kv[0]))


def parse_caption(text: str) -> dict[str, Any]:
    """Recover the prompted attributes of a caption (or a caption-like prompt).

    Returns ``shape``, ``colour`` (first object), ``background``, ``bg_colour``, ``motion`` (clip-level, None when the
    text names none) and ``objects`` (list of dicts with shape, colour, motion). Missing attributes are None.
    """
    words = re.sub(r"[^a-z ]+", " ", text.lower()).split()
    # Split off the background part at the last "on"; the object part is before it.
    cut = max((i for i, wd in enumerate(words) if wd == "on"), default=len(words))
    obj_words, bg_words = words[:cut], words[cut + 1 :]
    background = next((wd for wd in bg_words if wd in BACKGROUNDS), None)
    bg_colour = None
    joined = " " + " ".join(bg_words) + " "
    for name in sorted(BG_COLOURS, key=len, reverse=True):
        if f" {name} " in joined:
            bg_colour = name
            break
    camera = None
    m = re.search(r"camera (?:\w+ )?pans (left|right|up|down)", " ".join(bg_words))
    if m:
        camera = "pan_" + m.group(1)
    objects: list[dict[str, Any]] = []
    idx = [i for i, wd in enumerate(obj_words) if wd in SHAPES]
    for k, i in enumerate(idx):
        colour = obj_words[i - 1] if i > 0 and obj_words[i - 1] in OBJECT_RGB else None
        end = idx[k + 1] if k + 1 < len(idx) else len(obj_words)
        tail = " " + " ".join(obj_words[i + 1 : end]) + " "
        motion = next((mo for ph, mo in _PHRASE_TO_MOTION if f" {ph} " in tail), None)
        objects.append({"shape": obj_words[i], "colour": colour, "motion": motion})
    first = objects[0] if objects else {"shape": None, "colour": None, "motion": None}
    return {
        "shape": first["shape"],
        "colour": first["colour"],
        "background": background,
        "bg_colour": bg_colour,
        "motion": camera or first["motion"],
        "objects": objects,
    }


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
