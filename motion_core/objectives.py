"""Training objectives, one plain function each with one shared signature.

    objective(ctx, z0, text, t, eps) -> LossOutput

``z0`` is the reference latent video ``(1, C, F, h, w)``, ``text`` its caption embedding, ``t`` the sampled
timesteps ``(1,)`` and ``eps`` the noise. Each returns the scalar loss and its named parts (floats for logs).

- ``motion``: MotionMatcher's motion feature matching (paper Eq. 4, 7, 15): the one-step DDIM map of the true and
  of the predicted noise, read by the frozen extractor at t - stride, compared as mean squared errors of the
  cross-attention and temporal self-attention maps, weighted by lambda_CA and lambda_TSA.
- ``ddpm``: plain noise regression ``|| eps - eps_theta ||^2`` (the baseline; paper Eq. 3 with pixel-level v).
- ``frame-diff``: MotionDirector-style appearance-debiased temporal loss: differences between an anchor frame and
  every frame, of predicted and of true clean latents.
- ``residual``: VMC-style: consecutive-frame residuals of predicted and of true clean latents.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import MotionFeatureExtractor
from .checkpointing import checkpoint_units, checkpointed, unet_blocks
from .config import LossConfig
from .ddim import abar_at, add_noise, v_t
from .models import T2VModel


@dataclass
class LossOutput:
    loss: torch.Tensor
    parts: dict[str, float]


@dataclass
class ObjectiveContext:
    model: T2VModel
    cfg: LossConfig
    extractor: MotionFeatureExtractor | None = None  # needed by "motion" only
    amp_dtype: torch.dtype | None = None  # autocast dtype for the denoiser; None = full precision
    generator: torch.Generator | None = None  # for objectives with their own randomness (anchor frame)
    grad_checkpointing: bool = False  # recompute each UNet block's activations in backward (checkpointing.py)


def predict_noise(ctx: ObjectiveContext, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The LoRA denoiser's noise estimate, under autocast if asked, returned in fp32.

    Inputs go in at the dtype of ``conv_in``: the weights may be mixed (half, with the extractor's path in fp32).
    """
    unet = ctx.model.unet
    amp = (torch.autocast(device_type=z_t.device.type, dtype=ctx.amp_dtype) if ctx.amp_dtype
           else contextlib.nullcontext())
    dtype = unet.conv_in.weight.dtype
    with amp, checkpointed(unet, checkpoint_units(unet, unet_blocks(unet)), ctx.grad_checkpointing):
        eps = unet(z_t.to(dtype), t, encoder_hidden_states=text.to(dtype), return_dict=False)[0]
    return eps.float()


def _pred_x0(ctx: ObjectiveContext, z_t: torch.Tensor, eps_theta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ab = abar_at(ctx.model.scheduler, t).to(z_t.device).float().reshape(-1, 1, 1, 1, 1)
    return (z_t - (1 - ab).sqrt() * eps_theta) / ab.sqrt()


def motion_loss(ctx: ObjectiveContext, z0: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
                eps: torch.Tensor) -> LossOutput:
    """Motion feature matching, paper Eq. 7: ``|| M(v_hat_t) - M(v_theta_t) ||^2`` at t - stride."""
    if ctx.extractor is None:
        raise ValueError("the motion objective needs a MotionFeatureExtractor")
    sched, k = ctx.model.scheduler, ctx.cfg.stride
    z_t = add_noise(sched, z0, eps, t)
    eps_theta = predict_noise(ctx, z_t, t, text)
    # Both maps in fp32 from the same z_t: v_hat - v_theta = c_t (eps - eps_theta) with |c_t| ~ 3e-3..6e-3.
    v_hat = v_t(sched, z_t, eps, t, k)
    v_theta = v_t(sched, z_t, eps_theta, t, k)
    t_m = (t - k).clamp(min=0)  # release: the extractor is fed timesteps - 1
    return feature_matching_loss(ctx, v_theta, v_hat, t_m, text)


def feature_matching_loss(ctx: ObjectiveContext, v_pred: torch.Tensor, v_target: torch.Tensor, t_m: torch.Tensor,
                          text: torch.Tensor) -> LossOutput:
    """``lambda_CA * mse(M_CA) + lambda_TSA * mse(M_TSA)`` between the features of two latents at ``t_m``, the maps
    first pooled over ``cfg.pool`` x ``cfg.pool`` windows of their grid when the config asks."""
    h, w, k = v_pred.shape[3], v_pred.shape[4], ctx.cfg.pool
    with torch.no_grad():  # the target carries no gradient and keeps no graph (the release kept one)
        target = ctx.extractor(v_target, t_m, text).pooled(h, w, k)
    pred = ctx.extractor(v_pred, t_m, text).pooled(h, w, k)
    # Open choice (docs/method.md): mean squared error of each component, then the lambdas.
    l_ca = F.mse_loss(pred.ca, target.ca)
    l_tsa = F.mse_loss(pred.tsa, target.tsa)
    loss = ctx.cfg.lambda_ca * l_ca + ctx.cfg.lambda_tsa * l_tsa
    parts = {"ca": float(ctx.cfg.lambda_ca * l_ca.detach()), "tsa": float(ctx.cfg.lambda_tsa * l_tsa.detach())}
    return LossOutput(loss, parts)


def ddpm_loss(ctx: ObjectiveContext, z0: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
              eps: torch.Tensor) -> LossOutput:
    """Plain noise regression ``|| eps - eps_theta ||^2`` (DDPM, the baseline)."""
    eps_theta = predict_noise(ctx, add_noise(ctx.model.scheduler, z0, eps, t), t, text)
    loss = F.mse_loss(eps_theta, eps)
    return LossOutput(loss, {"mse": float(loss.detach())})


def frame_diff_loss(ctx: ObjectiveContext, z0: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
                    eps: torch.Tensor) -> LossOutput:
    """Appearance-debiased temporal loss: (frame - anchor frame) of predicted vs true clean latents."""
    z_t = add_noise(ctx.model.scheduler, z0, eps, t)
    x0 = _pred_x0(ctx, z_t, predict_noise(ctx, z_t, t, text), t)
    a = int(torch.randint(0, z0.shape[2], (1,), generator=ctx.generator).item())
    loss = F.mse_loss(x0 - x0[:, :, a:a + 1], z0 - z0[:, :, a:a + 1])
    return LossOutput(loss, {"frame_diff": float(loss.detach())})


def residual_loss(ctx: ObjectiveContext, z0: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
                  eps: torch.Tensor) -> LossOutput:
    """Consecutive-frame residuals of predicted vs true clean latents (VMC's motion vectors)."""
    z_t = add_noise(ctx.model.scheduler, z0, eps, t)
    x0 = _pred_x0(ctx, z_t, predict_noise(ctx, z_t, t, text), t)
    loss = F.mse_loss(x0[:, :, 1:] - x0[:, :, :-1], z0[:, :, 1:] - z0[:, :, :-1])
    return LossOutput(loss, {"residual": float(loss.detach())})


Objective = Callable[[ObjectiveContext, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], LossOutput]

OBJECTIVES: dict[str, Objective] = {
    "motion": motion_loss,
    "ddpm": ddpm_loss,
    "frame-diff": frame_diff_loss,
    "residual": residual_loss,
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
