"""The VAE's training stages of the embedded model's recipe (``recipe.py``): the autoencoder, then the decoder alone.

Frames are uint8 ``(..., H, W, 3)``; the VAE works in [-1, 1]. Both stages stop on a wall-clock budget and can weigh
the objects' pixels above the background's (``object_weights``): an object covers a few percent of a frame.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL


def _to_tensor(frames_u8: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(frames_u8).float() / 127.5 - 1
    return x.movedim(-1, -3)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1), b.clamp(-1, 1)).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def train_vae(vae: AutoencoderKL, frames: np.ndarray, minutes: float, seed: int, log: list,
              weights: np.ndarray | None = None) -> dict:
    """Reconstruction (L1 + MSE) with a tiny KL weight; a small latent scale keeps detail (PSNR target 30 dB).
    ``weights`` (N, F, H, W): per-pixel loss weights (``object_weights``), else uniform."""
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same batches and noise on any device
    dev = vae.device
    flat = frames.reshape(-1, *frames.shape[-3:])
    flat_w = None if weights is None else weights.reshape(-1, 1, *weights.shape[-2:])
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train().requires_grad_(True)
    t0, step = time.time(), 0
    while time.time() - t0 < minutes * 60:
        idx = torch.randint(0, len(flat), (16,), generator=g).numpy()
        x = _to_tensor(flat[idx]).to(dev)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(dev)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / (z[0].numel())
        err = (rec - x).abs() + (rec - x) ** 2
        w = None if flat_w is None else torch.from_numpy(flat_w[idx]).to(dev)
        loss = (err.mean() if w is None else (w * err).mean() / w.mean()) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 200 == 0:
            for group in opt.param_groups:  # a gentle decay for the last stretch of fine detail
                group["lr"] = max(group["lr"] * 0.85, 1e-4)
        if step % 50 == 0:
            log.append({"stage": "vae", "step": step, "loss": float(loss.detach()), "psnr": psnr(rec.detach(), x),
                        "sec": round(time.time() - t0, 1)})
            print(json.dumps(log[-1]), flush=True)
    vae.eval().requires_grad_(False)
    return {"vae_steps": step, "vae_seconds": round(time.time() - t0, 1)}


def object_weights(masks: np.ndarray, weight: float) -> np.ndarray:
    """Per-pixel loss weights ``1 + weight * m`` with ``m`` the objects' masks grown by one pixel (their edges).

    An object covers a few percent of a 32 x 32 frame, so a plain reconstruction loss is almost all background;
    the objects' colour and outline are what the judge and a user look at.
    """
    m = torch.from_numpy(masks.reshape(-1, 1, *masks.shape[-2:])).float()
    m = F.max_pool2d(m, 3, stride=1, padding=1)
    return (1.0 + weight * m).numpy().reshape(*masks.shape).astype(np.float32)


def latent_object_weights(masks: np.ndarray, factor: int, weight: float) -> torch.Tensor:
    """Per-latent-pixel weights of the UNet's noise loss: ``1 + weight * m``, each frame scaled to mean 1.

    ``m`` marks the latent pixels that see any object pixel (``masks`` (N, F, H, W) max-pooled by the VAE's
    ``factor``), grown by one latent pixel (the outline). An object covers 2-4 of a frame's 64 latent pixels, so the
    plain noise loss is almost all background, while the object's shape is what a prompt asks for; the mean of 1
    keeps the loss, and with it the learning rate, on the plain loss's scale.
    """
    m = torch.from_numpy(np.ascontiguousarray(masks)).float()
    n, f, h, w = m.shape
    m = F.max_pool2d(m.reshape(n * f, 1, h, w), factor, stride=factor).reshape(n, f, h // factor, w // factor)
    wts = torch.from_numpy(object_weights(m.numpy(), weight))  # the pixel stage's rim and weight, on the latent grid
    return wts / wts.mean(dim=(2, 3), keepdim=True)


def finetune_decoder(vae: AutoencoderKL, frames: np.ndarray, minutes: float, seed: int, log: list,
                     weights: np.ndarray | None = None) -> dict:
    """Train only the decoder on the frozen encoder's mean latents: sharper frames, same latent space.

    The UNet was trained on this encoder's latents, so the encoder must not move; the decoder can keep learning.
    ``weights`` (N, F, H, W): per-pixel loss weights (``object_weights``), else uniform.
    """
    g = torch.Generator().manual_seed(seed + 2)
    dev = vae.device
    flat = frames.reshape(-1, *frames.shape[-3:])
    flat_w = None if weights is None else weights.reshape(-1, 1, *weights.shape[-2:])
    dec = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(dec, lr=3e-4, weight_decay=0.0)
    vae.eval().requires_grad_(False)
    for p in dec:
        p.requires_grad_(True)
    t0, step = time.time(), 0
    while time.time() - t0 < minutes * 60:
        idx = torch.randint(0, len(flat), (16,), generator=g).numpy()
        x = _to_tensor(flat[idx]).to(dev)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        err = (rec - x).abs() + (rec - x) ** 2
        if flat_w is None:
            loss = err.mean()
        else:
            w = torch.from_numpy(flat_w[idx]).to(dev)
            loss = (w * err).mean() / w.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            log.append({"stage": "decoder", "step": step, "loss": float(loss.detach()),
                        "psnr": psnr(rec.detach(), x), "sec": round(time.time() - t0, 1)})
            print(json.dumps(log[-1]), flush=True)
    vae.requires_grad_(False)
    return {"decoder_steps": step, "decoder_seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def encode_all(vae: AutoencoderKL, frames: np.ndarray) -> torch.Tensor:
    """Mean latents (N, 4, F, h, w), unscaled, on the VAE's device."""
    out = []
    for clip in frames:
        z = vae.encode(_to_tensor(clip).to(vae.device)).latent_dist.mean  # (F, 4, h, w)
        out.append(z.permute(1, 0, 2, 3))
    return torch.stack(out)
