"""Procedural shapes world (``world``) and a detector/tracker for its objects (``detector``)."""

from motion_core.shapes.detector import Detection, Track, classify_shape, detect_objects, dominant_colour, track
from motion_core.shapes.world import (
    BACKGROUNDS,
    BG_COLOURS,
    COLOURS,
    MOTIONS,
    SHAPES,
    VOCABULARY,
    Clip,
    ClipSpec,
    ObjectSpec,
    caption,
    generate_dataset,
    make_spec,
    parse_caption,
    render,
    sample_spec,
)

__all__ = [
    "BACKGROUNDS",
    "BG_COLOURS",
    "COLOURS",
    "MOTIONS",
    "SHAPES",
    "VOCABULARY",
    "Clip",
    "ClipSpec",
    "Detection",
    "ObjectSpec",
    "Track",
    "caption",
    "classify_shape",
    "detect_objects",
    "dominant_colour",
    "generate_dataset",
    "make_spec",
    "parse_caption",
    "render",
    "sample_spec",
    "track",
]
