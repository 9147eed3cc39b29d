"""The research harness: procedural shapes worlds (``world``, ``paths``), a detector/tracker for their objects
(``detector``), the embedded model's recipe, card and evaluations, the transfer ladder, the evaluation protocol
(``protocol``) and the retrieval check.

It lives in a source checkout only: the wheel ships ``motion_core`` (the library) without it, and the library never
imports it. Run its modules from the repository root, e.g. ``python -m shapes_world.protocol --help``.
"""

from shapes_world.detector import Detection, Track, classify_shape, detect_objects, dominant_colour, track
from shapes_world.world import (
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
