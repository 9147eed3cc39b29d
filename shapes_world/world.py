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

This module is the one to import. The code lives in ``world_specs.py`` (vocabulary, specs, trajectories, spec
sampling, captions) and ``world_render.py`` (shapes, backgrounds, ``render`` and the datasets).
"""

from __future__ import annotations

from shapes_world.world_render import (
    generate_dataset,
    iter_dataset,
    rasterize,
    render,
    shape_polygon,
)
from shapes_world.world_specs import (
    BACKGROUNDS,
    BG_COLOURS,
    COLOURS,
    DIRECTIONS,
    MIN_CONTRAST,
    MOTION_PHRASES,
    MOTIONS,
    OBJECT_RGB,
    PAN_PHRASES,
    PANS,
    ROTATABLE,
    SHAPE_SCALE,
    SHAPES,
    SIZES,
    SPEED_ADVERBS,
    SPEED_MOTIONS,
    SPEEDS,
    SUPERSAMPLE,
    TEXTURED,
    VOCABULARY,
    Clip,
    ClipSpec,
    ObjectSpec,
    background_tones,
    camera_path,
    caption,
    compatible,
    make_spec,
    parse_caption,
    sample_spec,
    trajectory,
)

__all__ = [
    "SHAPES",
    "ROTATABLE",
    "COLOURS",
    "OBJECT_RGB",
    "BG_COLOURS",
    "BACKGROUNDS",
    "TEXTURED",
    "SIZES",
    "SHAPE_SCALE",
    "SPEEDS",
    "DIRECTIONS",
    "PANS",
    "MOTIONS",
    "SPEED_MOTIONS",
    "MOTION_PHRASES",
    "PAN_PHRASES",
    "SPEED_ADVERBS",
    "MIN_CONTRAST",
    "SUPERSAMPLE",
    "VOCABULARY",
    "ObjectSpec",
    "ClipSpec",
    "Clip",
    "background_tones",
    "compatible",
    "trajectory",
    "camera_path",
    "make_spec",
    "sample_spec",
    "caption",
    "parse_caption",
    "shape_polygon",
    "rasterize",
    "render",
    "iter_dataset",
    "generate_dataset",
]
