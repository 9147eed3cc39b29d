"""The second shapes world: one object on a smooth random path, small enough for a 2-core CPU to learn.

The first world (``world.py``) drew 22 named motions at 64 x 64 x 12; a 2.4 M-parameter UNet trained on it for
19 k CPU steps learnt a narrow, memorised motion prior that a motion LoRA could barely steer. This world keeps the
look and the captions ("a red circle on a plain white background") and changes what matters for motion:

* **A continuous family of paths** instead of a list: cubic Bezier curves with random speed profiles (easing,
  stops, accelerations), elliptic arcs and loops of any sweep, wall bounces at any velocity, wiggles (a line plus a
  sinusoid), zooms, and camera pans along a line, each with continuous parameters. A reference the world never
  drew lies inside this prior, so a LoRA has a motion to pull the model towards rather than one to invent.
* **Held-out families** (``HELD_OUT``) that training never draws, to check transfer honestly: ``zigzag`` (a
  sharp-cornered triangle wave), ``square`` (a rectangle's corners), ``figure8`` and ``spiral``.
* **Small clips**: 8 frames of 32 x 32 pixels (a 4x VAE gives 8 x 8 latents; the extractor's capture block sees
  4 x 4), about six times cheaper per training clip than the first world.
* One object of 4 shapes and 6 colours (``SHAPES``, ``COLOURS``) over plain, gradient, striped or dotted
  backgrounds in the first world's background colours; sizes big enough to read a shape at 32 pixels.

Rendering, backgrounds and caption parsing are the first world's (``world.render`` draws a ``ClipSpec``); a path
is stored in the object's ``params`` as per-frame samples (``x{f}``, ``y{f}``, ``r{f}``), which ``world.trajectory``
reads for the motion ``"path"``. The camera path of a pan is stored the same way (``spec.bg_params`` ``cx{f}``,
``cy{f}``).

API
---
* ``sample_spec(rng, frames=FRAMES, height=SIZE, width=SIZE, family=None, shape=None, colour=None, background=None,
  bg_colour=None, size=None) -> world.ClipSpec``; ``make_spec(shape, colour, background, bg_colour, family, seed,
  ...)``. A ``size`` is a name of ``SIZES`` or a radius / side in (0, ``MAX_SIZE``] (``size_fraction``).
* ``iter_dataset(n, seed, frames, height, width, first=0)`` (clip ``i`` depends only on ``(seed, i)``), ``render``.
* ``FAMILIES`` (drawn in training, with their weights) and ``HELD_OUT`` (never drawn by ``sample_spec`` unless
  asked for), ``VOCABULARY`` (the caption words).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import world, world_specs

FRAMES, SIZE = 8, 32
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "black")
BG_COLOURS: tuple[str, ...] = tuple(world.BG_COLOURS)
BACKGROUNDS: dict[str, float] = {"plain": 0.6, "gradient": 0.1, "striped": 0.15, "dotted": 0.15}
TEXTURED: tuple[str, ...] = ("striped", "dotted")  # backgrounds on which a camera pan is visible
# Radius / side. Training on larger objects (0.2 / 0.22 / 0.25, recipe --sizes) gave more stars but not more
# squares, whose corners the model rounds off at every size and noise level tried (diagnose --shape-survival
# --radii; docs/results.md). MAX_SIZE: the largest radius that still leaves a zoomed object room to move.
SIZES: dict[str, float] = {"small": 0.14, "medium": 0.17, "large": 0.21}
MAX_SIZE = 0.25

# Training families and how often each is drawn; "pan" only on a textured background (elsewhere it is redrawn).
FAMILIES: dict[str, float] = {"curve": 0.32, "arc": 0.18, "bounce": 0.12, "wiggle": 0.13, "zoom": 0.1, "pan": 0.1,
                              "static": 0.05}
HELD_OUT: tuple[str, ...] = ("zigzag", "square", "figure8", "spiral")


def caption(spec: world.ClipSpec) -> str:
    """The plain caption (no motion words): the model draws motion from its prior, a LoRA pins it down."""
    o = spec.objects[0]
    return f"{world_specs._article(o.colour)} {o.colour} {o.shape} on a {spec.background} {spec.bg_colour} background"


def _words() -> tuple[str, ...]:
    words = {"a", "an", "on", "background", *SHAPES, *COLOURS, *BACKGROUNDS}
    for c in BG_COLOURS:
        words.update(c.split())
    return tuple(sorted(words))


VOCABULARY: tuple[str, ...] = _words()


def colour_names() -> dict[str, dict[str, list[int]]]:
    """The world's colour words and the RGB it draws them in, as ``TrainConfig.recolour_names`` reads them: object
    colours anywhere, background colours before the word "background" (the two "blue"s differ)."""
    return {"": {c: list(world_specs.OBJECT_RGB[c]) for c in COLOURS},
            "background": {c: list(world.BG_COLOURS[c]) for c in BG_COLOURS}}


def compatible(colour: str, bg_colour: str) -> bool:
    """True when an object of ``colour`` stands out from both tones of a ``bg_colour`` background."""
    return world.compatible(colour, bg_colour)


# ------------------------------------------------------------------------------------------------------ families
def _warp(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    """A random monotone speed profile on [0, 1]: constant, easing, accelerating, decelerating or a pause."""
    kind = int(rng.integers(5))
    if kind == 0:
        return u
    if kind == 1:
        return u * u * (3 - 2 * u)
    if kind == 2:
        return u ** float(rng.uniform(1.5, 2.5))
    if kind == 3:
        return 1 - (1 - u) ** float(rng.uniform(1.5, 2.5))
    a = float(rng.uniform(0.25, 0.6))  # pause from a to b
    b = min(a + float(rng.uniform(0.15, 0.35)), 0.95)
    return np.interp(u, [0.0, a, b, 1.0], [0.0, a / (1 - (b - a)), a / (1 - (b - a)), 1.0])


def _fit(xy: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrink a path about its start if it is wider than the box, then shift it to a random place inside."""
    span = xy.max(0) - xy.min(0)
    room = hi - lo
    s = float(min(1.0, *(room / np.maximum(span, 1e-6))))
    xy = xy[:1] + (xy - xy[:1]) * s
    low = lo - xy.min(0)
    high = hi - xy.max(0)
    return xy + rng.uniform(np.minimum(low, high), np.maximum(low, high))


def family_path(family: str, rng: np.random.Generator, frames: int, lo: np.ndarray, hi: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Frame-space centre (F, 2) and a radius factor (F,) of one family's path inside the box [lo, hi]."""
    u = np.linspace(0.0, 1.0, frames)
    side = float(min(hi - lo))
    scale = np.ones(frames)
    if family == "static":
        xy = np.zeros((frames, 2))
    elif family == "curve":  # a cubic Bezier whose extent runs from a short drift to the whole frame
        reach = float(rng.uniform(0.5, 1.4)) * side
        p = rng.uniform(-0.5, 0.5, size=(4, 2)) * reach
        w = _warp(rng, u)[:, None]
        xy = ((1 - w) ** 3 * p[0] + 3 * (1 - w) ** 2 * w * p[1] + 3 * (1 - w) * w**2 * p[2] + w**3 * p[3])
    elif family == "arc":  # part of an ellipse, or a whole loop and a bit
        rx, ry = rng.uniform(0.2, 0.5, size=2) * side
        sweep = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.4, 2.3)) * math.pi
        phi = float(rng.uniform(0, 2 * math.pi)) + sweep * (_warp(rng, u) if rng.random() < 0.5 else u)
        xy = np.stack([rx * np.cos(phi), -ry * np.sin(phi)], axis=1)
    elif family == "bounce":  # straight flight off the walls at any speed
        v = rng.normal(size=2)
        v *= float(rng.uniform(0.2, 0.7)) * side / max(frames - 1, 1) / max(float(np.linalg.norm(v)), 1e-6)
        start = rng.uniform(lo, hi)
        t = np.arange(frames)[:, None]
        raw = start + v * t * 2.5
        xy = np.stack([world_specs._fold(raw[:, 0], lo[0], hi[0]), world_specs._fold(raw[:, 1], lo[1], hi[1])], axis=1)
        return xy, scale
    elif family == "wiggle":  # a line with a sinusoid across it
        d = rng.normal(size=2)
        d /= max(float(np.linalg.norm(d)), 1e-6)
        length = float(rng.uniform(0.3, 1.0)) * side
        amp = float(rng.uniform(0.1, 0.25)) * side
        periods = float(rng.uniform(0.6, 1.6))
        ph = float(rng.uniform(0, 2 * math.pi))
        along = (_warp(rng, u) - 0.5) * length
        across = amp * np.sin(2 * math.pi * periods * u + ph)
        xy = along[:, None] * d + across[:, None] * np.array([-d[1], d[0]])
    elif family == "zoom":  # grows or shrinks by up to 2x, drifting a little
        k = float(rng.uniform(0.55, 1.8))
        scale = k ** _warp(rng, u)
        drift = rng.uniform(-0.15, 0.15, size=2) * side
        xy = u[:, None] * drift
    elif family == "zigzag":  # held out: a triangle wave with sharp corners
        d = rng.normal(size=2)
        d /= max(float(np.linalg.norm(d)), 1e-6)
        length = float(rng.uniform(0.4, 0.8)) * side
        amp = float(rng.uniform(0.15, 0.25)) * side
        periods = float(rng.choice([1.5, 2.0]))
        tri = 1 - 4 * np.abs(np.mod(periods * u + 0.25, 1.0) - 0.5)
        xy = ((u - 0.5) * length)[:, None] * d + (amp * tri)[:, None] * np.array([-d[1], d[0]])
    elif family == "square":  # held out: round three or four corners of a rectangle at constant speed
        w, h = rng.uniform(0.4, 0.7, size=2) * side
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h], [0, 0]])
        if rng.random() < 0.5:
            corners = corners[:, ::-1]
        seg = np.linalg.norm(np.diff(corners, axis=0), axis=1)
        s = np.concatenate([[0], np.cumsum(seg)])
        pos = u * s[-1] * float(rng.uniform(0.75, 1.0))
        xy = np.stack([np.interp(pos, s, corners[:, 0]), np.interp(pos, s, corners[:, 1])], axis=1)
    elif family == "figure8":  # held out: a lissajous figure eight
        a, b = rng.uniform(0.25, 0.45, size=2) * side
        ph = float(rng.uniform(0, 2 * math.pi))
        th = ph + 2 * math.pi * u * float(rng.choice([-1.0, 1.0]))
        xy = np.stack([a * np.sin(th), b * np.sin(2 * th) / 2], axis=1)
    elif family == "spiral":  # held out: one and a half turns inwards or outwards
        r = np.linspace(0.45, 0.1, frames) * side
        if rng.random() < 0.5:
            r = r[::-1]
        th = float(rng.uniform(0, 2 * math.pi)) + float(rng.choice([-1.0, 1.0])) * 3 * math.pi * u
        xy = np.stack([r * np.cos(th), -r * np.sin(th)], axis=1)
    else:
        raise ValueError(f"unknown path family {family!r}; known: {(*FAMILIES, *HELD_OUT)}")
    return _fit(xy, lo, hi, rng), scale


def _pan(rng: np.random.Generator, frames: int, side: float) -> np.ndarray:
    """Camera offsets (F, 2) of a pan along a random direction, in 1/SUPERSAMPLE px (exact background crops)."""
    ang = float(rng.uniform(0, 2 * math.pi))
    speed = float(rng.uniform(0.04, 0.1)) * side  # px / frame
    t = np.arange(frames)[:, None]
    cam = t * speed * np.array([[math.cos(ang), math.sin(ang)]])
    return np.round(cam * world.SUPERSAMPLE) / world.SUPERSAMPLE


# ------------------------------------------------------------------------------------------------------ specs
def _build(rng: np.random.Generator, shape: str, colour: str, size: str | float, background: str, bg_colour: str,
           family: str, frames: int, height: int, width: int, seed: int) -> world.ClipSpec:
    for name, val, known in (("shape", shape, SHAPES), ("colour", colour, COLOURS),
                             ("background", background, BACKGROUNDS), ("bg_colour", bg_colour, BG_COLOURS)):
        if val not in known:
            raise ValueError(f"unknown {name} {val!r}; known: {tuple(known)}")
    frac = size_fraction(size)
    if not compatible(colour, bg_colour):
        raise ValueError(f"a {colour} object does not stand out on a {bg_colour} background")
    side = float(min(height, width))
    r0 = frac * side * world.SHAPE_SCALE[shape]
    zoom_max = 1.8 if family == "zoom" else 1.0
    m = r0 * zoom_max * 0.8 + 1.0  # the object may touch the border, not leave the frame
    lo, hi = np.array([m, m]), np.array([width - 1 - m, height - 1 - m])
    cam = np.zeros((frames, 2))
    if family == "pan":  # the object stays put in the world (or drifts), the camera moves
        cam = _pan(rng, frames, side)
        xy, scale = family_path("static" if rng.random() < 0.6 else "curve", rng, frames, lo, hi)
        xy = xy - (cam - cam.mean(0))
        xy = _fit(xy, lo, hi, rng)
    else:
        xy, scale = family_path(family, rng, frames, lo, hi)
    params: dict[str, float] = {"angle0": float(rng.uniform(0, 360)) if shape != "circle" else 0.0}
    world_xy = xy + cam  # the renderer draws an object at its world position minus the camera offset
    for f in range(frames):
        params.update({f"x{f}": float(world_xy[f, 0]), f"y{f}": float(world_xy[f, 1]), f"r{f}": float(r0 * scale[f])})
    label = next((name for name, f in SIZES.items() if f == frac), f"{frac:g}")  # a named size keeps its name
    obj = world.ObjectSpec(shape, colour, label, "path", "medium", float(r0), params)
    bg = world_specs._sample_bg_params(rng, background, side, "static")
    for f in range(frames):
        bg.update({f"cx{f}": float(cam[f, 0]), f"cy{f}": float(cam[f, 1])})
    spec = world.ClipSpec([obj], background, bg_colour, bg, "path" if family == "pan" else "static", 0.0, frames,
                          height, width, seed)
    spec.bg_params["family"] = float((*FAMILIES, *HELD_OUT).index(family))
    return spec


def size_fraction(size: str | float) -> float:
    """The radius / side of a named size (``SIZES``), or of a number in (0, MAX_SIZE] (a size training never drew,
    for diagnosis). Raises ValueError otherwise."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; known: {tuple(SIZES)} or a number in (0, {MAX_SIZE}]")
        return SIZES[size]
    if not 0 < float(size) <= MAX_SIZE:
        raise ValueError(f"size {size!r} is not a name {tuple(SIZES)} or a number in (0, {MAX_SIZE}]")
    return float(size)


def shape_weights_of(text: str) -> tuple[float, ...]:
    """``"square=2,star=2"``: the weight of each of ``SHAPES``, in that order (a shape not named weighs 1).
    Raises ValueError naming the problem."""
    weights = dict.fromkeys(SHAPES, 1.0)
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in weights:
            raise ValueError(f"{item!r} is not shape=weight with a shape of {SHAPES}")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"the weight of {name.strip()!r} is not a number: {value!r}") from None
        if not 0 <= w <= 100:  # NaN fails it too
            raise ValueError(f"the weight of {name.strip()!r} must be in [0, 100], got {value!r}")
        weights[name.strip()] = w
    if not sum(weights.values()) > 0:
        raise ValueError("at least one shape needs a weight above 0")
    return tuple(weights.values())


def family_of(spec: world.ClipSpec) -> str:
    """The path family a spec was drawn from."""
    return (*FAMILIES, *HELD_OUT)[int(spec.bg_params["family"])]


def make_spec(shape: str, colour: str, background: str = "plain", bg_colour: str = "grey", family: str = "curve",
              size: str | float = "medium", seed: int = 0, frames: int = FRAMES, height: int = SIZE, width: int = SIZE
              ) -> world.ClipSpec:
    """A chosen clip; the path's free parameters are drawn from ``seed``. Raises ValueError on bad names."""
    if family == "pan" and background not in TEXTURED:
        raise ValueError(f"a pan is visible only on a textured background {TEXTURED}, not {background!r}")
    return _build(np.random.default_rng(seed), shape, colour, size, background, bg_colour, family, frames, height,
                  width, seed)


def sample_spec(rng: np.random.Generator, frames: int = FRAMES, height: int = SIZE, width: int = SIZE,
                family: str | None = None, shape: str | None = None, colour: str | None = None,
                background: str | None = None, bg_colour: str | None = None, size: str | float | None = None,
                sizes: tuple[float, ...] | None = None, shape_weights: tuple[float, ...] | None = None
                ) -> world.ClipSpec:
    """A random training clip (any argument given is kept); ``family`` None draws from ``FAMILIES``. ``size`` None
    draws one of ``sizes`` (radius / side; default ``SIZES``), the same draw from the same ``rng`` for any sizes of
    the same number. ``shape_weights``: how often each of ``SHAPES`` is drawn (``shape_weights_of``); None draws
    them evenly, as every run before the option did (a weighted draw takes another path through ``rng``)."""
    def pick(options: tuple[str, ...] | list[str], weights: list[float] | None = None) -> str:
        p = None if weights is None else np.asarray(weights) / sum(weights)
        return str(options[int(rng.choice(len(options), p=p))])

    family = family or pick(tuple(FAMILIES), list(FAMILIES.values()))
    if background is None:
        names = TEXTURED if family == "pan" else tuple(BACKGROUNDS)
        background = pick(names, [BACKGROUNDS[b] for b in names])
    bg_colour = bg_colour or pick([b for b in BG_COLOURS if colour is None or compatible(colour, b)])
    colour = colour or pick([c for c in COLOURS if compatible(c, bg_colour)])
    shape = shape or pick(SHAPES, None if shape_weights is None else list(shape_weights))
    if size is None:
        named = tuple(SIZES) if sizes is None else tuple(float(f) for f in sizes)
        size = named[int(rng.choice(len(named)))]
    seed = int(rng.integers(1 << 31))
    return _build(rng, shape, colour, size, background, bg_colour, family, frames, height, width, seed)


def render(spec: world.ClipSpec) -> world.Clip:
    """Frames and ground truth of a spec (``world.render``, with this world's caption)."""
    clip = world.render(spec)
    clip.caption = caption(spec)
    return clip


def iter_dataset(n: int, seed: int = 0, frames: int = FRAMES, height: int = SIZE, width: int = SIZE,
                 first: int = 0, **kwargs: Any) -> Iterator[world.Clip]:
    """Clips ``first`` .. ``first + n - 1``; clip ``i`` depends only on ``(seed, i)`` (render in any order)."""
    for i in range(first, first + n):
        yield render(sample_spec(np.random.default_rng([seed, 7, i]), frames, height, width, **kwargs))


def restyle(spec: world.ClipSpec, shape: str, colour: str, background: str, bg_colour: str) -> world.ClipSpec:
    """The same centre path, zoom and camera with another look: what a perfect motion transfer would draw.

    The radius follows the new shape's ``SHAPE_SCALE`` so that shapes look equally big, as in ``_build``.
    """
    if not compatible(colour, bg_colour):
        raise ValueError(f"a {colour} object does not stand out on a {bg_colour} background")
    old = spec.objects[0]
    k = world.SHAPE_SCALE[shape] / world.SHAPE_SCALE[old.shape]
    params = {key: (v * k if key[0] == "r" and key[1:].isdigit() else v) for key, v in old.params.items()}
    obj = world.ObjectSpec(shape, colour, old.size, old.motion, old.speed, old.radius * k, params)
    bg = {key: v for key, v in spec.bg_params.items() if key[:2] in ("cx", "cy") or key == "family"}
    side = float(min(spec.height, spec.width))
    bg.update(world_specs._sample_bg_params(np.random.default_rng(spec.seed), background, side, "static"))
    return world.ClipSpec([obj], background, bg_colour, bg, spec.camera, 0.0, spec.frames, spec.height, spec.width,
                          spec.seed)


def parse(prompt: str) -> dict[str, str | None]:
    """shape, colour, background and bg_colour named by a caption-like prompt (None where it names none)."""
    p = world.parse_caption(prompt)
    return {k: p[k] for k in ("shape", "colour", "background", "bg_colour")}
