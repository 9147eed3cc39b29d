"""The motion feature extractor M of MotionMatcher (paper Sec. 3.2-3.3, App. F).

M is the frozen pre-trained UNet (the same module with its LoRA switched off: no second copy of the weights).
Run on a noisy latent video, it returns the attention probabilities of the capture block(s):

- cross-attention maps ``ca``: ``(B, F, H*W, T)``, softmax over the T = 77 text tokens (camera framing, layout);
- temporal self-attention maps ``tsa``: ``(B, H*W, F, F)``, softmax over frames (object movement);

each averaged over heads and over the layers of the block. The forward pass is abandoned right after the last
captured attention layer, so the rest of the UNet never runs for M.

Open choice (docs/method.md), decided here: ``ca`` keeps all 77 token columns, padding included. The softmax the
model computes runs over all 77, so only then does each row sum to one, and both sides of the loss see the
same prompt embedding, so padding columns carry the same meaning on both sides.

Only the captured layers get the explicit-softmax processor below; every other layer keeps SDPA. This module
is the only one that knows which layers are captured.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from .checkpointing import block_of, blocks_before, checkpoint_units, checkpointed
from .models import T2VModel


@dataclass
class MotionFeatures:
    ca: torch.Tensor  # (B, F, H*W, T): cross-attention probabilities, averaged over heads and layers
    tsa: torch.Tensor  # (B, H*W, F, F): temporal self-attention probabilities, averaged over heads and layers
    sizes: tuple[int, ...] = ()  # H*W of each capture block, in order (several blocks concatenate spatially)

    def block(self, i: int = 0) -> MotionFeatures:
        """The maps of the ``i``-th capture block alone."""
        sizes = self.sizes or (self.ca.shape[2],)
        lo = sum(sizes[:i])
        hi = lo + sizes[i]
        return MotionFeatures(self.ca[:, :, lo:hi], self.tsa[:, lo:hi], (sizes[i],))

    def pooled(self, h: int, w: int, k: int) -> MotionFeatures:
        """The maps averaged over ``k x k`` windows of each block's grid (read from ``h x w`` latents); a window
        that overhangs the grid's edge averages what it covers. A mean of distributions is a distribution: every row
        still sums to one. ``k = 1`` returns the maps themselves."""
        if k == 1:
            return self
        sizes = self.sizes or (self.ca.shape[2],)
        ca_parts, tsa_parts = [], []
        for i, hw in enumerate(sizes):
            grid = feature_grid(hw, h, w)
            if grid is None:
                raise ValueError(f"cannot lay {hw} map positions on a grid read from {h} x {w} latents")
            one = self.block(i)
            ca_parts.append(_pool_positions(one.ca, 2, grid, k))
            tsa_parts.append(_pool_positions(one.tsa, 1, grid, k))
        return MotionFeatures(torch.cat(ca_parts, dim=2), torch.cat(tsa_parts, dim=1),
                              tuple(m.shape[2] for m in ca_parts))


def _pool_positions(m: torch.Tensor, axis: int, grid: tuple[int, int], k: int) -> torch.Tensor:
    """``m`` with its positions axis (``rows * cols`` long) averaged over ``k x k`` windows of the grid."""
    x = m.movedim(axis, -1)
    lead = x.shape[:-1]
    x = F.avg_pool2d(x.reshape(-1, 1, *grid), k, ceil_mode=True, count_include_pad=False)
    return x.reshape(*lead, -1).movedim(-1, axis)


def feature_grid(hw: int, h: int, w: int) -> tuple[int, int] | None:
    """The (rows, columns) of a map with ``hw`` positions read from ``h x w`` latents, or None when no whole
    downsampling factor gives ``hw`` (each stride-2 UNet stage rounds up)."""
    s = round(math.sqrt(h * w / max(hw, 1)))
    if s < 1:
        return None
    rows, cols = -(-h // s), -(-w // s)
    return (rows, cols) if rows * cols == hw else None


class _StopForward(Exception):
    """Raised from a forward hook once every captured map is in: ends the UNet pass early."""


class _Store:
    """Collects head-averaged maps while ``active``. Kept off during ordinary denoiser passes."""

    def __init__(self) -> None:
        self.active = False
        self.ca: list[tuple[str, torch.Tensor]] = []  # (block, head-averaged map) in execution order
        self.tsa: list[tuple[str, torch.Tensor]] = []

    def count(self) -> int:
        return len(self.ca) + len(self.tsa)

    def reset(self) -> None:
        self.ca, self.tsa = [], []


class CaptureProcessor:
    """Attention with an explicit softmax in fp32 whose head-averaged probabilities can be recorded.

    Handles the plain attention layers of UNet3D's spatial and temporal transformers (3-D hidden states, no
    group norm); refuses anything else rather than computing it differently from diffusers.
    """

    def __init__(self, store: _Store, kind: str, block: str = "") -> None:
        assert kind in ("ca", "tsa")
        self.store = store
        self.kind = kind
        self.block = block

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **_: object,
    ) -> torch.Tensor:
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise NotImplementedError("CaptureProcessor supports the transformer attentions of UNet3D only")
        residual = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        b, n, _ = q.shape
        heads = attn.heads
        q = q.view(b, n, heads, -1).transpose(1, 2)
        k = k.view(b, k.shape[1], heads, -1).transpose(1, 2)
        v = v.view(b, v.shape[1], heads, -1).transpose(1, 2)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        # The probabilities are the motion features: compute them in fp32 even under autocast, since the two
        # sides of the loss differ by only a few thousandths (docs/method.md, "Precision").
        with torch.autocast(device_type=q.device.type, enabled=False):
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask.float().view(b, -1, n, scores.shape[-1])
            probs = scores.softmax(dim=-1)
        if self.store.active:
            getattr(self.store, self.kind).append((self.block, probs.mean(dim=1)))
        out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(b, n, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def capture_layer_names(model: T2VModel, blocks: tuple[str, ...] | None = None) -> dict[str, tuple[str, str]]:
    """Names of the captured attention modules -> ("ca" or "tsa", block), in execution order.

    Cross-attention: ``attn2`` of each spatial transformer in the block. Temporal self-attention: ``attn1`` and
    ``attn2`` of each temporal transformer (both are self-attention over frames in UNet3D).
    """
    names: dict[str, tuple[str, str]] = {}
    for block in blocks or model.capture_blocks:
        mod = model.unet.get_submodule(block)
        n_layers = len(getattr(mod, "attentions", []) or [])
        if n_layers == 0:
            raise ValueError(f"{block} has no attention layers to capture")
        for i in range(n_layers):
            for j, _ in enumerate(mod.attentions[i].transformer_blocks):
                names[f"{block}.attentions.{i}.transformer_blocks.{j}.attn2"] = ("ca", block)
            for j, _ in enumerate(mod.temp_attentions[i].transformer_blocks):
                names[f"{block}.temp_attentions.{i}.transformer_blocks.{j}.attn1"] = ("tsa", block)
                names[f"{block}.temp_attentions.{i}.transformer_blocks.{j}.attn2"] = ("tsa", block)
    return names


def extractor_path(unet: torch.nn.Module, blocks: tuple[str, ...]) -> list[str]:
    """The UNet modules with weights that the extractor runs through, in order: the stem, then every block up to and
    including the last capture block. Only these need fp32 weights for a precise motion signal."""
    last = max(blocks, key=lambda b: len(blocks_before(unet, b)))
    stem = [n for n in ("conv_in", "time_embedding", "transformer_in") if getattr(unet, n, None) is not None]
    return stem + blocks_before(unet, last) + [block_of(unet, last)]


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions inside the body; the caller's TF32 settings restored after.

    TF32 keeps 10 mantissa bits, the precision docs/method.md measured as burying the motion signal; torch lets cuDNN
    convolutions use it by default on Ampere and later. No effect on the CPU.
    """
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@contextlib.contextmanager
def lora_disabled(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` as the pre-trained model: every PEFT adapter layer bypassed.

    Flips peft's per-layer flag directly instead of ``disable_adapters()``, which also sets
    ``requires_grad=False`` on the LoRA weights and so would silently drop their gradients (STACK.md).
    """
    layers = [m for m in module.modules() if hasattr(m, "_disable_adapters") and hasattr(m, "base_layer")]
    before = [m._disable_adapters for m in layers]
    try:
        for m in layers:
            m._disable_adapters = True
        yield
    finally:
        for m, b in zip(layers, before):
            m._disable_adapters = b


class MotionFeatureExtractor:
    """M: the frozen UNet (LoRA off) read at the capture block(s), stopped right after the last captured layer.

    Installing it replaces the processors of the captured layers only; ``remove()`` restores them. With
    ``checkpointing`` on, a pass that carries gradient recomputes the blocks before the last capture block in
    backward (layer by layer, checkpointing.py); that block itself is never checkpointed, since its forward is
    abandoned half-way.
    """

    def __init__(self, model: T2VModel, blocks: tuple[str, ...] | None = None, checkpointing: bool = False) -> None:
        self.model = model
        self.unet = model.unet
        self.blocks = tuple(blocks or model.capture_blocks)
        self.checkpointing = checkpointing
        self.path = extractor_path(self.unet, self.blocks)
        self.layers = capture_layer_names(model, self.blocks)
        self.store = _Store()
        self._old: dict[str, object] = {}
        self._hooks = []
        for name, (kind, block) in self.layers.items():
            mod = self.unet.get_submodule(name)
            self._old[name] = mod.processor
            mod.set_processor(CaptureProcessor(self.store, kind, block))
            self._hooks.append(mod.register_forward_hook(self._maybe_stop))
        self.expected = len(self.layers)

    def _maybe_stop(self, *_: object) -> None:
        if self.store.active and self.store.count() == self.expected:
            raise _StopForward

    def __enter__(self) -> MotionFeatureExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Give the captured layers their own processors back (also done on leaving a ``with`` block)."""
        for h in self._hooks:
            h.remove()
        for name, proc in self._old.items():
            self.unet.get_submodule(name).set_processor(proc)
        self._hooks, self._old = [], {}

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """The pre-trained UNet at full precision: LoRA off, autocast off, TF32 off (also for recomputations)."""
        with lora_disabled(self.unet), torch.autocast(device_type=self.unet.device.type, enabled=False), no_tf32():
            yield

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, text_emb: torch.Tensor) -> MotionFeatures:
        """Features of ``latents`` ``(B, C, F, h, w)`` at ``timesteps`` ``(B,)`` given text ``(B, T, D)``.

        Runs with autocast and TF32 off, at the dtype of the path's weights (fp32 during training: the extractor
        must resolve differences of a few thousandths); gradients flow to ``latents`` when grad mode is on.
        """
        b, _, f = latents.shape[:3]
        dtype = self.unet.conv_in.weight.dtype
        self.store.reset()
        self.store.active = True
        early = self.path[-1]  # the block whose early exit ends the pass
        try:
            units = checkpoint_units(self.unet, blocks_before(self.unet, early))
            with self._frozen(), checkpointed(self.unet, units, self.checkpointing, recompute_ctx=self._frozen):
                self.unet(latents.to(dtype), timesteps, encoder_hidden_states=text_emb.to(dtype), return_dict=False)
            raise RuntimeError("the UNet finished without reaching every captured layer")  # pragma: no cover
        except _StopForward:
            pass
        finally:
            self.store.active = False
        ca_maps, tsa_maps = [], []
        for blk in self.blocks:  # average over the layers of a block; several blocks concatenate spatially
            ca = torch.stack([m for bl, m in self.store.ca if bl == blk]).mean(0)  # (B*F, HW, T)
            tsa = torch.stack([m for bl, m in self.store.tsa if bl == blk]).mean(0)  # (B*HW, F, F)
            ca_maps.append(ca.reshape(b, f, ca.shape[-2], ca.shape[-1]))
            tsa_maps.append(tsa.reshape(b, -1, f, f))
        self.store.reset()
        return MotionFeatures(ca=torch.cat(ca_maps, dim=2), tsa=torch.cat(tsa_maps, dim=1),
                              sizes=tuple(m.shape[2] for m in ca_maps))


@torch.no_grad()
def reference_features(model: T2VModel, z0: torch.Tensor, caption: str | list[str] | torch.Tensor, t: int,
                       blocks: tuple[str, ...] | None = None, noise: torch.Tensor | None = None,
                       seed: int = 0) -> MotionFeatures:
    """M's maps of a clean clip at one noise level: ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps`` (the forward
    process, paper Eq. 1), then the capture block(s) read with the LoRA off.

    ``z0``: latents ``(B, C, F, h, w)``; ``caption``: text, or its embedding ``(B, T, D)``; ``noise``: ``eps``, by
    default drawn from ``seed`` on the CPU (the same maps on any device). The pictures of the app, the diagnosis
    and the retrieval check all read features this way.
    """
    from .ddim import add_noise
    from .models import encode_prompt

    tt = torch.full((z0.shape[0],), int(t), dtype=torch.long)
    eps = noise if noise is not None else torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    z_t = add_noise(model.scheduler, z0.float(), eps.to(z0.device, torch.float32), tt.to(z0.device))
    text = caption if isinstance(caption, torch.Tensor) else encode_prompt(model, caption)
    if text.shape[0] != z0.shape[0]:  # one caption for a batch of clips
        text = text.expand(z0.shape[0], -1, -1)
    with MotionFeatureExtractor(model, blocks) as ext:
        return ext(z_t.to(model.device), tt.to(model.device), text.float())
