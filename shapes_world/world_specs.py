"""The shapes world's vocabulary, clip specs and captions: what a clip is, before it is drawn.

Names, units and the public API are described in ``shapes_world/world.py`` (the module to import); drawing is in
``world_render.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
