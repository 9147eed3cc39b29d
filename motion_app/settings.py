"""A job's settings: the model a choice names, its own defaults, and what the page or a client sent, converted.

One rule everywhere: a setting not given (None, or an empty box) is the model's own (``RunConfig.for_model`` /
``SampleConfig.for_model`` / ``VideoConfig.for_model`` on ``motion_core.models.model_defaults``, read without
loading weights), so the page's presets and the API's defaults agree. What was given is only converted here (a
number from a float, an int or a numeric string); its range is the config's (``validate``), which refuses with a
``ConfigError`` naming the setting and its range. No Gradio here; the library is imported on first use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from motion_core.config import ConfigError, RunConfig, SampleConfig, VideoConfig, check_seed, check_text, resolve_seed

from .hub import HUB_ID_RE


def load_worker() -> Any:
    """``motion_app.worker`` imported on first use: it pulls in torch, diffusers and the library (seconds of
    start-up). Every request path that needs the library imports it after this call: the warm-up thread imports
    ``worker`` at start-up, and a request importing diffusers' lazy modules beside it met them half-imported
    (ImportError "partially initialized module"); importing ``worker`` first makes the request wait for it."""
    from . import worker

    return worker


def load_media() -> Any:
    """``motion_app.media`` (pictures and videos: torch), after ``load_worker``."""
    load_worker()
    from . import media

    return media


def check_source(source: str) -> None:
    """Cheap checks before a job is queued, so a typo fails at once and not after a wait in the queue."""
    load_worker()
    from motion_core.models import DEFAULT_MODEL_DIR, SUBFOLDERS, ModelLoadError

    p = Path(source).expanduser()
    if p.is_dir():
        lacks = [s for s in SUBFOLDERS if not (p / s).is_dir()]
        if lacks:
            raise ModelLoadError(f"{source} is not a text-to-video model folder: it lacks {', '.join(lacks)}.")
        return
    if source == str(DEFAULT_MODEL_DIR):
        raise ModelLoadError(
            f"The embedded model is not installed ({DEFAULT_MODEL_DIR} does not exist yet). Start the app with "
            "--model pointing at a model folder or a Hugging Face id such as cerspense/zeroscope_v2_576w, or set "
            "MOTION_MATCHER_MODEL.")
    if source.startswith(("/", ".", "~")) or not HUB_ID_RE.fullmatch(source):
        raise ModelLoadError(f"There is no model folder {source!r}, and it is not a Hugging Face id (owner/name).")


def missing(value: Any) -> bool:
    """Not given: None, or an empty box."""
    return value is None or (isinstance(value, str) and not value.strip())


def as_number(value: Any, name: str, integer: bool = False) -> float | int | None:
    """A setting as the page or a client sends it (a number, or a numeric string), converted; None when it was
    not given (None or empty). Only the type is checked here: the range is the config's, whose ``validate``
    refuses with a ``ConfigError`` naming the setting and its range (NaN and infinities fail it too)."""
    if missing(value):
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not integer:
        return x
    if not math.isfinite(x) or x != int(x):
        raise ConfigError(f"{name} must be a whole number, got {str(value)[:40]!r}")
    return int(x)


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """What was set: None means "not given" (the model's own value stays)."""
    return {k: v for k, v in values.items() if v is not None}


def video_config(source: str, max_file_mb: float, lora_meta: dict[str, Any] | None = None) -> VideoConfig:
    """How a reference clip is read for this model (``VideoConfig.for_model``: its sidecar's frames, fps and size,
    else the paper's); a LoRA's own recorded clip first when one is given; files up to ``max_file_mb``."""
    load_worker()
    from motion_core.models import model_defaults

    meta = lora_meta or {}
    return VideoConfig.for_model(model_defaults(source), {
        "num_frames": meta.get("frames"), "fps": meta.get("fps"), "height": meta.get("height"),
        "width": meta.get("width"), "max_file_mb": max_file_mb})


def run_defaults(source: str, vcfg: VideoConfig, given: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """A run's settings: ``RunConfig.for_model`` (the method's, then the model's own: its sidecar's train and
    sample sections) at the clip size ``vcfg``, then ``given`` (sections like ``to_dict()``'s)."""
    load_worker()
    from motion_core.models import model_defaults

    return RunConfig.for_model(model_defaults(source), {"video": vcfg.to_dict(), **(given or {})})


def train_config(source: str, caption: str, vcfg: VideoConfig, steps: Any = None, learning_rate: Any = None,
                 rank: Any = None, lambda_ca: Any = None, lambda_tsa: Any = None, seed: Any = None,
                 objective: str | None = None) -> RunConfig:
    """A training run's settings: the model's own, then what was given (seed -1: a random one, drawn now and
    recorded in the run's config)."""
    given = {"train": {"steps": as_number(steps, "steps", integer=True),
                       "learning_rate": as_number(learning_rate, "learning_rate"),
                       "seed": None if missing(seed) else resolve_seed(seed)},
             "lora": {"rank": as_number(rank, "LoRA rank", integer=True)},
             "loss": {"lambda_ca": as_number(lambda_ca, "lambda_ca"),
                      "lambda_tsa": as_number(lambda_tsa, "lambda_tsa"),
                      "objective": None if missing(objective) else str(objective).strip()}}
    cfg = run_defaults(source, vcfg, {sec: _given(v) for sec, v in given.items()})
    cfg.model, cfg.caption = source, caption
    # Checkpoints about every tenth of the run (at most every 50 steps), so a restart or a cancel loses little.
    cfg.train.checkpoint_every = max(1, min(cfg.train.checkpoint_every, cfg.train.steps // 10))
    cfg.validate()
    return cfg


def sample_config(source: str, negative_prompt: str | None = None, beta: Any = None, seed: Any = None,
                  steps: Any = None, guidance: Any = None, lora_strength: Any = None,
                  num_videos: Any = None) -> SampleConfig:
    """A generation's settings: the model's own (``SampleConfig.for_model``: DDIM steps, guidance, LoRA cut-off,
    inversion with or without the LoRA ...), then what was given (seed -1: a random one, drawn when it runs)."""
    load_worker()
    from motion_core.models import model_defaults

    seed_v = check_seed(seed)
    negative = None if missing(negative_prompt) else check_text(negative_prompt, "negative prompt", required=False)
    cfg = SampleConfig.for_model(model_defaults(source), {
        "num_inference_steps": as_number(steps, "steps", integer=True),
        "guidance_scale": as_number(guidance, "guidance"), "beta": as_number(beta, "beta"),
        "lora_scale": as_number(lora_strength, "LoRA strength"),
        "num_videos": as_number(num_videos, "number of videos", integer=True),
        "negative_prompt": negative, "seed": seed_v})
    if seed_v is None and not missing(seed):
        cfg.seed = None  # -1 asks for a random seed, whatever the model's own is
    return cfg
