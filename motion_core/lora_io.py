"""LoRA on the 3D UNet: add it, scale or switch it, save it as ``.safetensors`` and load it back with checks.

File format: diffusers' pipeline LoRA format, so ``TextToVideoSDPipeline.load_lora_weights`` (with a PEFT-capable
UNet) reads our files: peft keys prefixed ``unet.`` (``unet.down_blocks.0...attn1.to_q.lora_A.weight``), the
peft config under the safetensors metadata key ``lora_adapter_metadata`` (``unet.``-prefixed, as diffusers packs
it), plus our own metadata under ``motion_matcher`` (base model, rank, targets, objective, steps, lambdas,
frames, fps, size, caption, version). The resolved run config is written beside the file as JSON.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.peft_utils import delete_adapter_layers
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .config import LORA_MAX_HEADER_BYTES, LORA_MAX_METADATA_CHARS, LORA_MAX_TENSORS, ConfigError, LoraConfig
from .models import T2VModel

log = logging.getLogger(__name__)

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
    parts = ([spatial] if cfg.spatial_targets else []) + ([temporal] if cfg.temporal_targets else [])
    parts += [convs[c] for c in cfg.conv_targets]
    return rf"^(?:{'|'.join(parts)})$"


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
        _inject(model, peft_cfg)
    params = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    if not params:
        remove_lora(model)
        raise RuntimeError("no layer matched the LoRA targets; is this a UNet3DConditionModel?")
    for p in params:
        p.data = p.data.float()  # LoRA weights train in fp32 whatever the base weights are
        p.requires_grad_(True)
    return params


def _inject(model: T2VModel, peft_cfg: PeftLoraConfig) -> None:
    """``add_adapter``, undone completely if it fails.

    diffusers marks the UNet as holding a peft config before injecting; an injection that raises left that mark
    without a config, and every later ``add_adapter`` then failed with an AttributeError (issue 18).
    """
    try:
        model.unet.add_adapter(peft_cfg, adapter_name=ADAPTER)
    except Exception:
        remove_lora(model)
        raise


def remove_lora(model: T2VModel) -> None:
    """Take the LoRA out (also half-injected layers of a failed load) and leave the UNet as a plain one."""
    unet = model.unet
    if any(ADAPTER in getattr(m, "lora_A", {}) for m in _lora_layers(unet)):
        delete_adapter_layers(unet, ADAPTER)
    configs = getattr(unet, "peft_config", None)
    if isinstance(configs, dict):
        configs.pop(ADAPTER, None)
    if not getattr(unet, "peft_config", None):
        # Nothing left: diffusers' own flag must say so, or its next add_adapter reads a config that is not there.
        if "peft_config" in vars(unet):
            del unet.peft_config
        unet._hf_peft_config_loaded = False


def has_lora(model: T2VModel) -> bool:
    return ADAPTER in (getattr(model.unet, "peft_config", None) or {})


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
        "base_model": model.name,  # a hub id or a folder's name: the file travels, server paths must not
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


def _header_bytes(path: Path) -> int:
    """The JSON header's length, from the first 8 bytes of a .safetensors file (little-endian u64)."""
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise LoraFileError(f"{path.name} is not a readable .safetensors file (it is {len(head)} bytes long)")
    return struct.unpack("<Q", head)[0]


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a LoRA file's tensors and our metadata, refusing anything that is not one of our LoRA files.

    Everything in the file is untrusted: sizes are bounded before it is parsed (``config.LORA_MAX_*``), every key
    must name a LoRA weight, every tensor must be a finite 2-D float matrix, and the metadata is only ever read as
    plain JSON values (never compiled, evaluated or opened as a path).
    """
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file {path.name} does not exist")
    n = _header_bytes(path)
    if n > path.stat().st_size - 8:
        raise LoraFileError(f"{path.name} is not a readable .safetensors file (its header claims {n} bytes, more "
                            "than the file holds)")
    if n > LORA_MAX_HEADER_BYTES:
        raise LoraFileError(f"{path.name}: its header is {n} bytes, more than a LoRA file needs "
                            f"(at most {LORA_MAX_HEADER_BYTES}); refused unread")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            keys = list(f.keys())
            if len(keys) > LORA_MAX_TENSORS:
                raise LoraFileError(f"{path.name} holds {len(keys)} tensors; a LoRA has at most {LORA_MAX_TENSORS}")
            if META_KEY not in raw_meta:
                raise LoraFileError(f"{path.name} has no MotionMatcher metadata: it was not made by this tool")
            if not keys or not all(_LORA_KEY.fullmatch(k) for k in keys):
                raise LoraFileError(f"{path.name} holds no UNet LoRA weights in diffusers' format "
                                    "(keys like 'unet.<layer>.lora_A.weight')")
            tensors = {k: f.get_tensor(k) for k in keys}
    except LoraFileError:
        raise
    except Exception as err:  # safetensors raises several types for a damaged header
        raise LoraFileError(f"{path.name} is not a readable .safetensors file ({str(err)[:200]})") from err
    raw = raw_meta[META_KEY]
    if len(raw) > LORA_MAX_METADATA_CHARS:
        raise LoraFileError(f"{path.name}: its metadata is {len(raw)} characters; ours is never over "
                            f"{LORA_MAX_METADATA_CHARS}")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise LoraFileError(f"{path.name}: its metadata is damaged ({str(err)[:200]})") from err
    if not isinstance(meta, dict):
        raise LoraFileError(f"{path.name}: its metadata is damaged (a {type(meta).__name__}, not a record)")
    for k, v in tensors.items():
        if v.ndim not in (2, 4, 5) or not v.is_floating_point():  # linear, Conv2d or Conv3d factors
            raise LoraFileError(f"{path.name}: tensor {k} is {v.dtype} {tuple(v.shape)}, not a LoRA matrix")
        if not bool(torch.isfinite(v).all()):
            raise LoraFileError(f"{path.name}: tensor {k} holds NaN or infinite values; the file is refused")
    return tensors, meta


# Our own fixed pattern for tensor names (never one read from a file): "unet.<module>.lora_A.weight" / "lora_B".
_LORA_KEY = re.compile(r"unet\.([A-Za-z0-9_.]{1,300})\.lora_([AB])\.weight")
# Every layer a LoRA of ours may adapt: all self-attention and feed-forward linears (never text cross-attention)
# and, for models whose training defaults ask for them, the temporal and spatial convolutions.
_ALL_TARGETS = LoraConfig(spatial_targets=("attn1", "ff"), temporal_targets=("attn1", "attn2", "ff"),
                          include_transformer_in=True, conv_targets=("temp_convs", "resnets"))


def lora_target_shapes(model: T2VModel) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    """Module name -> (in, out, kernel) of every layer of this UNet that a LoRA file may adapt (kernel () for a
    linear; a convolution's LoRA is a conv of that kernel into r channels, then a 1 x 1 conv out)."""
    allowed = re.compile(target_modules_regex(_ALL_TARGETS))
    out = {}
    for name, m in model.unet.named_modules():
        if allowed.fullmatch(name):
            base = m.get_base_layer() if isinstance(m, LoraLayer) else m
            if isinstance(base, torch.nn.Linear):
                out[name] = (base.in_features, base.out_features, ())
            elif isinstance(base, (torch.nn.Conv2d, torch.nn.Conv3d)):
                out[name] = (base.in_channels, base.out_channels, tuple(base.kernel_size))
    return out


def _text(meta: dict[str, Any], key: str) -> str:
    """A metadata value for a message: plain text, cut short (it may be anything)."""
    return str(meta.get(key, ""))[:200]


def _plan(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: T2VModel, name: str,
          strict_model: bool) -> tuple[PeftLoraConfig, dict[str, torch.Tensor]]:
    """Check the file against this model without touching it; return the adapter config and state to load.

    The targets come from the tensor names, each checked against the UNet's own layers and shapes; the
    metadata's "targets" entry is not used.
    """
    fp = model.fingerprint()
    theirs = _text(meta, "base_fingerprint")
    if strict_model and theirs.split("|")[-1] != fp.split("|")[-1]:
        raise LoraFileError(
            f"{name} was trained for base model {_text(meta, 'base_model')!r} ({theirs!r}); the loaded model is "
            f"{model.name!r} ({fp}). Load the model it was made for."
        )
    rank_raw = meta.get("rank")
    if isinstance(rank_raw, bool) or not isinstance(rank_raw, int):
        raise LoraFileError(f"{name}: its metadata gives no whole-number rank (got {str(rank_raw)[:40]!r})")
    alpha = meta.get("alpha", rank_raw)
    try:
        lcfg = LoraConfig(rank=rank_raw, alpha=alpha if isinstance(alpha, (int, float)) else math.nan, dropout=0.0)
        lcfg.validate()
    except ConfigError as err:
        raise LoraFileError(f"{name}: its metadata is out of range ({err})") from err
    shapes = lora_target_shapes(model)
    found: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, t in tensors.items():
        m = _LORA_KEY.fullmatch(key)
        assert m is not None  # read_lora checked every key
        module, which = m.group(1), m.group(2)
        if module not in shapes:
            unknown.append(key)
        found.setdefault(module, {})[which] = t
    if unknown:
        raise LoraFileError(
            f"{name} does not fit this UNet: {len(unknown)} tensor(s) name no layer a LoRA may adapt here "
            f"(e.g. {unknown[:2]}). It was made for another architecture."
        )
    ranks = set()
    for module, pair in found.items():
        if set(pair) != {"A", "B"}:
            raise LoraFileError(f"{name}: layer {module} has lora_{''.join(pair)} without its partner")
        d_in, d_out, kernel = shapes[module]
        a, b = pair["A"], pair["B"]
        ones = (1,) * len(kernel)
        if (a.ndim != 2 + len(kernel) or b.ndim != a.ndim or a.shape[1] != d_in or b.shape[0] != d_out
                or a.shape[0] != b.shape[1] or tuple(a.shape[2:]) != kernel or tuple(b.shape[2:]) != ones):
            raise LoraFileError(f"{name}: tensors of {module} have shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                                f"this UNet needs {(-1, d_in, *kernel)} and {(d_out, -1, *ones)} (-1: the rank)")
        ranks.add(a.shape[0])
    if ranks != {lcfg.rank}:
        raise LoraFileError(f"{name}: metadata says rank {lcfg.rank} but its tensors have rank(s) {sorted(ranks)}")
    peft_cfg = PeftLoraConfig(r=lcfg.rank, lora_alpha=lcfg.lora_alpha, lora_dropout=0.0,
                              target_modules=sorted(found))
    sd = {k.removeprefix("unet."): v.float() for k, v in tensors.items()}
    return peft_cfg, sd


def base_model_warning(meta: dict[str, Any], model: T2VModel) -> str | None:
    """A LoRA whose layers fit but whose record names another base model loads; this says so, for the user."""
    theirs = _text(meta, "base_fingerprint").split("|")[0]
    if theirs and theirs != model.name:
        return (f"this LoRA was made for the base model {theirs!r}, not {model.name!r}. Its layers have the same "
                "shapes, so it loads, but the motion may not carry over.")
    return None


def _snapshot(model: T2VModel) -> tuple[PeftLoraConfig, dict[str, torch.Tensor], bool] | None:
    if not has_lora(model):
        return None
    trainable = any(p.requires_grad for n, p in model.unet.named_parameters() if "lora_" in n)
    sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model.unet, adapter_name=ADAPTER).items()}
    return copy.deepcopy(model.unet.peft_config[ADAPTER]), sd, trainable


def _restore(model: T2VModel, snap: tuple[PeftLoraConfig, dict[str, torch.Tensor], bool] | None) -> None:
    remove_lora(model)
    if snap is None:
        return
    cfg, sd, trainable = snap
    _inject(model, cfg)
    set_peft_model_state_dict(model.unet, sd, adapter_name=ADAPTER)
    for n, p in model.unet.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
            p.requires_grad_(trainable)


def load_lora(path: str | os.PathLike, model: T2VModel, strict_model: bool = True) -> dict[str, Any]:
    """Load one of our LoRA files into ``model`` (replacing any LoRA there) and return its metadata.

    Refused with a ``LoraFileError`` saying why: a file made for another base model (architecture fingerprint
    differs), a rank that does not match its tensors, tensors that do not fit this UNet's layers, non-finite
    weights, a damaged or oversized file. Everything is checked before the model is touched, and a load that
    fails anyway puts the model back as it was (with its previous LoRA, if it had one). A file whose layers fit
    but whose record names another base model loads with a warning (``base_model_warning``).
    """
    tensors, meta = read_lora(path)
    name = Path(path).name
    peft_cfg, sd = _plan(tensors, meta, model, name, strict_model)
    snap = _snapshot(model)
    try:
        remove_lora(model)
        _inject(model, peft_cfg)
        result = set_peft_model_state_dict(model.unet, sd, adapter_name=ADAPTER)
        if getattr(result, "unexpected_keys", None):
            raise LoraFileError(f"{name}: {len(result.unexpected_keys)} tensor(s) found no layer")
    except Exception as err:
        _restore(model, snap)
        if isinstance(err, LoraFileError):
            raise
        raise LoraFileError(f"{name} could not be loaded ({type(err).__name__}: {str(err)[:300]}); the model is "
                            "unchanged") from err
    for p in model.unet.parameters():
        p.requires_grad_(False)
    warning = base_model_warning(meta, model)
    if warning:
        log.warning("%s: %s", name, warning)
    return meta
