"""DDIM inversion and sampling loops (paper App. F), owned here rather than borrowed from a deprecated pipeline.

    eps_inv = invert(model, z0, num_steps=75)           # empty prompt, no guidance; LoRA on or off as the model says
    out = sample(model, "a green star on a dotted background", SampleConfig(beta=0.3, seed=1), eps_inv=eps_inv)

Sampling starts from ``z_T = sqrt(beta) eps_inv + sqrt(1 - beta) eps`` and runs eta = 0 DDIM with classifier-free
guidance (rescaled as ``guidance_rescale`` says, ``ddim.guide``) and a negative prompt. The LoRA (if the model
has one) is applied at ``lora_scale`` while ``t >= lora_cutoff`` and switched off below it (the release's choice:
the base model renders the low-noise detail). ``invert_cached`` keeps inverted noise on disk per (video latents,
model, steps), so new seeds and betas do not invert again. Both loops take a ``callback(step, total, t)`` for
progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .attention import lora_disabled
from .config import RunConfig, SampleConfig, check_text
from .ddim import abar_at, blend_noise, ddim_move, guide, inversion_timesteps, sampling_timesteps
from .lora_io import has_lora, lora_scale, lora_state_dict
from .models import T2VModel, decode_latents, encode_prompt

StepCallback = Callable[[int, int, int], None]
X0Hook = Callable[[int, torch.Tensor], None]


@dataclass
class SampleResult:
    latents: torch.Tensor  # (N, C, F, h, w)
    frames: torch.Tensor  # (N, F, 3, H, W) in [0, 1]
    seeds: list[int]


def _model_t(t: int) -> int:
    return max(t, 0)  # the final level (-1) is evaluated as t = 0, as diffusers' inverse scheduler does


def inversion_uses_lora(model: T2VModel, with_lora: bool | None = None) -> bool:
    """Whether inversion runs with the model's LoRA at scale 1: ``with_lora``, else the model's own choice
    (``RunConfig.for_model``: on for Zeroscope as in the release, off for a model that says nothing)."""
    if with_lora is None:
        with_lora = bool(RunConfig.for_model(model).sample.invert_with_lora)
    return with_lora and has_lora(model)


@torch.no_grad()
def invert(model: T2VModel, z0: torch.Tensor, num_steps: int = 75, callback: StepCallback | None = None,
           prompt: str = "", with_lora: bool | None = None) -> torch.Tensor:
    """DDIM-invert latents ``(1, C, F, h, w)`` to ``eps_inv``, empty prompt, no guidance.

    The LoRA (if the model has one) is on at scale 1 or off as ``inversion_uses_lora`` decides.
    """
    if z0.ndim != 5:
        raise ValueError(f"latents must be (B, C, F, h, w), got {tuple(z0.shape)}")
    lora_ctx = lora_scale(model, 1.0) if inversion_uses_lora(model, with_lora) else lora_disabled(model.unet)
    sched = model.scheduler
    text = encode_prompt(model, [prompt] * z0.shape[0])
    x = z0.float().to(model.device)
    steps = inversion_timesteps(sched, num_steps)
    with lora_ctx:
        for i, (t_from, t_to) in enumerate(steps):
            eps = _unet(model, x, _model_t(t_from), text)
            x = ddim_move(x, eps, abar_at(sched, t_from), abar_at(sched, t_to))
            if callback is not None:
                callback(i + 1, len(steps), t_to)
    return x


def _unet(model: T2VModel, x: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
    unet = model.unet
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    return unet(x.to(unet.dtype), tt, encoder_hidden_states=text.to(unet.dtype), return_dict=False)[0].float()


def _cache_key(model: T2VModel, z0: torch.Tensor, num_steps: int, with_lora: bool) -> str:
    h = hashlib.sha256()
    h.update(z0.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(f"{model.fingerprint()}|{model.source}|{num_steps}".encode())
    if with_lora:  # the LoRA's weights change the inversion: they are part of the key (keys without stay as before)
        h.update(b"lora")
        for k, v in sorted(lora_state_dict(model).items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def invert_cached(model: T2VModel, z0: torch.Tensor, num_steps: int, cache_dir: str | os.PathLike | None,
                  callback: StepCallback | None = None, with_lora: bool | None = None) -> torch.Tensor:
    """``invert`` with an on-disk cache keyed by (latents, model, steps, LoRA if used); ``cache_dir=None``: none."""
    with_lora = inversion_uses_lora(model, with_lora)
    if cache_dir is None:
        return invert(model, z0, num_steps, callback, with_lora=with_lora)
    path = Path(cache_dir) / f"inv-{_cache_key(model, z0, num_steps, with_lora)}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location=model.device, weights_only=True)
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    eps_inv = invert(model, z0, num_steps, callback, with_lora=with_lora)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(eps_inv.cpu(), tmp)
    os.replace(tmp, path)
    return eps_inv


def _lora_ctx(model: T2VModel, use_lora: bool, scale: float, t: int, cutoff: int):
    if not has_lora(model):
        return contextlib.nullcontext()
    if not use_lora or scale == 0 or t < cutoff:
        return lora_disabled(model.unet)
    return lora_scale(model, scale)


@torch.no_grad()
def sample(
    model: T2VModel,
    prompt: str,
    cfg: SampleConfig | None = None,
    eps_inv: torch.Tensor | None = None,
    latent_shape: tuple[int, int, int] | None = None,
    use_lora: bool = True,
    callback: StepCallback | None = None,
    decode: bool = True,
    init_noise: torch.Tensor | None = None,
    x0_hook: X0Hook | None = None,
    start_t: int | None = None,
) -> SampleResult:
    """Generate ``cfg.num_videos`` videos for ``prompt``; seeds ``cfg.seed, cfg.seed + 1, ...`` (random if None).

    ``eps_inv`` (from ``invert``) gives the shape and the motion prior; without it ``latent_shape`` = (F, h, w)
    is needed and beta is ignored (pure noise). ``init_noise`` overrides the fresh noise (tests, interop).
    ``x0_hook(t, x0_hat)`` sees each step's clean-latent estimate ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``
    under the guided noise estimate (diagnostics: when does a sample settle its layout?). ``start_t``: run only the
    sampling steps at or below it, from ``init_noise`` taken as the noisy latent at the first of them (diagnostics:
    which levels finish a given clip's shapes?).
    """
    # 1. Check inputs.
    cfg = cfg or SampleConfig()
    cfg.validate()
    prompt = check_text(prompt, "prompt")
    if eps_inv is None and latent_shape is None:
        raise ValueError("give eps_inv (an inverted reference) or latent_shape=(frames, h, w)")
    dev = model.device
    if eps_inv is not None:
        shape = tuple(eps_inv.shape[1:])
        eps_inv = eps_inv.to(dev).float()
    else:
        shape = (model.latent_channels, *latent_shape)
    base_seed = cfg.seed if cfg.seed is not None else random.randrange(2**31 - 1)
    seeds = [base_seed + i for i in range(cfg.num_videos)]

    # 2. Prompt embeddings: [negative, prompt] for classifier-free guidance.
    cond = encode_prompt(model, prompt)
    uncond = encode_prompt(model, cfg.negative_prompt or "")
    steps = sampling_timesteps(model.scheduler, cfg.num_inference_steps)
    if start_t is not None:
        if init_noise is None:
            raise ValueError("start_t needs init_noise: the noisy latent to start from")
        steps = [(t, t_prev) for t, t_prev in steps if t <= start_t]
    outs = []
    for n, seed in enumerate(seeds):
        # 3. Initial noise: beta-blend of the inverted noise and fresh noise.
        if init_noise is not None:
            eps = init_noise[n:n + 1].to(dev).float()
        else:
            eps = torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed)).to(dev)
        x = blend_noise(eps_inv, eps, cfg.beta) if eps_inv is not None else eps
        # 4. DDIM with (rescaled) guidance; LoRA on while t >= cutoff.
        for i, (t, t_prev) in enumerate(steps):
            with _lora_ctx(model, use_lora, cfg.lora_scale, t, cfg.lora_cutoff):
                if cfg.guidance_scale == 1.0:
                    e = _unet(model, x, t, cond)
                else:
                    e_u, e_c = _unet(model, torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
                    e = guide(e_u, e_c, cfg.guidance_scale, cfg.guidance_rescale)
            ab = abar_at(model.scheduler, t)
            if x0_hook is not None:
                ab32 = ab.to(x.device, torch.float32)
                x0_hook(t, (x - (1 - ab32).sqrt() * e) / ab32.sqrt())
            x = ddim_move(x, e, ab, abar_at(model.scheduler, t_prev))
            if callback is not None:
                callback(n * len(steps) + i + 1, len(seeds) * len(steps), t)
        outs.append(x)
    latents = torch.cat(outs)
    # 5. Decode.
    frames = decode_latents(model, latents) if decode else torch.empty(0)
    return SampleResult(latents, frames, seeds)
