"""LoRA on the 3D UNet: add it, scale or switch it, save it as ``.safetensors`` and load it back with checks.

File format: diffusers' pipeline LoRA format, so ``TextToVideoSDPipeline.load_lora_weights`` (with a PEFT-capable
UNet) reads our files: peft keys prefixed ``unet.`` (``unet.down_blocks.0...attn1.to_q.lora_A.weight``), the
peft config under the safetensors metadata key ``lora_adapter_metadata`` (``unet.``-prefixed, as diffusers packs
it), plus our own metadata under ``motion_matcher`` (base model, rank, targets, objective, steps, lambdas,
frames, fps, size, caption, version). The resolved run config is written beside the file as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .config import LoraConfig
from .models import T2VModel

ADAPTER = "motion"
META_KEY = "motion_matcher"
DIFFUSERS_META_KEY = "lora_adapter_metadata"


class LoraFileError(ValueError):
    """A LoRA file is unreadable, not ours, or made for another model; the message says which and why."""


def target_modules_regex(cfg: LoraConfig) -> str:
    """A full-match regex over module names: self-attention and feed-forward linears, never text cross-attention.

    Spatial transformers live at ``*.attentions.N``, temporal ones at ``*.temp_attentions.N`` and
    ``transformer_in``; both have ``transformer_blocks.M.{attn1, attn2, ff}``.
    """
    def alt(targets: tuple[str, ...]) -> str:
        parts = []
        for t in targets:
            parts.append(r"ff\.net\.(?:0\.proj|2)" if t == "ff" else rf"{t}\.(?:to_q|to_k|to_v|to_out\.0)")
        return "(?:" + "|".join(parts) + ")"

    where = r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)"
    spatial = rf"{where}\.attentions\.\d+\.transformer_blocks\.\d+\.{alt(cfg.spatial_targets)}"
    tail = r"|transformer_in)" if cfg.include_transformer_in else ")"
    temporal_roots = rf"(?:{where}\.temp_attentions\.\d+" + tail
    temporal = rf"{temporal_roots}\.transformer_blocks\.\d+\.{alt(cfg.temporal_targets)}"
    # the Conv3d inside each of a TemporalConvLayer's four (norm, act[, dropout], conv) stages
    convs = {"temp_convs": rf"{where}\.temp_convs\.\d+\.(?:conv1\.2|conv[234]\.3)",
             "resnets": rf"{where}\.resnets\.\d+\.conv[12]"}
    return rf"^(?:{'|'.join([spatial, temporal] + [convs[c] for c in cfg.conv_targets])})$"


def add_lora(model: T2VModel, cfg: LoraConfig, seed: int = 0) -> list[torch.nn.Parameter]:
    """Inject a fresh LoRA (adapter ``motion``) into the UNet and return its trainable parameters.

    lora_B starts at zero (peft's default), so the adapted model starts equal to the base model. lora_A is
    drawn from a seeded generator so runs repeat exactly.
    """
    remove_lora(model)
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout,
                              target_modules=target_modules_regex(cfg), init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.unet.add_adapter(peft_cfg, adapter_name=ADAPTER)
    params = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    if not params:
        raise RuntimeError("no layer matched the LoRA targets; is this a UNet3DConditionModel?")
    for p in params:
        p.data = p.data.float()  # LoRA weights train in fp32 whatever the base weights are
        p.requires_grad_(True)
    return params


def remove_lora(model: T2VModel) -> None:
    if ADAPTER in getattr(model.unet, "peft_config", {}):
        model.unet.delete_adapters(ADAPTER)


def has_lora(model: T2VModel) -> bool:
    return ADAPTER in getattr(model.unet, "peft_config", {})


def _lora_layers(module: torch.nn.Module) -> list[LoraLayer]:
    return [m for m in module.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def lora_scale(model: T2VModel, scale: float) -> Iterator[None]:
    """Temporarily multiply the LoRA's contribution by ``scale`` (0 keeps it computed but silent)."""
    layers = [m for m in _lora_layers(model.unet) if ADAPTER in m.scaling]
    before = [m.scaling[ADAPTER] for m in layers]
    try:
        for m in layers:
            m.set_scale(ADAPTER, scale)
        yield
    finally:
        for m, b in zip(layers, before):
            m.scaling[ADAPTER] = b


def lora_state_dict(model: T2VModel) -> dict[str, torch.Tensor]:
    """``unet.``-prefixed peft keys, contiguous fp32 tensors on the CPU (what the file stores)."""
    sd = get_peft_model_state_dict(model.unet, adapter_name=ADAPTER)
    return {f"unet.{k}": v.detach().float().cpu().contiguous() for k, v in sd.items()}


def build_metadata(model: T2VModel, cfg: LoraConfig, extra: dict[str, Any]) -> dict[str, Any]:
    meta = {
        "base_model": model.source,
        "base_fingerprint": model.fingerprint(),
        "rank": cfg.rank,
        "alpha": cfg.lora_alpha,
        "targets": target_modules_regex(cfg),
        "version": __version__,
    }
    meta.update(extra)
    return meta


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_lora(
    path: str | os.PathLike,
    model: T2VModel,
    cfg: LoraConfig,
    metadata: dict[str, Any] | None = None,
    run_config: dict[str, Any] | None = None,
) -> Path:
    """Write the LoRA (atomically: a crash never leaves a half file) and, if given, ``config.json`` beside it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA files end in .safetensors, got {path.name}")
    if not has_lora(model):
        raise ValueError("the model has no LoRA to save")
    peft_cfg = model.unet.peft_config[ADAPTER].to_dict()
    diffusers_meta = {f"unet.{k}": (sorted(v) if isinstance(v, set) else v) for k, v in peft_cfg.items()}
    file_meta = {
        "format": "pt",
        DIFFUSERS_META_KEY: json.dumps(diffusers_meta, sort_keys=True, default=str),
        META_KEY: json.dumps(build_metadata(model, cfg, metadata or {}), sort_keys=True),
    }
    state = lora_state_dict(model)
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata=file_meta))
    if run_config is not None:
        cfg_path = path.with_name("config.json")
        _atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(json.dumps(run_config, indent=2)))
    return path


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a LoRA file's tensors and our metadata, refusing anything that is not one of our LoRA files."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a damaged header
        raise LoraFileError(f"{path.name} is not a readable .safetensors file ({err})") from err
    if META_KEY not in raw_meta:
        raise LoraFileError(f"{path.name} has no MotionMatcher metadata: it was not made by this tool")
    try:
        meta = json.loads(raw_meta[META_KEY])
    except json.JSONDecodeError as err:
        raise LoraFileError(f"{path.name}: its metadata is damaged ({err})") from err
    if not tensors or not all(k.startswith("unet.") and ".lora_" in k for k in tensors):
        raise LoraFileError(f"{path.name} holds no UNet LoRA weights in diffusers' format")
    return tensors, meta


def load_lora(path: str | os.PathLike, model: T2VModel, strict_model: bool = True) -> dict[str, Any]:
    """Load one of our LoRA files into ``model`` (replacing any LoRA there) and return its metadata.

    Refused with a ``LoraFileError`` saying why: a file made for another base model (architecture fingerprint
    differs), a rank that does not match its tensors, or tensors that do not fit this UNet's layers.
    """
    tensors, meta = read_lora(path)
    name = Path(path).name
    fp = model.fingerprint()
    theirs = meta.get("base_fingerprint", "")
    if strict_model and theirs.split("|")[-1] != fp.split("|")[-1]:
        raise LoraFileError(
            f"{name} was trained for base model {meta.get('base_model')!r} ({theirs}); the loaded model is "
            f"{model.source!r} ({fp}). Load the model it was made for."
        )
    rank = int(meta.get("rank", 0))
    ranks = {v.shape[0] for k, v in tensors.items() if ".lora_A." in k}
    if ranks != {rank}:
        raise LoraFileError(f"{name}: metadata says rank {rank} but its tensors have rank(s) {sorted(ranks)}")
    lcfg = LoraConfig(rank=rank, alpha=float(meta.get("alpha", rank)), dropout=0.0)
    remove_lora(model)
    peft_cfg = PeftLoraConfig(r=rank, lora_alpha=lcfg.lora_alpha, lora_dropout=0.0,
                              target_modules=meta.get("targets") or target_modules_regex(lcfg))
    model.unet.add_adapter(peft_cfg, adapter_name=ADAPTER)
    expected = set(get_peft_model_state_dict(model.unet, adapter_name=ADAPTER))
    given = {k.removeprefix("unet.") for k in tensors}
    if expected != given:
        remove_lora(model)
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise LoraFileError(
            f"{name} does not fit this UNet: {len(missing)} LoRA tensor(s) missing (e.g. {missing[:2]}), "
            f"{len(extra)} unexpected (e.g. {extra[:2]}). It was made for another architecture."
        )
    sd = {k.removeprefix("unet."): v for k, v in tensors.items()}
    for k, v in sd.items():
        base, _, leaf = k.rpartition(".")
        want = model.unet.get_parameter(f"{base}.{ADAPTER}.{leaf}")
        if want.shape != v.shape:
            remove_lora(model)
            raise LoraFileError(f"{name}: tensor {k} has shape {tuple(v.shape)}, this UNet needs {tuple(want.shape)}")
    set_peft_model_state_dict(model.unet, sd, adapter_name=ADAPTER)
    for p in model.unet.parameters():
        p.requires_grad_(False)
    return meta
