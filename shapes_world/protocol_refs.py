"""What the evaluation protocol evaluates: the variants (objectives and ablations), protocol files, references.

Part of ``shapes_world/protocol.py`` (the entry point and its documentation); results and reports are in
``protocol_report.py``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------------------------------------------

BASE = "base"  # the pre-trained model without a LoRA, sampled from the same inverted noise and seeds
# The prompt's scene rendered by the shapes world with the reference's exact motion: what a perfect transfer
# scores. It gives each metric its floor (LK tracks over a textured background are not noise-free).
ORACLE = "oracle"
# Variant -> LossConfig overrides. The ablations zero one lambda, as the paper's "without CA / TSA" rows do.
VARIANTS: dict[str, dict[str, Any]] = {
    "motion": {"objective": "motion"},
    "ddpm": {"objective": "ddpm"},
    "frame-diff": {"objective": "frame-diff"},
    "residual": {"objective": "residual"},
    "motion-no-ca": {"objective": "motion", "lambda_ca": 0.0},
    "motion-no-tsa": {"objective": "motion", "lambda_tsa": 0.0},
}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # reference names become folder names


class ProtocolError(ValueError):
    """A protocol file, variant list or output folder is unusable; the message says what and where."""


def parse_variants(text: str) -> list[str]:
    """``"motion,ddpm"`` -> ``["motion", "ddpm"]``; unknown or repeated names are refused."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ProtocolError(f"no variants given; choose from {', '.join(VARIANTS)}")
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise ProtocolError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ProtocolError(f"a variant is listed twice in {text!r}")
    return names


def variant_loss(name: str) -> Any:
    """The ``LossConfig`` a variant trains with (paper defaults otherwise)."""
    from motion_core.config import LossConfig

    return LossConfig.from_dict(VARIANTS[name])


# ---------------------------------------------------------------------------------------------------------------
# protocol files
# ---------------------------------------------------------------------------------------------------------------

SPEC_REQUIRED = ("shape", "colour", "motion")
SPEC_OPTIONAL = ("background", "bg_colour", "size", "speed", "seed")
ENTRY_KEYS = {"reference", "caption", "prompts", "name"}


@dataclass
class Reference:
    """One reference video of the protocol and the prompts to sample for it."""

    name: str
    caption: str
    prompts: list[str]
    spec: dict[str, Any] | None = None  # shapes-world spec (ground truth available)
    path: str | None = None  # a video file

    def definition(self) -> dict[str, Any]:
        """What identifies the reference; stored beside its results so a re-run cannot mix two definitions."""
        return {"name": self.name, "caption": self.caption, "spec": self.spec, "path": self.path}


# Six references with distinct motions (a zigzag, an orbit, a zoom, a camera pan, a straight line, a bounce).
# Each prompt changes shape, colour and background, as the paper's prompts change the subject and the scene.
# Pans use a textured background so the camera motion is visible; every colour is compatible with its background.
SHAPES6: list[dict[str, Any]] = [
    {"name": "zigzag", "reference": {"shape": "circle", "colour": "red", "background": "plain", "bg_colour": "grey",
                                     "motion": "zigzag_right", "seed": 1},
     "prompts": ["a blue star on a dotted white background", "a yellow square on a striped black background",
                 "a green triangle on a plain brown background"]},
    {"name": "orbit", "reference": {"shape": "square", "colour": "green", "background": "gradient",
                                    "bg_colour": "blue", "motion": "orbit_ccw", "seed": 2},
     "prompts": ["a red cross on a plain grey background", "a purple circle on a checkered white background",
                 "an orange star on a mottled dark green background"]},
    {"name": "zoom", "reference": {"shape": "star", "colour": "yellow", "background": "plain", "bg_colour": "black",
                                   "motion": "zoom_in", "seed": 3},
     "prompts": ["a cyan circle on a striped grey background", "a red triangle on a plain white background",
                 "a blue square on a dotted brown background"]},
    {"name": "pan", "reference": {"shape": "triangle", "colour": "blue", "background": "striped",
                                  "bg_colour": "white", "motion": "pan_left", "seed": 4},
     "prompts": ["a yellow circle on a checkered dark green background", "a white star on a dotted grey background",
                 "a red square on a mottled blue background"]},
    {"name": "line", "reference": {"shape": "cross", "colour": "orange", "background": "dotted", "bg_colour": "grey",
                                   "motion": "down_right", "seed": 5},
     "prompts": ["a green circle on a plain black background", "a blue triangle on a gradient white background",
                 "a purple star on a striped brown background"]},
    {"name": "bounce", "reference": {"shape": "triangle", "colour": "cyan", "background": "checkered",
                                     "bg_colour": "brown", "motion": "bounce", "seed": 6},
     "prompts": ["a red star on a plain blue background", "a white square on a gradient black background",
                 "a yellow cross on a dotted dark green background"]},
]
BUILTIN = {"shapes6": SHAPES6}


def _check_spec(spec: dict[str, Any], where: str) -> dict[str, Any]:
    from shapes_world import world

    unknown = set(spec) - set(SPEC_REQUIRED) - set(SPEC_OPTIONAL)
    if unknown:
        raise ProtocolError(f"{where}: unknown spec key(s) {sorted(unknown)}; "
                            f"allowed: {list(SPEC_REQUIRED + SPEC_OPTIONAL)}")
    missing = [k for k in SPEC_REQUIRED if k not in spec]
    if missing:
        raise ProtocolError(f"{where}: the spec lacks {missing} (needs {list(SPEC_REQUIRED)})")
    vocab = {"shape": world.SHAPES, "colour": tuple(world.COLOURS), "motion": world.MOTIONS,
             "background": world.BACKGROUNDS, "bg_colour": tuple(world.BG_COLOURS), "size": tuple(world.SIZES),
             "speed": tuple(world.SPEEDS)}
    for key, allowed in vocab.items():
        if key in spec and spec[key] not in allowed:
            raise ProtocolError(f"{where}: {key} {spec[key]!r} is not one of {list(allowed)}")
    if "seed" in spec and (not isinstance(spec["seed"], int) or isinstance(spec["seed"], bool) or spec["seed"] < 0):
        raise ProtocolError(f"{where}: seed must be a non-negative integer, got {spec['seed']!r}")
    full = {"background": "plain", "bg_colour": "grey", "size": "medium", "speed": "medium", "seed": 0, **spec}
    if not world.compatible(full["colour"], full["bg_colour"]):
        raise ProtocolError(f"{where}: a {full['colour']} object does not stand out on a {full['bg_colour']} "
                            "background; pick another colour pair")
    if full["motion"].startswith("rotate") and full["shape"] not in world.ROTATABLE:
        raise ProtocolError(f"{where}: a {full['shape']} cannot visibly rotate; pick another shape or motion")
    return full


def _spec_caption(spec: dict[str, Any]) -> str:
    from shapes_world import world

    return world.caption(world.make_spec(**spec))  # the caption depends on the names only, not on the size


def parse_protocol(data: Any, base_dir: Path | None = None) -> list[Reference]:
    """Validate a decoded protocol (a list of entries) and resolve it into ``Reference`` objects."""
    if isinstance(data, dict) and "references" in data:
        data = data["references"]  # tolerate {"references": [...]} as well as the bare list
    if not isinstance(data, list) or not data:
        raise ProtocolError("a protocol must be a non-empty JSON list of references "
                            '({"reference": ..., "caption": ..., "prompts": [...]})')
    refs: list[Reference] = []
    for i, entry in enumerate(data):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise ProtocolError(f"{where}: expected an object with reference, caption and prompts, got {entry!r}")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise ProtocolError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
        if "reference" not in entry:
            raise ProtocolError(f"{where}: no 'reference' (a video path or a shapes-world spec)")
        prompts = entry.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise ProtocolError(f"{where}: 'prompts' must be a non-empty list of strings")
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ProtocolError(f"{where}: every prompt must be a non-empty string")
        if len(set(prompts)) != len(prompts):
            raise ProtocolError(f"{where}: a prompt is listed twice")
        caption = entry.get("caption")
        if caption is not None and (not isinstance(caption, str) or not caption.strip()):
            raise ProtocolError(f"{where}: 'caption' must be a non-empty string")
        source = entry["reference"]
        if isinstance(source, dict):
            spec = _check_spec(source, where)
            ref = Reference("", caption or _spec_caption(spec), [p.strip() for p in prompts], spec=spec)
            default_name = f"{i:02d}-{spec['motion']}"
        elif isinstance(source, str) and source.strip():
            path = Path(source).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path  # relative paths are relative to the protocol file
            if not path.is_file():
                raise ProtocolError(f"{where}: reference video {str(path)!r} does not exist")
            if caption is None:
                raise ProtocolError(f"{where}: a video reference needs a 'caption' describing it")
            ref = Reference("", caption, [p.strip() for p in prompts], path=str(path.resolve()))
            default_name = f"{i:02d}-{path.stem}"
        else:
            raise ProtocolError(f"{where}: 'reference' must be a video path or a spec object, got {source!r}")
        name = entry.get("name", default_name)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ProtocolError(f"{where}: name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        ref.name = name
        refs.append(ref)
    names = [r.name for r in refs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProtocolError(f"reference name(s) {dupes} are used twice; names must be unique")
    return refs


def load_protocol(source: str) -> list[Reference]:
    """A built-in protocol by name (``shapes6``) or a JSON protocol file."""
    if source in BUILTIN:
        return parse_protocol(json.loads(json.dumps(BUILTIN[source])))  # a deep copy
    path = Path(source).expanduser()
    if not path.is_file():
        raise ProtocolError(f"protocol {source!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ProtocolError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from err
    except UnicodeDecodeError as err:
        raise ProtocolError(f"{path}: not a text file ({err})") from err
    try:
        return parse_protocol(data, path.parent)
    except ProtocolError as err:
        raise ProtocolError(f"{path}: {err}") from err


# ---------------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PreparedReference:
    """A reference clip at the model's video size, plus its ground truth when it comes from the shapes world."""

    frames: np.ndarray  # (F, H, W, 3) uint8, what the model and the tracker see
    gt_centroids: np.ndarray | None = None  # (F, 2) true centroid (x, y) of the (first) object, frame coordinates
    gt_scales: np.ndarray | None = None  # (F,) equivalent radius sqrt(visible area / pi), the detector's unit
    motion: str = ""


def video_size(model: Any) -> dict[str, Any]:
    """The model's own clip size (its sidecar), else docs/method.md's 16 frames at 8 fps, 384 x 384."""
    from motion_core.config import VideoConfig

    return VideoConfig.for_model(model).to_dict()


def render_spec(spec: dict[str, Any], frames: int, height: int, width: int) -> PreparedReference:
    """Render a shapes-world spec; the ground truth is the first object's true path."""
    from shapes_world import world

    clip = world.render(world.make_spec(**spec, frames=frames, height=height, width=width))
    # The detector measures size as sqrt(area / pi) of the visible mask; the same unit here keeps the two comparable.
    area = clip.masks[0].sum(axis=(1, 2)).astype(np.float64)
    return PreparedReference(clip.frames, clip.centroids[0].copy(), np.sqrt(area / math.pi), clip.motion)


def prepare_reference(ref: Reference, vsize: dict[str, Any]) -> PreparedReference:
    if ref.spec is not None:
        return render_spec(ref.spec, vsize["num_frames"], vsize["height"], vsize["width"])
    from motion_core.config import VideoConfig
    from motion_core.video import read_video, to_uint8

    frames = read_video(ref.path, VideoConfig.from_dict(vsize))
    return PreparedReference(np.asarray(to_uint8(frames)))


def to_frames_u8(frames: Any) -> np.ndarray:
    """(F, 3, H, W) float in [0, 1] (a sample) -> (F, H, W, 3) uint8 (what trackers and the detector read)."""
    from motion_core.video import to_uint8

    return np.asarray(to_uint8(frames))
