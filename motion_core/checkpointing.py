"""Gradient checkpointing for UNet3D, block by block, one layer of a block at a time.

diffusers' ``UNet3DConditionModel`` refuses ``enable_gradient_checkpointing()`` (STACK.md), so modules are wrapped
here: while ``checkpointed(unet, names)`` is active, each named module's ``forward`` runs under
``torch.utils.checkpoint`` (non-reentrant), which keeps only the module's inputs and recomputes its activations
during backward. ``checkpoint_units`` splits each block into its layers (every resnet, temporal convolution,
spatial and temporal transformer): with whole blocks the largest recomputation (the three layers of the
320-channel block at full resolution) set the peak, about 0.34 MB per latent position on Zeroscope
(docs/performance.md). The recomputation calls every attention processor of the block again, the motion extractor's
capture processors included, so those store maps only while their store is active (attention.py).

    with checkpointed(model.unet, checkpoint_units(model.unet, unet_blocks(model.unet))):
        eps = model.unet(z_t, t, encoder_hidden_states=text).sample
    loss(eps).backward()

Nothing is wrapped while grad mode is off: a pass without a graph has nothing to save.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def unet_blocks(unet: torch.nn.Module) -> list[str]:
    """The UNet's blocks in execution order: ``down_blocks.i``, ``mid_block``, ``up_blocks.i``."""
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


LAYER_LISTS = ("resnets", "temp_convs", "attentions", "temp_attentions")


def checkpoint_units(unet: torch.nn.Module, blocks: list[str]) -> list[str]:
    """What to checkpoint for a pass through ``blocks``: ``transformer_in`` (the full-resolution temporal
    transformer before the first block) and every layer of each block; a block's down- or upsampler stays as is
    (one convolution)."""
    units = ["transformer_in"] if blocks and getattr(unet, "transformer_in", None) is not None else []
    for b in blocks:
        block = unet.get_submodule(b)
        for lst in LAYER_LISTS:
            units += [f"{b}.{lst}.{i}" for i in range(len(getattr(block, lst, None) or []))]
    return units


def block_of(unet: torch.nn.Module, name: str) -> str:
    """The block that holds ``name`` (a block's name, or a module's inside one)."""
    order = unet_blocks(unet)
    owner = next((b for b in order if name == b or name.startswith(b + ".")), None)
    if owner is None:
        raise ValueError(f"{name!r} is not inside any block of this UNet ({order})")
    return owner


def blocks_before(unet: torch.nn.Module, name: str) -> list[str]:
    """The blocks that run before the block holding ``name``, in execution order."""
    order = unet_blocks(unet)
    return order[:order.index(block_of(unet, name))]


def _wrap(forward: Callable[..., Any], recompute_ctx: Callable[[], ContextManager[Any]] | None) -> Callable[..., Any]:
    def contexts() -> tuple[ContextManager[Any], ContextManager[Any]]:
        return contextlib.nullcontext(), (recompute_ctx() if recompute_ctx else contextlib.nullcontext())

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        # preserve_rng_state (the default) replays the LoRA dropout masks exactly in the recomputation.
        return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    return run


@contextlib.contextmanager
def checkpointed(unet: torch.nn.Module, names: list[str] | tuple[str, ...], enabled: bool = True,
                 recompute_ctx: Callable[[], ContextManager[Any]] | None = None) -> Iterator[None]:
    """Run the named blocks of ``unet`` under gradient checkpointing inside the ``with`` body.

    The recomputation happens later, in backward, outside the caller's ``with`` statements: ``recompute_ctx``
    makes a context that restores what the forward ran under (torch restores autocast and RNG by itself, but
    not e.g. the LoRA switched off for the frozen extractor, whose recomputation would otherwise differ).
    """
    mods = [unet.get_submodule(n) for n in names] if enabled else []
    try:
        for m in mods:
            m.forward = _wrap(m.forward, recompute_ctx)  # an instance attribute shadows the class's; deleted below
        yield
    finally:
        for m in mods:
            if "forward" in m.__dict__:
                del m.forward


def resolve_checkpointing(setting: str | bool, device: torch.device) -> bool:
    """"auto" = on for CUDA (memory is what limits a GPU run), off on the CPU (time is); "on"/"off" as said."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return device.type == "cuda"
    if setting not in ("on", "off"):
        raise ValueError(f"gradient checkpointing must be auto, on or off, got {setting!r}")
    return setting == "on"
