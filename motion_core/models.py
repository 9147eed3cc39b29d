"""Load a diffusers text-to-video model (Zeroscope layout); a tiny one for tests is in ``motion_core.testing``.

A model folder holds the sub-folders ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler`` as
Zeroscope ships them (``cerspense/zeroscope_v2_576w``). An optional sidecar ``motion_matcher.json`` at the top
of the folder says which UNet blocks the motion feature extractor reads and the video size the model was made
for, so no layer name is hard-coded for a particular model.

This is the only module that knows how weights are found and loaded.

    from motion_core.models import load_model
    model = load_model()                                    # the embedded shapes-world model in assets/
    model = load_model("cerspense/zeroscope_v2_576w", device="cuda", dtype="fp16")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from diffusers.loaders import PeftAdapterMixin
from transformers import CLIPTextModel, CLIPTokenizer

from .locations import ASSETS_DIR, DEFAULT_MODEL_DIR, EXAMPLES_DIR, REPO_ROOT  # noqa: F401 (re-exported)

SIDECAR = "motion_matcher.json"
ZEROSCOPE_ID = "cerspense/zeroscope_v2_576w"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


class UNet3DWithPeft(UNet3DConditionModel, PeftAdapterMixin):
    """UNet3DConditionModel with diffusers' PEFT mixin.

    The upstream class lacks the mixin (diffusers issue #6640), so ``TextToVideoSDPipeline.load_lora_weights``
    fails on it. With the mixin, the pipeline's own loader reads our LoRA files, which keeps them usable
    in users' tools. Weights and config are identical to the upstream class.
    """

    config_name = UNet3DConditionModel.config_name


def vae_factor(vae_config: Any) -> int:
    """Pixels per latent pixel of an AutoencoderKL from its config (the object or its ``config.json`` as a dict):
    each block after the first halves the side."""
    channels = vae_config["block_out_channels"] if isinstance(vae_config, dict) else vae_config.block_out_channels
    return 2 ** (len(channels) - 1)


@dataclass
class T2VModel:
    """The parts of a text-to-video model plus what the motion extractor needs to know about it."""

    unet: UNet3DWithPeft
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    source: str  # hub id or folder, recorded in every LoRA's metadata
    capture_blocks: tuple[str, ...]  # e.g. ("down_blocks.2",) for Zeroscope
    video_defaults: dict[str, Any] = field(default_factory=dict)  # num_frames, fps, height, width
    weight_dtype: torch.dtype = torch.float32
    sample_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. fewer DDIM steps for a small CPU model
    train_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. Adam eps (read by RunConfig.for_model)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def vae_scale(self) -> int:
        return vae_factor(self.vae.config)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def name(self) -> str:
        """What records and messages call this model: its hub id or its folder's name, never a server path."""
        return model_name(self.source)

    def fingerprint(self) -> str:
        """A short stable id of the model, used in cache keys and to refuse LoRAs made for another model."""
        cfg = self.unet.config
        shape = f"{tuple(cfg.block_out_channels)}-{cfg.layers_per_block}-{cfg.cross_attention_dim}-{cfg.in_channels}"
        return f"{self.name}|{shape}"


def model_name(source: str | os.PathLike) -> str:
    """A hub id as it is; a local folder by its name only (a LoRA's records travel; the server's paths must not)."""
    source = str(source)
    return Path(source).name if os.path.isdir(source) or os.path.isabs(source) else source


# Zeroscope v2 576w's UNet3D (STACK.md): enough to build the architecture with random weights, no download.
ZEROSCOPE_UNET_CONFIG: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    "cross_attention_dim": 1024, "attention_head_dim": 64, "norm_num_groups": 32,
}


# The release's training and inversion choices (docs/method.md), for Zeroscope-architecture models, which ship no
# sidecar: Adam eps 1e-8 (MotionDirector's config) and DDIM inversion with the LoRA on.
ZEROSCOPE_DEFAULTS: dict[str, dict[str, Any]] = {"train": {"adam_eps": 1e-8}, "sample": {"invert_with_lora": True}}


def is_zeroscope_architecture(unet_config: Any) -> bool:
    """Zeroscope v1/v2 and ModelScope T2V share this UNet (STACK.md)."""
    return (tuple(getattr(unet_config, "block_out_channels", ())) == ZEROSCOPE_UNET_CONFIG["block_out_channels"]
            and getattr(unet_config, "layers_per_block", None) == 2
            and getattr(unet_config, "cross_attention_dim", None) == 1024)


def builtin_sidecar(unet_config: Any) -> dict[str, Any]:
    """Sidecar sections for a model that has none: the release's values for Zeroscope's architecture, else none."""
    return {k: dict(v) for k, v in ZEROSCOPE_DEFAULTS.items()} if is_zeroscope_architecture(unet_config) else {}


def zeroscope_scheduler() -> DDIMScheduler:
    """Zeroscope's DDIM schedule: scaled-linear betas 0.00085 -> 0.012, epsilon prediction (STACK.md)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def zeroscope_architecture(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> T2VModel:
    """Zeroscope's UNet3D from its config with random weights, and its scheduler (no VAE, no text encoder).

    For speed and memory measurements only (benchmarks, preflight): the outputs mean nothing.
    """
    unet = UNet3DWithPeft(**ZEROSCOPE_UNET_CONFIG).to(device, dtype)
    unet.eval().requires_grad_(False)
    return T2VModel(unet, None, None, None, zeroscope_scheduler(), "zeroscope-config",  # type: ignore[arg-type]
                    ("down_blocks.2",), {"num_frames": 16, "fps": 8.0, "height": 384, "width": 384}, dtype,
                    dict(ZEROSCOPE_DEFAULTS["sample"]), dict(ZEROSCOPE_DEFAULTS["train"]))


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was asked for but no GPU is visible to torch; use --device cpu.")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # Half weights only on a GPU: CPU matmuls in fp16 are slow and bf16 costs precision for no speed here.
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16")
    return table[dtype]


def default_capture_blocks(unet: UNet3DConditionModel) -> tuple[str, ...]:
    """``down_blocks.2`` where it exists (Zeroscope, docs/method.md), else the deepest down block with attention."""
    with_attn = [i for i, b in enumerate(unet.down_blocks) if getattr(b, "has_cross_attention", False)]
    if not with_attn:
        raise ModelLoadError("this UNet has no cross-attention down block to read motion features from")
    return (f"down_blocks.{2 if 2 in with_attn else with_attn[-1]}",)


def read_sidecar(folder: Path) -> dict[str, Any]:
    path = folder / SIDECAR
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_source(source: str | os.PathLike | None) -> str:
    """The model a source names: ``None``, "" or "default" is the embedded model (or ``$MOTION_MATCHER_MODEL``)."""
    if source is None or str(source).strip() in ("", "default"):
        return os.environ.get("MOTION_MATCHER_MODEL") or str(DEFAULT_MODEL_DIR)
    return str(source).strip()


@dataclass(frozen=True)
class ModelDefaults:
    """A model's own settings without its weights: what ``RunConfig.for_model`` (and ``VideoConfig.for_model``,
    ``SampleConfig.for_model``) read from a loaded ``T2VModel`` too. For pages and checks that must not wait for
    a model to load."""

    video_defaults: dict[str, Any] = field(default_factory=dict)
    sample_defaults: dict[str, Any] = field(default_factory=dict)
    train_defaults: dict[str, Any] = field(default_factory=dict)


def _own_sections(sidecar: dict[str, Any], unet_config: Any | None) -> dict[str, Any]:
    """The sidecar with the built-in sections (Zeroscope's) under it: per section, what the sidecar says wins."""
    side = dict(sidecar)
    for k, v in (builtin_sidecar(unet_config) if unet_config is not None else {}).items():
        side.setdefault(k, v)
    return side


def model_defaults(source: str | os.PathLike | None = None) -> ModelDefaults:
    """The defaults ``load_model(source)`` would give, read from the folder's sidecar and ``unet/config.json`` (or,
    for a hub id, from the cached snapshot's UNet config when there is one; else the hub id of Zeroscope itself
    is recognised by name). Nothing is downloaded and no weight is read."""
    source = resolve_source(source)
    folder = Path(source).expanduser()
    sidecar: dict[str, Any] = {}
    unet_cfg: dict[str, Any] | None = None
    if folder.is_dir():
        sidecar = read_sidecar(folder)
        cfg_path = folder / "unet" / "config.json"
        unet_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    elif "/" in source and not source.startswith((".", "/", "~")):
        try:
            from huggingface_hub import hf_hub_download

            unet_cfg = json.loads(Path(hf_hub_download(source, "config.json", subfolder="unet",
                                                       local_files_only=True)).read_text())
        except Exception:  # not cached: only Zeroscope's own id is known without its files
            unet_cfg = dict(ZEROSCOPE_UNET_CONFIG) if source == ZEROSCOPE_ID else None
    side = _own_sections(sidecar, SimpleNamespace(**unet_cfg) if isinstance(unet_cfg, dict) else None)
    return ModelDefaults(dict(side.get("video", {})), dict(side.get("sample", {})), dict(side.get("train", {})))


def _missing_weights_message(source: str, err: Exception) -> str:
    return (
        f"Could not load the text-to-video model {source!r}: {err}\n"
        "No weights were found locally and this machine cannot download them. Either\n"
        f"  - download it on a machine with internet access (`huggingface-cli download {source}`) and copy the\n"
        "    Hugging Face cache (~/.cache/huggingface) here, or point --model at the downloaded folder, or\n"
        "  - use the embedded shapes-world model (leave --model out)."
    )


def load_model(
    source: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    local_files_only: bool | None = None,
) -> T2VModel:
    """Load a text-to-video model from a local folder or a hub id (``None``/"default": the embedded model).

    The UNet's weights are stored in ``dtype``; the VAE and text encoder too. Training and sampling decide
    their own compute precision on top of this (see ``train.py``).
    """
    source = resolve_source(source)
    dev = resolve_device(device)
    wdtype = resolve_dtype(dtype, dev)
    folder = Path(source).expanduser()
    if folder.is_dir():
        missing = [s for s in SUBFOLDERS if not (folder / s).is_dir()]
        if missing:
            raise ModelLoadError(
                f"{folder} is not a text-to-video model folder: it lacks the sub-folder(s) {missing} "
                f"(expected {list(SUBFOLDERS)}, the layout Zeroscope ships)."
            )
        root: str = str(folder)
        sidecar = read_sidecar(folder)
    elif source == str(DEFAULT_MODEL_DIR) or "/" not in source or source.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"model folder {source!r} does not exist. Give a folder with unet/, vae/, text_encoder/, "
            f"tokenizer/ and scheduler/ sub-folders, or a Hugging Face hub id such as {ZEROSCOPE_ID}."
        )
    else:
        root = source
        sidecar = {}
        if local_files_only is None:
            # Offline first: a cached snapshot loads without touching the network.
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    kw: dict[str, Any] = {"local_files_only": bool(local_files_only)} if not folder.is_dir() else {}
    try:
        unet = UNet3DWithPeft.from_pretrained(root, subfolder="unet", torch_dtype=wdtype, **kw)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=wdtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=wdtype, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **kw)
        scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler", **kw)
    except (OSError, ValueError) as err:
        raise ModelLoadError(_missing_weights_message(source, err)) from err
    if not isinstance(scheduler, DDIMScheduler):  # a folder may name another scheduler class; we need DDIM maths
        scheduler = DDIMScheduler.from_config(scheduler.config)
    unet.to(dev).eval().requires_grad_(False)
    _maybe_xformers(unet, dev)
    vae.to(dev).eval().requires_grad_(False)
    text_encoder.to(dev).eval().requires_grad_(False)
    blocks = tuple(sidecar.get("capture_blocks") or default_capture_blocks(unet))
    for b in blocks:
        try:
            unet.get_submodule(b)
        except AttributeError as err:
            raise ModelLoadError(f"{SIDECAR} names capture block {b!r}, which this UNet does not have") from err
    sidecar = _own_sections(sidecar, unet.config)
    return T2VModel(unet, vae, text_encoder, tokenizer, scheduler, source, blocks,
                    dict(sidecar.get("video", {})), wdtype, dict(sidecar.get("sample", {})),
                    dict(sidecar.get("train", {})))


def _maybe_xformers(unet: UNet3DConditionModel, dev: torch.device) -> None:
    """Use xformers on CUDA when it is importable (optional; SDPA is as good). Never required, never on the CPU.

    It replaces every attention processor, so it must run before the motion extractor installs its own.
    """
    if dev.type != "cuda" or os.environ.get("MOTION_MATCHER_NO_XFORMERS"):
        return
    try:
        import xformers  # noqa: F401

        unet.enable_xformers_memory_efficient_attention()
    except Exception:  # noqa: BLE001 - any failure (missing wheel, wrong torch build) means: keep SDPA
        pass


# What Zeroscope's model_index.json names: with it, diffusers' own loaders (``DiffusionPipeline.from_pretrained``,
# ``TextToVideoSDPipeline.from_pretrained``) read our folders as they read the hub's.
PIPELINE_COMPONENTS: dict[str, list[str]] = {
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_pipeline_index(folder: str | os.PathLike) -> Path:
    """Write ``model_index.json`` and name the UNet's class as the stock one, so diffusers' tools load the folder.

    ``save_pretrained`` records the saving class (our ``UNet3DWithPeft``) in ``unet/config.json``; a stock
    diffusers reader has no such class, and the weights are a plain ``UNet3DConditionModel``'s.
    """
    folder = Path(folder)
    cfg_path = folder / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("_class_name") != "UNet3DConditionModel":
        cfg["_class_name"] = "UNet3DConditionModel"
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    index = {"_class_name": "TextToVideoSDPipeline", "_diffusers_version": diffusers.__version__,
             **PIPELINE_COMPONENTS}
    path = folder / "model_index.json"
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


def save_model(model: T2VModel, folder: str | os.PathLike, extra_sidecar: dict[str, Any] | None = None) -> Path:
    """Write the model in Zeroscope's folder layout plus the sidecar, so ``load_model(folder)`` reads it back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    model.text_encoder.save_pretrained(folder / "text_encoder")
    model.tokenizer.save_pretrained(folder / "tokenizer")
    model.scheduler.save_pretrained(folder / "scheduler")
    write_pipeline_index(folder)
    side = {"capture_blocks": list(model.capture_blocks), "video": model.video_defaults,
            "sample": model.sample_defaults}
    if model.train_defaults:  # only when the model has its own: a sidecar without it keeps docs/method.md's defaults
        side["train"] = model.train_defaults
    side.update(extra_sidecar or {})
    (folder / SIDECAR).write_text(json.dumps(side, indent=2))
    return folder


# --------------------------------------------------------------------------------------------------------------
# Text and video encoding
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_prompt(model: T2VModel, prompts: str | list[str]) -> torch.Tensor:
    """Text embeddings ``(B, 77, D)`` from the last hidden state, as the Zeroscope pipeline uses them."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tok = model.tokenizer(prompts, padding="max_length", max_length=model.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    return model.text_encoder(tok.input_ids.to(model.device))[0]


@torch.no_grad()
def encode_video(model: T2VModel, frames: torch.Tensor, sample: bool = False) -> torch.Tensor:
    """Frames ``(F, 3, H, W)`` in [0, 1] -> scaled latents ``(1, C, F, h, w)`` (the VAE's mean by default)."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (F, 3, H, W), got {tuple(frames.shape)}")
    x = (frames.to(model.device, model.vae.dtype) * 2 - 1)
    dist = model.vae.encode(x).latent_dist
    z = dist.sample() if sample else dist.mean
    z = z * model.vae.config.scaling_factor
    return z.permute(1, 0, 2, 3).unsqueeze(0).float()


@torch.no_grad()
def decode_latents(model: T2VModel, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Latents ``(B, C, F, h, w)`` -> frames ``(B, F, 3, H, W)`` in [0, 1]; decoded a few frames at a time."""
    b, c, f, h, w = latents.shape
    z = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / model.vae.config.scaling_factor
    out = [model.vae.decode(z[i:i + chunk].to(model.vae.dtype)).sample.float() for i in range(0, b * f, chunk)]
    x = torch.cat(out).reshape(b, f, 3, h * model.vae_scale, w * model.vae_scale)
    return ((x + 1) / 2).clamp(0, 1)


# --------------------------------------------------------------------------------------------------------------
# Word tokenizers for small vocabularies (the tiny test model, the embedded model's recipe)
# --------------------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def build_word_tokenizer(words: list[str], max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges spell each word of a small vocabulary as one token.

    Every merge product is also in the vocabulary, so any text tokenises to known ids; unknown words fall
    back to single characters.
    """
    vocab: dict[str, int] = {}
    for t in SPECIAL_TOKENS:
        vocab.setdefault(t, len(vocab))
    words = sorted({w.lower() for w in words if w})
    for ch in sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz0123456789")):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    # BPE applies the lowest-ranked merge present, so one word's merges can split another ("right" merges r+i,
    # which then breaks "triangle" into t|ri|...). Each word is therefore run through the merges made so far and
    # the first two of whatever pieces remain are joined by a new, last-ranked merge until it is one token. A merge
    # appended last never fires inside a word that was already whole: some lower-ranked pair was always there.
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        pieces = _bpe(list(w[:-1]) + [w[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = _bpe(pieces, ranks)
    tok = CLIPTokenizer(vocab=vocab, merges=sorted(ranks, key=ranks.get))
    tok.model_max_length = max_length
    return tok


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merging as CLIP's tokenizer does it: the lowest-ranked adjacent pair, every occurrence, repeat."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:]) if (a, b) in ranks}
        if not pairs:
            break
        best = min(pairs, key=ranks.__getitem__)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols
