"""Schedule maths: the one-step DDIM map v_t, DDIM timestep lists, inversion moves, beta-blended noise and guidance.

The only module that does schedule maths. Everything is written from the DDIM update (Song et al. 2021,
eta = 0) in the notation of docs/method.md: ``abar_t`` = the scheduler's ``alphas_cumprod[t]``.

    x_{to} = sqrt(abar_to) * (x - sqrt(1 - abar_from) * e) / sqrt(abar_from) + sqrt(1 - abar_to) * e

One function (``ddim_move``) serves sampling (towards less noise), inversion (towards more noise) and the
training target v_t (one step, t -> t-1). Tests compare it with diffusers' own ``DDIMScheduler.step``.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler


def alphas_cumprod(scheduler: DDIMScheduler, device: torch.device | str = "cpu") -> torch.Tensor:
    """``abar_t`` for t = 0..T-1 in float64 (the map's coefficients are differences of numbers near one)."""
    return scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)


def final_alpha_cumprod(scheduler: DDIMScheduler) -> float:
    """``abar`` of the level below t = 0 (1.0 with ``set_alpha_to_one``, else ``abar_0``), as diffusers does."""
    return float(scheduler.final_alpha_cumprod)


def abar_at(scheduler: DDIMScheduler, t: torch.Tensor | int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``abar_t`` per element; t < 0 means the final level below t = 0."""
    ac = alphas_cumprod(scheduler, device)
    t = torch.as_tensor(t, device=device).long()
    out = ac[t.clamp(min=0)]
    return torch.where(t < 0, torch.tensor(final_alpha_cumprod(scheduler), dtype=torch.float64, device=device), out)


def _bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    c = c.reshape(-1) if c.ndim else c.reshape(1)
    return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))


def ddim_move(x: torch.Tensor, eps: torch.Tensor, abar_from: torch.Tensor, abar_to: torch.Tensor) -> torch.Tensor:
    """The eta = 0 DDIM map from noise level ``abar_from`` to ``abar_to`` given noise estimate ``eps``.

    Coefficients are formed in float64 and applied in float32 (or x's dtype if wider), so the small difference
    between v_t of two noise estimates is not lost to rounding (docs/method.md, "Precision").
    """
    af, at = torch.as_tensor(abar_from, dtype=torch.float64), torch.as_tensor(abar_to, dtype=torch.float64)
    a = (at.sqrt() / af.sqrt())  # coefficient of x
    b = (1 - at).sqrt() - at.sqrt() * (1 - af).sqrt() / af.sqrt()  # coefficient of eps
    dt = torch.promote_types(x.dtype, torch.float32)
    a, b = _bcast(a.to(x.device, dt), x), _bcast(b.to(x.device, dt), x)
    return a * x.to(dt) + b * eps.to(dt)


def v_t(
    scheduler: DDIMScheduler, z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, stride: int = 1
) -> torch.Tensor:
    """The one-step DDIM map v_t(z_t, e) of paper Eq. 2 / 10-12: a deterministic step from t to t - stride."""
    return ddim_move(z_t, eps, abar_at(scheduler, t), abar_at(scheduler, t - stride))


def v_t_gap(scheduler: DDIMScheduler, t: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """``c_t`` in ``v_t(z, e1) - v_t(z, e2) = c_t (e1 - e2)``: how small the training signal is at t."""
    af, at = abar_at(scheduler, t), abar_at(scheduler, t - stride)
    return (1 - at).sqrt() - at.sqrt() * (1 - af).sqrt() / af.sqrt()


def add_noise(scheduler: DDIMScheduler, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Forward noising ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``."""
    ab = abar_at(scheduler, t).to(z0.device)
    return _bcast(ab.sqrt().float(), z0) * z0 + _bcast((1 - ab).sqrt().float(), z0) * eps


def sampling_timesteps(scheduler: DDIMScheduler, num_steps: int) -> list[tuple[int, int]]:
    """(t, t_prev) pairs of a DDIM sampling run, noisiest first; t_prev = -1 is the final level.

    The timestep list is the scheduler's own (``set_timesteps``: spacing and ``steps_offset``) so our loop
    walks the same levels as diffusers' pipelines.
    """
    if not 1 <= num_steps <= scheduler.config.num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {scheduler.config.num_train_timesteps}], got {num_steps}")
    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(num_steps)
    ts = [int(t) for t in sched.timesteps]
    ratio = scheduler.config.num_train_timesteps // num_steps
    return [(t, t - ratio if t - ratio >= 0 else -1) for t in ts]


def inversion_timesteps(scheduler: DDIMScheduler, num_steps: int) -> list[tuple[int, int]]:
    """(t_from, t_to) pairs of DDIM inversion: the sampling run walked backwards, cleanest first.

    The model is evaluated at ``t_from`` (the level the latent is at), the usual approximation
    eps(x_{t_to}, t_to) ~ eps(x_{t_from}, t_from).
    """
    return [(prev, t) for t, prev in reversed(sampling_timesteps(scheduler, num_steps))]


def blend_noise(eps_inv: torch.Tensor, eps: torch.Tensor, beta: float) -> torch.Tensor:
    """Initial noise ``z_T = sqrt(beta) eps_inv + sqrt(1 - beta) eps`` (paper App. F); unit variance for any beta."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return beta**0.5 * eps_inv.to(eps.dtype) + (1 - beta) ** 0.5 * eps


def guide(e_uncond: torch.Tensor, e_cond: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance ``e = e_u + w (e_c - e_u)``, optionally rescaled (Lin et al. 2024, Sec. 3.4):

        e_r = e * std(e_c) / std(e),   e <- phi e_r + (1 - phi) e

    with std over each sample's elements (as diffusers' ``rescale_noise_cfg``, which pipelines apply only above
    guidance 1; here any scale, and the sampler skips the empty caption's row at exactly 1, where e = e_c anyway).
    Guidance inflates the estimate's spread; rescaling gives back the conditional prediction's spread and keeps
    guidance's direction (on the embedded model: a few more squares from pure noise, nothing beyond noise on its
    card's ladder; docs/results.md). ``rescale`` = phi in [0, 1]; 0, the release's plain guidance, by default.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
    e = e_uncond + scale * (e_cond - e_uncond)
    if rescale == 0.0:
        return e
    dims = list(range(1, e.ndim))
    std_e, std_c = e.float().std(dim=dims, keepdim=True), e_cond.float().std(dim=dims, keepdim=True)
    ratio = torch.where(std_e > 0, std_c / std_e, torch.ones_like(std_e))  # a flat estimate stays as it is
    return (rescale * ratio + (1 - rescale)).to(e.dtype) * e
