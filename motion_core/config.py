"""Typed configuration: one dataclass per concern, defaults from docs/method.md (MotionMatcher, arXiv 2502.13234).

Every dataclass round-trips through plain dicts (``to_dict`` / ``from_dict``) so the resolved config can be
saved as JSON beside every LoRA and read back by the CLI, the app and the evaluation harness.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Adam's eps for a model whose sidecar does not choose one. Not torch's 1e-8: the motion loss's gradients are
# ~1e-10 per element on the embedded model (2000 x an MSE of attention maps), so eps = 1e-8 would dominate Adam's
# denominator and shrink every step by |g| / eps, tying the real learning rate to the loss's arbitrary scale.
# 1e-12 keeps the step what lr says.
DEFAULT_ADAM_EPS = 1e-12


class ConfigError(ValueError):
    """A setting is out of its sensible range; the message names the setting and the range."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# ----------------------------------------------------------------------------------------------------------------
# Limits on what people hand in. Every entry point (library, CLI, app, API) asks these; none restates them.
# ----------------------------------------------------------------------------------------------------------------

# Seeds: a whole number in [0, SEED_MAX], or RANDOM_SEED (-1) for "draw one" (it is then reported). 2**31 - 1 leaves
# room for the seed + n of a batch below torch's and numpy's own limits (2**63 and 2**32).
SEED_MAX = 2**31 - 1
RANDOM_SEED = -1
# Captions, prompts and negative prompts: the text encoder reads 77 tokens, about 300 characters of English; longer
# text is cut by the tokenizer anyway, so more than this is a mistake (or an attack on the job records).
MAX_PROMPT_CHARS = 500
# Training blur (TrainConfig.blur), standard deviation in pixels: 32 is past blurring any clip to its mean colour, and
# the kernel (6 sigma + 1 taps) stays small.
BLUR_MAX = 32.0
# Upload limit of the app in MB: above 0 (0.5 MB is a valid limit), at most 100 GB.
MAX_UPLOAD_MB = 100_000.0
# A LoRA file: bounds checked before anything else is read, so a hostile header costs nothing. A Zeroscope LoRA has
# 532 tensors and a header of about 90 kB; our own metadata is under 2 kB.
LORA_MAX_HEADER_BYTES = 4 * 2**20
LORA_MAX_TENSORS = 4096
LORA_MAX_METADATA_CHARS = 64 * 1024


def check_seed(value: object, name: str = "seed") -> int | None:
    """A seed as given by a person or a client: None or -1 -> None (a random one), else a whole number in range."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        x = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {str(value)[:40]!r}") from None
    if isinstance(x, float) and (not math.isfinite(x) or x != int(x)):
        raise ConfigError(f"{name} must be a whole number, got {str(value)[:40]!r}")
    x = int(x)
    if x == RANDOM_SEED:
        return None
    _check(0 <= x <= SEED_MAX, f"{name} must be in [0, {SEED_MAX}], or {RANDOM_SEED} for a random one; got {x}")
    return x


def draw_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


def resolve_seed(value: object, name: str = "seed") -> int:
    """``check_seed``, with a random seed drawn for -1 / None (for runs that must record the seed they used)."""
    seed = check_seed(value, name)
    return draw_seed() if seed is None else seed


def check_text(text: object, name: str = "prompt", required: bool = True) -> str:
    """A caption or prompt, stripped; refused when empty (if required) or longer than ``MAX_PROMPT_CHARS``."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ConfigError(f"the {name} must be text, got {type(text).__name__}")
    text = text.strip()
    _check(bool(text) or not required, f"the {name} is empty: describe the video, e.g. 'a red circle on blue'")
    _check(len(text) <= MAX_PROMPT_CHARS,
           f"the {name} is too long ({len(text)} characters; at most {MAX_PROMPT_CHARS}: the text encoder reads 77 "
           "tokens)")
    return text


def check_upload_mb(mb: object) -> float:
    """The app's upload limit in MB (fractions allowed)."""
    try:
        x = float(mb)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"the upload limit must be a number of MB, got {mb!r}") from None
    _check(math.isfinite(x) and 0 < x <= MAX_UPLOAD_MB,
           f"the upload limit must be in (0, {MAX_UPLOAD_MB:g}] MB, got {mb!r}")
    return x


def upload_limit_bytes(mb: object) -> int:
    """The upload limit in bytes (what Gradio's ``max_file_size`` takes): 0.5 MB is 524288 bytes, never 0."""
    return max(1, int(check_upload_mb(mb) * 2**20))


class _Base:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any] | None) -> T:
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            # JSON turns tuples into lists; keep the declared container type.
            if f.name in d and isinstance(d[f.name], list) and "tuple" in str(f.type):
                d[f.name] = tuple(d[f.name])
        obj = cls(**d)
        obj.validate()  # type: ignore[attr-defined]
        return obj

    def validate(self) -> None:  # pragma: no cover - overridden
        pass


@dataclass
class VideoConfig(_Base):
    """How a reference clip is read: resampled in time, centre-cropped and resized."""

    num_frames: int = 16  # paper: 16 frames
    fps: float = 8.0  # paper: sampled at 8 fps
    height: int = 384  # paper: 384 x 384 (latent 48 x 48); multiples of 8
    width: int = 384
    start_sec: float = 0.0  # offset into the source clip
    loop: bool = False  # loop a clip that is too short instead of refusing it
    max_duration_sec: float = 600.0  # refuse sources longer than this (decoding them is a waste)
    max_source_pixels: int = 4096 * 4096  # refuse absurd frame sizes
    max_file_mb: float = 500.0

    @classmethod
    def for_model(cls, model: Any, overrides: dict[str, Any] | None = None) -> VideoConfig:
        """The clip size and rate ``model`` was made for (its sidecar; the paper's 16 x 384 x 384 at 8 fps for a
        model that says nothing), then ``overrides`` (``None`` values: not given). ``model``: a ``T2VModel``,
        ``models.ModelDefaults`` or None (the method's own defaults)."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        return RunConfig.for_model(model, {"video": given}).video

    def validate(self) -> None:
        _check(1 <= self.num_frames <= 128, f"num_frames must be in [1, 128], got {self.num_frames}")
        _check(0.5 <= self.fps <= 120, f"fps must be in [0.5, 120], got {self.fps}")
        for name in ("height", "width"):
            v = getattr(self, name)
            _check(8 <= v <= 2048 and v % 8 == 0, f"{name} must be a multiple of 8 in [8, 2048], got {v}")
        _check(self.start_sec >= 0, f"start_sec must be >= 0, got {self.start_sec}")


@dataclass
class LoraConfig(_Base):
    """LoRA on every self-attention and feed-forward linear of the spatial and temporal transformers."""

    rank: int = 32  # paper: rank 32
    alpha: float | None = None  # None -> alpha = rank (scale 1), which diffusers assumes when no alpha is stored
    dropout: float = 0.1  # release: LoRA dropout 0.1
    # release: attn1 + ff of spatial transformers; attn1, attn2, ff of temporal ones (transformer_in included).
    # Never the text cross-attention (attn2 of the spatial transformers).
    spatial_targets: tuple[str, ...] = ("attn1", "ff")
    temporal_targets: tuple[str, ...] = ("attn1", "attn2", "ff")
    include_transformer_in: bool = True
    # open choice, per model: convolutions too. "temp_convs" (the temporal convolutions, which carry much of a
    # small UNet3D's motion) and "resnets" (the spatial ones). Empty for Zeroscope, as in the paper.
    conv_targets: tuple[str, ...] = ()

    def validate(self) -> None:
        _check(isinstance(self.rank, int) and 1 <= self.rank <= 512, f"LoRA rank must be in [1, 512], got {self.rank}")
        _check(self.alpha is None or (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)
                                      and 0 < self.alpha <= 1e4), f"LoRA alpha must be in (0, 1e4], got {self.alpha}")
        _check(0 <= self.dropout < 1, f"LoRA dropout must be in [0, 1), got {self.dropout}")
        ok = {"attn1", "attn2", "ff"}
        _check(set(self.spatial_targets) <= {"attn1", "ff"}, "spatial targets may be attn1 and ff (not attn2)")
        _check(set(self.temporal_targets) <= ok, f"temporal targets must be among {sorted(ok)}")
        _check(set(self.conv_targets) <= {"temp_convs", "resnets"}, "conv targets may be temp_convs and resnets")
        _check(bool(self.spatial_targets or self.temporal_targets or self.conv_targets),
               "the LoRA must target some layers: name at least one spatial, temporal or conv target")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


OBJECTIVE_NAMES = ("motion", "ddpm", "frame-diff", "residual")


@dataclass
class LossConfig(_Base):
    """The training objective. ``motion`` is MotionMatcher's motion feature matching (paper Eq. 4, 7)."""

    objective: str = "motion"
    lambda_ca: float = 2000.0  # paper: lambda_CA = 2000
    lambda_tsa: float = 2000.0  # paper: lambda_TSA = 2000
    # Timestep range [t_min, t_max). None -> the objective's own default: [500, 1000) for motion
    # (w'_t = 1 only on the noisiest half), [0, 1000) for the pixel-level baselines.
    t_min: int | None = None
    t_max: int | None = None
    stride: int = 1  # open choice: the DDIM map steps t -> t - stride; the paper uses 1, a model may ask for more
    # Capture layers; None -> the model's own choice (its sidecar), "down_blocks.2" for Zeroscope.
    capture_blocks: tuple[str, ...] | None = None
    # Open choice (not in the paper): average the maps over pool x pool windows of the capture grid before the
    # comparison, so the loss sees where the object is and how it moves, not its outline. 1 = the paper's maps.
    pool: int = 1

    def validate(self) -> None:
        _check(self.objective in OBJECTIVE_NAMES,
               f"objective must be one of {OBJECTIVE_NAMES}, got {self.objective!r}")
        _check(0 <= self.lambda_ca <= 1e7 and 0 <= self.lambda_tsa <= 1e7, "lambdas must be in [0, 1e7]")
        _check(self.objective != "motion" or self.lambda_ca + self.lambda_tsa > 0,
               "lambda_ca + lambda_tsa must be > 0 for the motion objective")
        _check(1 <= self.stride <= 999, f"stride must be in [1, 999], got {self.stride}")
        _check(1 <= self.pool <= 64, f"pool must be in [1, 64], got {self.pool}")

    def t_range(self, num_train_timesteps: int = 1000) -> tuple[int, int]:
        lo_default = num_train_timesteps // 2 if self.objective == "motion" else 0
        lo = lo_default if self.t_min is None else self.t_min
        hi = num_train_timesteps if self.t_max is None else self.t_max
        # v_t needs t - stride >= 0; the pixel-level objectives never step, and start at 1 as they always have
        lo = max(lo, self.stride if self.objective == "motion" else 1)
        if not (0 <= lo < hi <= num_train_timesteps):
            raise ConfigError(f"timestep range [{lo}, {hi}) is empty or outside [0, {num_train_timesteps})")
        return lo, hi


def _check_colour_names(names: Any) -> None:
    if names is None:
        return
    _check(isinstance(names, dict) and len(names) <= 16, "recolour_names must map at most 16 context words to tables")
    for key, table in names.items():
        _check(isinstance(key, str) and key == key.strip().lower() and " " not in key,
               f"recolour_names: context {key!r} must be one lower-case word, or '' for any other")
        _check(isinstance(table, dict) and 1 <= len(table) <= 64,
               f"recolour_names[{key!r}] must name 1 to 64 colours")
        for name, rgb in table.items():
            _check(isinstance(name, str) and name == " ".join(name.lower().split()) and 0 < len(name) <= 40,
                   f"recolour_names[{key!r}]: colour name {name!r} must be lower-case words")
            _check(isinstance(rgb, (list, tuple)) and len(rgb) == 3
                   and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb),
                   f"recolour_names[{key!r}][{name!r}] must be three numbers in [0, 255], got {rgb!r}")


@dataclass
class TrainConfig(_Base):
    """The LoRA fine-tuning loop (paper Sec. 3.4, App. F; release settings where the paper is silent)."""

    steps: int = 400  # paper: 400 steps
    learning_rate: float = 5e-4  # paper: 5e-4
    # (t, eps) draws of the one reference per step, batched; paper: 1. A small model may average a few: on the CPU
    # a batch of 4 costs about 2.4 steps of 1 (docs/method.md, section 6).
    batch_size: int = 1
    # Share of draws trained under another caption than the reference's, drawn from caption_pool (the empty one by
    # default); paper: 0. A LoRA trained under one caption may act only under it (docs/method.md, section 6).
    caption_dropout: float = 0.0
    caption_pool: tuple[str, ...] = ("",)
    # Share of draws taken from a recoloured copy of the reference (its RGB channels permuted and / or inverted: the
    # same motion in other colours); paper: 0. A LoRA may tie the motion to the reference's colours
    # (docs/method.md, section 6).
    recolour: float = 0.0
    # Colour names and their RGB, by context word ({"": {"red": [220, 30, 30]}, "background": {...}}): each copy is
    # trained under its caption with the colours renamed (train.recolour_caption), and a copy whose colours have no
    # name is left out. None = every copy under the reference's own caption.
    recolour_names: dict[str, dict[str, tuple[int, ...]]] | None = None
    # Gaussian blur over space (standard deviation in pixels of the clip, 0 = none) of every clip the LoRA trains on,
    # the reference and its recoloured copies; paper: none. A motion LoRA may carry the reference's outline with its
    # path (docs/method.md, section 6).
    blur: float = 0.0
    weight_decay: float = 1e-2  # release: AdamW, weight decay 1e-2, constant learning rate
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # None = the model's own (RunConfig.for_model): Zeroscope gets the release's 1e-8 (the paper's numbers were
    # made with it); a model that says nothing gets DEFAULT_ADAM_EPS.
    adam_eps: float | None = None
    seed: int = 0
    checkpoint_every: int = 50  # release: a checkpoint every 50 steps
    # "fp32" everywhere, or "bf16"/"fp16": the denoiser under autocast while v_t and the feature extractor stay
    # in fp32 (docs/method.md, "Precision"). "auto" = bf16 on CUDA when supported, else fp32.
    precision: str = "auto"
    max_grad_norm: float | None = 1.0
    # Recompute each UNet block's activations in backward instead of keeping them (checkpointing.py): measured
    # on Zeroscope's architecture it cuts a training step's peak memory severalfold (docs/performance.md) for
    # about one more forward pass of time. "auto" = on for CUDA, off on the CPU.
    grad_checkpointing: str = "auto"

    def validate(self) -> None:
        _check(1 <= self.steps <= 100_000, f"steps must be in [1, 100000], got {self.steps}")
        _check(isinstance(self.batch_size, int) and 1 <= self.batch_size <= 16,
               f"batch_size must be in [1, 16], got {self.batch_size}")
        _check(0 <= self.caption_dropout <= 1, f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        _check(0 <= self.recolour <= 1, f"recolour must be in [0, 1], got {self.recolour}")
        _check(0 <= self.blur <= BLUR_MAX, f"blur must be in [0, {BLUR_MAX:g}] pixels, got {self.blur}")
        _check_colour_names(self.recolour_names)
        _check(isinstance(self.caption_pool, (tuple, list)) and 1 <= len(self.caption_pool) <= 256,
               "caption_pool must list 1 to 256 captions")
        for c in self.caption_pool:
            check_text(c, "caption_pool entry", required=False)
        _check(0 < self.learning_rate <= 1.0, f"learning_rate must be in (0, 1], got {self.learning_rate}")
        _check(0 <= self.weight_decay <= 1.0, f"weight_decay must be in [0, 1], got {self.weight_decay}")
        _check(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        _check(isinstance(self.seed, int) and 0 <= self.seed <= SEED_MAX,
               f"seed must be in [0, {SEED_MAX}] (resolve -1 with resolve_seed first), got {self.seed}")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"),
               f"precision must be auto/fp32/bf16/fp16, got {self.precision!r}")
        _check(self.grad_checkpointing in ("auto", "on", "off"),
               f"grad_checkpointing must be auto/on/off, got {self.grad_checkpointing!r}")


@dataclass
class SampleConfig(_Base):
    """DDIM sampling from beta-blended inverted noise (paper App. F; release values)."""

    num_inference_steps: int = 75  # release: 75 DDIM steps (inversion uses as many)
    guidance_scale: float = 12.0  # release: guidance 12
    guidance_rescale: float = 0.0  # release: none; phi of ddim.guide (Lin et al. 2024), a model may set its own
    beta: float = 0.3  # paper's quantitative runs: z_T = sqrt(beta) eps_inv + sqrt(1 - beta) eps
    lora_scale: float = 1.0
    lora_cutoff: int = 500  # release: LoRA on only while t >= 500; 0 = on throughout
    negative_prompt: str = ""
    seed: int | None = None  # None -> a random seed, reported back
    num_videos: int = 1
    # DDIM-invert the reference with the LoRA on (release, as MotionDirector) or with the base model. None = the
    # model's own choice (RunConfig.for_model): on for Zeroscope, off for a model that says nothing.
    invert_with_lora: bool | None = None

    @classmethod
    def for_model(cls, model: Any, overrides: dict[str, Any] | None = None) -> SampleConfig:
        """Sampling settings for ``model``: docs/method.md's, then the model's own (e.g. 25 DDIM steps and guidance
        3 for the embedded CPU model), then ``overrides`` (``None`` values are ignored: "not given")."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        return RunConfig.for_model(model, {"sample": given}).sample

    def validate(self) -> None:
        _check(1 <= self.num_inference_steps <= 1000, f"steps must be in [1, 1000], got {self.num_inference_steps}")
        _check(0 <= self.guidance_scale <= 50, f"guidance must be in [0, 50], got {self.guidance_scale}")
        _check(0 <= self.guidance_rescale <= 1, f"guidance rescale must be in [0, 1], got {self.guidance_rescale}")
        _check(0 <= self.beta <= 1, f"beta must be in [0, 1], got {self.beta}")
        _check(0 <= self.lora_scale <= 4, f"LoRA strength must be in [0, 4], got {self.lora_scale}")
        _check(0 <= self.lora_cutoff <= 1000, f"LoRA cut-off must be in [0, 1000], got {self.lora_cutoff}")
        _check(1 <= self.num_videos <= 16, f"number of videos must be in [1, 16], got {self.num_videos}")
        _check(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed <= SEED_MAX),
               f"seed must be in [0, {SEED_MAX}], or None for a random one; got {self.seed}")
        check_text(self.negative_prompt, "negative prompt", required=False)


@dataclass
class RunConfig(_Base):
    """Everything one training run resolved to; saved as ``config.json`` beside the LoRA."""

    model: str = "default"
    caption: str = ""
    video: VideoConfig = field(default_factory=VideoConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    @classmethod
    def for_model(cls, model: Any, overrides: dict[str, Any] | None = None) -> RunConfig:
        """The one place a model's own defaults enter a run: docs/method.md's defaults, then the model's (its sidecar's
        ``video``, ``train`` and ``sample`` sections, or the built-in ones models.py keeps for Zeroscope), then
        ``overrides`` (a nested dict like ``to_dict()``'s: what the user set, which always wins).

        The sidecar's ``train`` section is flat: each key is a field of TrainConfig, LoraConfig or LossConfig
        (``{"adam_eps": 1e-8, "learning_rate": 5e-4, "rank": 32, "temporal_targets": ["attn1"]}``).
        """
        d = cls().to_dict()
        d["video"].update(getattr(model, "video_defaults", None) or {})
        d["sample"].update(getattr(model, "sample_defaults", None) or {})
        owners = {f.name: sec for sec, c in (("train", TrainConfig), ("lora", LoraConfig), ("loss", LossConfig))
                  for f in dataclasses.fields(c)}
        for k, v in (getattr(model, "train_defaults", None) or {}).items():
            if k not in owners:
                raise ConfigError(f"the model's train defaults name an unknown setting {k!r}; known: {sorted(owners)}")
            d[owners[k]][k] = v
        for sec, v in (overrides or {}).items():
            if isinstance(v, dict):
                d.setdefault(sec, {}).update(v)
            else:
                d[sec] = v
        if d["train"]["adam_eps"] is None:
            d["train"]["adam_eps"] = DEFAULT_ADAM_EPS
        if d["sample"]["invert_with_lora"] is None:
            d["sample"]["invert_with_lora"] = False
        return cls.from_dict(d)

    def fill_from_model(self, model: Any) -> RunConfig:
        """Set every "None = the model's choice" setting from ``for_model(model)``, in place; returns self."""
        own = RunConfig.for_model(model)
        for sec, name in (("train", "adam_eps"), ("sample", "invert_with_lora"), ("loss", "capture_blocks"),
                          ("loss", "t_min"), ("loss", "t_max")):
            if getattr(getattr(self, sec), name) is None:
                setattr(getattr(self, sec), name, getattr(getattr(own, sec), name))
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RunConfig:
        d = dict(d or {})
        parts = {"video": VideoConfig, "lora": LoraConfig, "loss": LossConfig, "train": TrainConfig,
                 "sample": SampleConfig}
        unknown = set(d) - set(parts) - {"model", "caption"}
        if unknown:
            raise ConfigError(f"RunConfig: unknown section(s) {sorted(unknown)}")
        kw: dict[str, Any] = {k: parts[k].from_dict(d.get(k)) for k in parts}
        return cls(model=d.get("model", "default"), caption=d.get("caption", ""), **kw)

    def validate(self) -> None:
        for part in (self.video, self.lora, self.loss, self.train, self.sample):
            part.validate()
        check_text(self.caption, "caption", required=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
