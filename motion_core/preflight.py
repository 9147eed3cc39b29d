"""Predict the peak memory of training and sampling before a run, and say whether a device can hold it.

    pred = predict(model_or_source, frames=16, size=384, device="cuda", precision="auto", grad_checkpointing="auto")
    pred.train_peak_gb, pred.sample_peak_gb, pred.fits, pred.advice

How. A peak is weights + a fixed part + a part that grows with the video: ``bytes = W + a + b * F * h * w`` (F
frames, h x w latent positions) for each setting (weight dtype, autocast, checkpointing; objective; inversion or
guided sampling). ``W`` is counted exactly from the model's parameters at the dtypes the setting gives them. ``a``
and ``b`` come from measuring one step on the CPU at small sizes with torch's allocation records (memtrack.py)
and fitting a line: for Zeroscope's architecture once, stored in ``preflight_zeroscope.json`` (made by
``benchmarks/memory_fit.py``; docs/performance.md has the method and its accuracy on sizes not fitted); for any
other model on the spot, at two small sizes (fast for small models such as the embedded one).

A GPU adds its own: the CUDA context (~0.5 GiB, not in torch's count) and the caching allocator's fragmentation.
``GPU_OVERHEAD_GB`` covers both; the CPU peak is a model of the GPU's, with kernels that differ (docs).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .attention import MotionFeatureExtractor, extractor_path
from .config import LoraConfig, LossConfig
from .memtrack import cpu_peak_bytes

TABLE = Path(__file__).with_name("preflight_zeroscope.json")
GPU_OVERHEAD_GB = 1.0  # CUDA context (~0.5 GiB) + allocator slack; a guess to be replaced by gpu_check.py's numbers
GIB = 2**30


def setting_name(half_weights: bool, amp: bool, ckpt: bool) -> str:
    """Key of a training setting: weights ``fp32``/``half``, denoiser ``amp``/``fp32``, checkpointing on/off."""
    return f"{'half' if half_weights else 'fp32'}w-{'amp' if amp else 'fp32'}-{'ckpt' if ckpt else 'nockpt'}"


def prepare(model: Any, half_weights: bool, amp: bool) -> None:
    """Cast the UNet's frozen weights as ``train_lora`` would for this setting (half: bf16, path in fp32)."""
    from .train import _cast_base

    if not amp:
        _cast_base(model.unet, None, torch.float32)
        return
    _cast_base(model.unet, None, torch.bfloat16 if half_weights else torch.float32)
    _cast_base(model.unet, extractor_path(model.unet, model.capture_blocks), torch.float32)


def measure_train_step(model: Any, objective: str, frames: int, h: int, w: int, amp: bool, ckpt: bool,
                       params: list[torch.nn.Parameter]) -> int:
    """Peak bytes above the start of one training step (loss + backward) at latent size ``frames x h x w``."""
    from .objectives import ObjectiveContext, get_objective

    cross = int(model.unet.config.cross_attention_dim)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, model.latent_channels, frames, h, w, generator=g)
    text = torch.randn(1, 77, cross, generator=g)
    eps = torch.randn(z0.shape, generator=g)
    ex = MotionFeatureExtractor(model, checkpointing=ckpt) if objective == "motion" else None
    ctx = ObjectiveContext(model, LossConfig(objective=objective), ex, torch.bfloat16 if amp else None, g, ckpt)
    try:
        for p in params:
            p.grad = None
        peak, _ = cpu_peak_bytes(lambda: get_objective(objective)(ctx, z0, text, torch.tensor([700]), eps)
                                 .loss.backward())
    finally:
        if ex is not None:
            ex.remove()
        for p in params:
            p.grad = None
    return peak


@torch.no_grad()
def measure_denoise_step(model: Any, batch: int, frames: int, h: int, w: int) -> int:
    """Peak bytes above the start of one UNet evaluation without gradient (inversion: batch 1; guided: 2)."""
    unet = model.unet
    dtype = unet.conv_in.weight.dtype
    x = torch.randn(batch, model.latent_channels, frames, h, w, dtype=dtype)
    text = torch.randn(batch, 77, int(unet.config.cross_attention_dim), dtype=dtype)
    peak, _ = cpu_peak_bytes(lambda: unet(x, torch.tensor([700] * batch), encoder_hidden_states=text))
    return peak


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


@dataclass
class Prediction:
    train_peak_gb: float
    sample_peak_gb: float
    device_gb: float | None  # memory of the device, None when unknown
    setting: str
    frames: int
    size: int
    fits: bool | None
    advice: str

    def to_json(self) -> str:
        return json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()})


# Zeroscope's VAE and text encoder (STACK.md), for counting their weights when nothing is on disk.
ZEROSCOPE_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
ZEROSCOPE_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
}


@dataclass
class _Arch:
    """What a prediction needs to know about a model: its modules' parameter counts (built on the meta device)."""

    source: str
    unet: torch.nn.Module
    vae_params: int
    text_params: int
    capture_blocks: tuple[str, ...]
    zeroscope: bool
    vae_scale: int  # pixels per latent position along a side


@functools.lru_cache(maxsize=8)
def _arch(source: str | None) -> _Arch:
    """Read the model's configs only (no weights); a model whose configs are not on disk is Zeroscope's config."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models import (
        DEFAULT_MODEL_DIR,
        ZEROSCOPE_ID,
        ZEROSCOPE_UNET_CONFIG,
        UNet3DWithPeft,
        default_capture_blocks,
        is_zeroscope_architecture,
        read_sidecar,
        vae_factor,
    )

    src = str(source or DEFAULT_MODEL_DIR)
    if src == "zeroscope-config":
        src = ZEROSCOPE_ID
    try:
        kw: dict[str, Any] = {"local_files_only": True}  # never download: a missing model is predicted by config
        ucfg = UNet3DWithPeft.load_config(src, subfolder="unet", **kw)
        vcfg = AutoencoderKL.load_config(src, subfolder="vae", **kw)
        tcfg = CLIPTextConfig.from_pretrained(src, subfolder="text_encoder", **kw)
        label = src
    except (OSError, ValueError):
        ucfg, vcfg, tcfg = dict(ZEROSCOPE_UNET_CONFIG), dict(ZEROSCOPE_VAE_CONFIG), None
        label = f"zeroscope-config ({src} is not on disk; predicted from Zeroscope's architecture)"
    with torch.device("meta"):
        unet = UNet3DWithPeft.from_config(ucfg)
        vae = AutoencoderKL.from_config(vcfg)
        text = CLIPTextModel(tcfg or CLIPTextConfig(**ZEROSCOPE_TEXT_CONFIG))
    side = read_sidecar(Path(src)) if Path(src).is_dir() else {}
    blocks = tuple(side.get("capture_blocks") or default_capture_blocks(unet))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return _Arch(label, unet, count(vae), count(text), blocks, is_zeroscope_architecture(unet.config),
                 vae_factor(vae.config))


@functools.lru_cache(maxsize=8)
def _lora_params(unet: torch.nn.Module) -> int:
    """Parameters of the default rank-32 LoRA on this UNet (counted on the meta device)."""
    import copy

    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    from .lora_io import target_modules_regex

    cfg = LoraConfig()
    m = inject_adapter_in_model(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha,
                                               target_modules=target_modules_regex(cfg)), copy.deepcopy(unet))
    return sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)


def _fits_for(arch: _Arch, kind: str, setting: str) -> tuple[float, float]:
    """``(a, b)`` of ``kind`` (train-motion, train-ddpm, invert, guided) in ``setting``: Zeroscope's from the table,
    any other model's measured now."""
    if not arch.zeroscope:
        return _fit_on_the_spot(arch.source, kind, setting)
    table = json.loads(TABLE.read_text())["fits"]
    if kind == "train-ddpm" and setting.endswith("-ckpt") and setting not in table.get(kind, {}):
        # With checkpointing the DDPM step never peaked above the motion step (docs/performance.md): where it was
        # not measured itself, the motion fit is its upper bound.
        kind = "train-motion"
    if kind not in table or setting not in table[kind]:
        raise ValueError(f"no measured fit for {kind} / {setting} in {TABLE.name}")
    a, b = table[kind][setting]
    return float(a), float(b)


SPOT_POINTS = ((2, 8), (6, 8), (2, 16))  # (frames, latent side) measured for a model without a stored fit


@functools.lru_cache(maxsize=32)
def _fit_on_the_spot(source: str, kind: str, setting: str) -> tuple[float, float]:
    """Measure ``kind`` at three small sizes on the CPU and fit; meant for small models (the embedded one)."""
    from .models import load_model

    model = load_model(source, device="cpu", dtype="fp32")
    n = sum(p.numel() for p in model.unet.parameters())
    if n > 200_000_000:
        raise ValueError(f"{source} has {n / 1e9:.1f} B UNet parameters: measure it with benchmarks/memory_fit.py")
    half, amp, ckpt = setting.startswith("half"), "-amp-" in setting, setting.endswith("-ckpt")
    pts = []
    if kind.startswith("train-"):
        from .lora_io import add_lora

        params = add_lora(model, LoraConfig())
        prepare(model, half, amp)
        for f, h in SPOT_POINTS:
            pts.append((f * h * h, measure_train_step(model, kind[6:], f, h, h, amp, ckpt, params)))
    else:
        model.unet.to(torch.bfloat16 if half else torch.float32)
        for f, h in SPOT_POINTS:
            pts.append((f * h * h, measure_denoise_step(model, 1 if kind == "invert" else 2, f, h, h)))
    return fit_line(pts)


def device_memory_gb(device: str) -> float | None:
    """Total memory of a CUDA device if one is visible; None otherwise (the caller may state it)."""
    dev = torch.device(device if device not in ("auto", None) else "cuda")
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(dev).total_memory / GIB
    return None


def predict(source: str | None, frames: int = 16, size: int = 384, device: str = "cuda", precision: str = "auto",
            grad_checkpointing: str = "auto", dtype: str = "auto", device_gb: float | None = None,
            objective: str = "motion", advise: bool = True, fit_suffix: str = "", batch: int = 1) -> Prediction:
    """Predicted peak GiB of a training step and of sampling (inversion, guided DDIM) for the model at this size.

    ``batch``: (t, eps) draws per training step (``TrainConfig.batch_size``); a step's activations grow with it.

    ``fit_suffix`` picks another measured variant of the setting (``"-block"``: whole blocks checkpointed, the
    first version; for docs/performance.md's table).
    """
    from .checkpointing import resolve_checkpointing
    from .models import resolve_dtype

    dev = torch.device("cuda" if device in ("auto", None) else device)
    arch = _arch(source)
    wdtype = resolve_dtype(dtype, dev)
    if precision == "auto":  # as resolve_amp, without asking a GPU that may not be here
        amp = dev.type == "cuda"
    else:
        amp = precision != "fp32"
    half = amp and wdtype != torch.float32
    ckpt = resolve_checkpointing(grad_checkpointing, dev)
    setting = setting_name(half, amp, ckpt)
    positions = frames * (size // arch.vae_scale) ** 2
    # Weights as training holds them: UNet fp32, or half with the extractor's path in fp32; VAE, text at load dtype.
    path = extractor_path(arch.unet, arch.capture_blocks)
    n_unet = sum(p.numel() for p in arch.unet.parameters())
    n_path = sum(p.numel() for n in path for p in arch.unet.get_submodule(n).parameters())
    wsize = 2 if wdtype != torch.float32 else 4
    if not half:
        unet_train = n_unet * 4
    else:  # train_lora casts the path to fp32 for the motion objective only
        unet_train = (n_path * 4 + (n_unet - n_path) * 2) if objective == "motion" else n_unet * 2
    others = (arch.vae_params + arch.text_params) * wsize
    lora = _lora_params(arch.unet)
    a, b = _fits_for(arch, f"train-{objective}", setting + (fit_suffix if ckpt else ""))
    train = unet_train + others + lora * 12 + a + b * positions * batch  # LoRA: weights + Adam's two moments (fp32)
    sw = "halfw" if wsize == 2 else "fp32w"
    acts = [fa + fb * positions for fa, fb in (_fits_for(arch, k, sw) for k in ("invert", "guided"))]
    if arch.zeroscope:  # the VAE decodes 8 frames at a time (models.decode_latents)
        fa, fb = _fits_for(arch, "decode", sw)
        acts.append(fa + fb * min(frames, 8) * (size // arch.vae_scale) ** 2)
    sample = n_unet * wsize + others + lora * 4 + max(acts)
    gpu = GPU_OVERHEAD_GB if dev.type == "cuda" else 0.0
    train_gb, sample_gb = train / GIB + gpu, sample / GIB + gpu
    total = device_gb if device_gb is not None else device_memory_gb(str(dev))
    fits = None if total is None else max(train_gb, sample_gb) <= total
    advice = _advice(arch, train_gb, sample_gb, total, frames, size, setting, objective, dev, batch) if advise else ""
    return Prediction(train_gb, sample_gb, total, setting, frames, size, fits, advice)


def _gb(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def _advice(arch: _Arch, train_gb: float, sample_gb: float, total: float | None, frames: int, size: int,
            setting: str, objective: str, dev: torch.device, batch: int = 1) -> str:
    draws = f", {batch} draws a step" if batch > 1 else ""
    head = (f"{arch.source}: training at {frames} frames x {size} x {size} ({setting}{draws}) needs about "
            f"{_gb(train_gb)} GB, sampling about {_gb(sample_gb)} GB")
    if total is None:
        return head + "; the device's memory is unknown (give --memory-gb to check a fit)."
    if max(train_gb, sample_gb) <= total:
        return head + f": fits the device's {total:.0f} GB."
    # Name one that fits: the low-memory setting (half weights, bf16 autocast, checkpointing), fewer frames if need be.
    if arch.zeroscope:
        for f in sorted({frames, *range(frames - 2, 1, -2)}, reverse=True):
            p = predict("zeroscope-config", f, size, str(dev), "bf16", "on", "fp16", total, objective, advise=False,
                        batch=batch)
            if max(p.train_peak_gb, p.sample_peak_gb) <= total:
                return head + (f": does not fit the device's {total:.0f} GB. This fits: --precision bf16 --dtype fp16 "
                               f"--grad-checkpointing on --frames {f} (about {p.train_peak_gb:.1f} GB).")
    return head + f": does not fit the device's {total:.0f} GB; use a smaller size or fewer frames."


class MemoryFitError(ValueError):
    """The run cannot fit the device; the message names a setting that does."""


def check_run(source: str | None, cfg: Any, device_gb: float | None = None) -> Prediction | None:
    """The app's check before it queues a training run: the prediction on this machine's GPU, or None when there
    is nothing to predict (no GPU, or a model without measured fits). Raises ``MemoryFitError`` when the run
    cannot fit; its message says what would."""
    if device_gb is None and not torch.cuda.is_available():
        return None
    try:
        p = predict(source, cfg.video.num_frames, max(cfg.video.height, cfg.video.width), "cuda",
                    cfg.train.precision, cfg.train.grad_checkpointing, "auto", device_gb,
                    "ddpm" if cfg.loss.objective != "motion" else "motion", batch=cfg.train.batch_size)
    except ValueError:
        return None
    if p.fits is False:
        raise MemoryFitError(p.advice)
    return p
