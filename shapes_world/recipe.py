"""The recipe of the embedded shapes-world text-to-video model: generate the data, train VAE, text encoder and UNet.

    python -m shapes_world.recipe --replay assets/shapes-t2v/training_info.json --out runs/m   # the shipped model
    python -m shapes_world.recipe --continue-from assets/shapes-t2v --out runs/m --seed 4 --unet-minutes 45 \
        --decoder-minutes 0 --noise-offset 0.1 --image-every 2 --image-batch 64 --lr 2e-4 --ema-decay 0.999 \
        --threads 1   # one more chunk, on clips no earlier run drew (each run in training_info.json names its seed)
    python -m shapes_world.recipe --out /tmp/m --clips 64 --vae-minutes 0.2 --unet-minutes 0.3   # smoke
    # on a GPU, a larger UNet on more data (written for the device machine; not yet run on a GPU):
    python -m shapes_world.recipe --out runs/shapes-gpu --device cuda --workers 16 --clips 20000 \
        --unet-channels 64,128,128 --unet-layers 2 --batch 32 --vae-minutes 4 --unet-minutes 15 \
        --noise-offset 0.1 --image-every 2 --ema-decay 0.999

Everything is seeded. The model uses exactly Zeroscope's classes and folder layout (``AutoencoderKL``,
``CLIPTextModel`` + ``CLIPTokenizer`` built from the world's small vocabulary, ``UNet3DConditionModel`` and
``DDIMScheduler`` with Zeroscope's schedule), so the project's one loader reads it like any hub model. The
sidecar ``motion_matcher.json`` names the block the motion feature extractor reads (``down_blocks.1``: 4 x 4
maps at 32 x 32 pixels in the paths world, 8 x 8 at the first world's 64 x 64 and at ``--vae-factor 2``), the
video size and the model's sampling and training defaults. Training stops on a wall-clock budget per stage, so
the recipe fits a 2-core CPU; ``training_info.json`` records the data, sizes, steps, losses, hardware and wall time.

Training options that target what the diagnosis found (``python -m shapes_world.diagnose``):
``--noise-offset 0.1`` hides the clip mean that Zeroscope's z_999 still shows (so the background colour comes from
the caption, not the noise), ``--image-every 2`` makes every second step a batch of single frames of many
clips, which teaches the caption-to-look mapping several times faster per CPU second than whole clips, and
``--p2-gamma 1`` weighs the noise loss toward the noisy levels, where the paths model settles its objects' paths
late (``diagnose --formation``); ``--unet-object-weight 9`` gives the few latent pixels that show the object (whose
shape a prompt names) ten times the background's share of the noise loss. ``--ema-decay 0.999`` saves a moving
average of the weights instead of the last ones (``--save-raw DIR`` keeps the last ones too, to compare).
``--shape-weights square=2.5,star=2`` draws those shapes more often than the others (the paths world draws its
four shapes evenly by default), for the shapes the model draws least well.
``--grow`` (with ``--continue-from``) trains on from the trained UNet one layer a block deeper (``grow.py``).
``--vae-factor 2`` starts a model on a latent grid twice as fine (16 x 16 at 32 x 32 pixels), so that a small
square's corners are not finer than one latent pixel; the VAE stages are in ``vae_stages.py``. ``--init-from
assets/shapes-t2v`` starts such a run's UNet and text encoder from the trained model's weights (all but the finest
level's attention, which the factor-2 UNet lacks; ``grow.transplant``) instead of from noise.

Captions are the world's plain captions (objects, colours, background; no motion words), so for a prompt that
names no motion the base model draws from the world's whole motion distribution: varied motion, which is what
a motion LoRA then pins down.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextConfig, CLIPTextModel

from motion_core.ddim import add_noise
from motion_core.models import T2VModel, UNet3DWithPeft, build_word_tokenizer, resolve_device, save_model

from . import paths, world
from .grow import grow_unet, transplant
from .vae_stages import encode_all, finetune_decoder, latent_object_weights, object_weights, train_vae

FPS = 8.0
# The two worlds a model can be trained on: module, frames, side in pixels. "paths" (the second design, the
# default) is one object on a continuous family of smooth paths at 8 x 32 x 32; "shapes" is the first world of
# 22 named motions at 12 x 64 x 64 (the model shipped until the second design).
WORLDS: dict[str, tuple] = {"paths": (paths, 8, 32), "shapes": (world, 12, 64)}
# The paths world's object sizes (radius / side) of the runs recorded before runs named theirs (``--sizes``): a
# replay draws those runs' data at these sizes, not at today's ``paths.SIZES``.
EARLIER_SIZES: tuple[float, ...] = (0.14, 0.17, 0.21)
# The options of a UNet run that ``train_unet`` returns and every run's record keeps (the card repeats them).
RUN_OPTIONS = ("lr", "noise_offset", "image_every", "image_batch", "unet_lr", "ema_decay", "unet_batch", "p2_gamma",
               "unet_object_weight", "unet_t_max")


def build_model(seed: int = 0, unet_channels: tuple[int, ...] = (32, 64, 64), unet_layers: int = 1,
                world_name: str = "paths", vae_factor: int = 4) -> T2VModel:
    """Untrained model of a world (``WORLDS``); the defaults are the shipped size (UNet ~2.4 M parameters).

    A wider or deeper UNet (``--unet-channels 64,128,128 --unet-layers 2``) is for a GPU: it keeps three blocks, so
    ``down_blocks.1`` still gives the motion extractor 8 x 8 maps at 64 x 64 pixels. ``vae_factor`` 2 (one VAE
    block fewer) doubles the latent grid, so a square's corners span latent pixels instead of living inside one;
    its UNet has no spatial attention at that finest level, which would cost 1.9 x a LoRA step (docs/results.md).
    """
    if len(unet_channels) != 3 or any(c % 16 for c in unet_channels) or unet_layers < 1 or vae_factor not in (2, 4):
        raise ValueError(f"unet_channels must be three multiples of 16 (group norm of 16 groups), unet_layers >= 1 "
                         f"and vae_factor 2 or 4; got {unet_channels}, {unet_layers}, {vae_factor}")
    torch.manual_seed(seed)
    module, frames, side = WORLDS[world_name]
    n_vae = 3 if vae_factor == 4 else 2  # each VAE block after the first halves the side
    tokenizer = build_word_tokenizer(list(module.VOCABULARY))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * n_vae, up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=(32, 64, 64)[:n_vae], sample_size=side,
    )
    top = "CrossAttn" if vae_factor == 4 else ""  # the finest level's blocks: with spatial attention or not
    unet = UNet3DWithPeft(
        in_channels=4, out_channels=4, layers_per_block=unet_layers, norm_num_groups=16, cross_attention_dim=64,
        down_block_types=(f"{top}DownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", f"{top}UpBlock3D"),
        block_out_channels=tuple(unet_channels), attention_head_dim=4,  # diffusers' quirk: 4 heads
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type="epsilon")
    video = {"num_frames": frames, "fps": FPS, "height": side, "width": side}
    # A small model needs far fewer DDIM steps than Zeroscope's 75 to sample well; 25 keeps the CPU flow short.
    # The paths model samples one coherent object far more often at guidance 3 than 7.5, at the same colour,
    # shape and motion transfer (benchmarks/guidance_sweep.py and the ladder; docs/results.md).
    sample = {"num_inference_steps": 25, "guidance_scale": 3.0 if world_name == "paths" else 7.5}
    # The paths world's own LoRA default, from the transfer ladder's L1 probes (docs/results.md): LoRA on the
    # convolutions too (a 1-layer-per-block UNet3D keeps much of its motion there); the sampling cut-off stays the
    # release's 500 (cut-off 0 measured no better). The motion loss's DDIM map steps 400 timesteps, not 1, so the
    # extractor reads latents at t - 400, where this 8 x 8-latent model has placed its object (the whole ladder:
    # 5-14 % closer to the reference than with stride 1, in all four cells). Half the draws come from recoloured
    # copies of the reference, each under its caption with the colours renamed: a LoRA trained on the one look
    # loses its path under another colour (docs/results.md).
    train = {"conv_targets": ["temp_convs", "resnets"], "stride": 400, "recolour": 0.5,
             "recolour_names": paths.colour_names()} if world_name == "paths" else {}
    if train and vae_factor == 2:
        # Each step reads features on a grid four times as large: 400 steps overrun the two-minute CPU flow, and 250
        # at 4x the rate measured closer to the reference than 400 at 5e-4 (docs/results.md, the factor-2 sections).
        train = {"steps": 250, "learning_rate": 2e-3, **train}
    return T2VModel(unet, vae, text_encoder, tokenizer, scheduler, "shapes-t2v", ("down_blocks.1",), video,
                    torch.float32, sample, train_defaults=train)


def _render(first: int, n: int, seed: int, world_name: str = "paths", sizes: tuple[float, ...] | None = None,
            shape_weights: tuple[float, ...] | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    module, frames, side = WORLDS[world_name]
    kw = {k: v for k, v in (("sizes", sizes), ("shape_weights", shape_weights)) if v is not None}
    clips = list(module.iter_dataset(n, seed=seed, frames=frames, height=side, width=side, first=first, **kw))
    return (np.stack([c.frames for c in clips]), [c.caption for c in clips],
            np.stack([c.masks.any(axis=0) for c in clips]))


def world_sizes(sizes: tuple[float, ...] | None, world_name: str, record: dict | None = None
                ) -> tuple[float, ...] | None:
    """The object sizes a run's data draw: ``sizes`` (``--sizes``); else, continuing a model (``record``: its
    training_info ``info``), the sizes of its last run (``EARLIER_SIZES`` if it recorded none), as a continued model
    keeps its world; else the paths world's ``SIZES``. None for the first world, which has its own. Raises
    SystemExit if sizes are given for the first world."""
    if world_name != "paths":
        if sizes is not None:
            raise SystemExit(f"--sizes is for the paths world; this run's world is {world_name!r}")
        return None
    if sizes is not None:
        return tuple(sizes)
    if record is not None:
        last = [r.get("sizes") for r in (record, *record.get("continued", [])) if r.get("sizes")]
        return tuple(last[-1]) if last else EARLIER_SIZES
    return tuple(paths.SIZES.values())


def _check_shape_weights(shape_weights: tuple[float, ...] | None, world_name: str) -> None:
    """SystemExit if shape weights are given for a world that does not take them (the first world's shapes are
    drawn with its motions)."""
    if shape_weights is not None and world_name != "paths":
        raise SystemExit(f"--shape-weights is for the paths world; this run's world is {world_name!r}")


def make_data(n: int, seed: int, workers: int = 1, world_name: str = "paths", sizes: tuple[float, ...] | None = None,
              shape_weights: tuple[float, ...] | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Clips 0 to n-1 of the seed as (n, F, H, W, 3) uint8, their captions and where any object is, (n, F, H, W)
    bool; the same for any ``workers``. ``sizes``: the paths world's object radii / side (default its ``SIZES``);
    ``shape_weights``: how often it draws each of its ``SHAPES`` (default evenly)."""
    if workers <= 1 or n < 2 * workers:
        return _render(0, n, seed, world_name, sizes, shape_weights)
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_render, bounds[:-1], np.diff(bounds), [seed] * workers, [world_name] * workers,
                              [sizes] * workers, [shape_weights] * workers))
    return (np.concatenate([f for f, _, _ in parts]), [c for _, caps, _ in parts for c in caps],
            np.concatenate([m for _, _, m in parts]))


def train_unet(model: T2VModel, latents: torch.Tensor, captions: list[str], minutes: float, seed: int,
               log: list, batch: int = 8, lr: float = 4e-4, p_uncond: float = 0.1, lr_floor: float = 0.1,
               noise_offset: float = 0.0, image_every: int = 0, image_batch: int = 64, ema_decay: float = 0.0,
               raw_out: list | None = None, p2_gamma: float = 0.0,
               object_masks: np.ndarray | None = None, object_weight: float = 0.0, t_max: int = 1000) -> dict:
    """Joint UNet + text encoder training with the DDPM noise loss; captions dropped 10% of the time for CFG.

    The learning rate warms up over 100 steps, then follows a cosine over the wall-clock budget down to
    ``lr_floor * lr`` (the budget is in minutes, not steps, so the schedule is too). ``noise_offset``: see
    ``training_noise``.

    ``image_every = k > 0``: every k-th step trains on ``image_batch`` single frames of distinct clips instead of
    ``batch`` whole clips (joint image-video training). A clip's 12 frames show one appearance, so a video step
    teaches the caption-to-look mapping ``batch`` examples at a time; an image step, at a similar cost, teaches it
    ``image_batch``. On those steps each frame is a one-frame clip, so temporal attention attends only to itself,
    as in the joint image-video training of video diffusion models; motion is learnt on the video steps.

    ``ema_decay = d > 0``: the weights the model ends with are an exponential moving average of the trained ones
    (decay ``min(d, (1 + step) / (10 + step))``, so the average does not lag far behind early on). With batches of
    8 clips the raw weights jitter from step to step; sampling from their average is the standard cure in
    diffusion training. ``raw_out``, a list, receives the raw (not averaged) parameters, to compare the two.

    ``p2_gamma = g > 0`` weighs each sample's loss by ``timestep_weights`` (P2 weighting, Choi et al. 2022): more
    of the gradient goes to the noisy levels where layout and shape form, less to the near-clean ones.

    ``object_weight = w > 0`` with ``object_masks`` (N, F, H, W), the clips' object masks: the latent pixels that
    show an object weigh ``1 + w`` in the noise loss, the rest 1 (``latent_object_weights``).

    ``t_max < 1000``: timesteps are drawn from [0, t_max) only, the near-clean levels where the model finishes an
    object's outline (``diagnose --shape-survival``: a square noised to t = 200 comes back a disc).
    """
    g = torch.Generator().manual_seed(seed + 1)  # on the CPU: the same batches and noise on any device
    unet, te, tok = model.unet, model.text_encoder, model.tokenizer
    dev = unet.device
    latents = latents.to(dev)
    params = list(unet.parameters()) + list(te.parameters())
    for m in (unet, te):
        m.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ids_all = tok(captions + [""], padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids.to(dev)
    empty = ids_all[-1]
    t0, step, ema = time.time(), 0, None
    warmup = 100
    weights = timestep_weights(model.scheduler, p2_gamma).to(dev)
    avg = [p.detach().clone() for p in params] if ema_decay > 0 else None
    obj_w = (latent_object_weights(object_masks, model.vae_scale, object_weight).to(dev)
             if object_weight > 0 and object_masks is not None else None)
    while time.time() - t0 < minutes * 60:
        image_step = image_every > 0 and step % image_every == image_every - 1
        n = image_batch if image_step else batch
        idx = torch.randint(0, len(latents), (n,), generator=g).to(dev)
        if image_step:  # one random frame of each clip: (n, C, 1, h, w)
            f = torch.randint(0, latents.shape[2], (n,), generator=g).to(dev)
            z0 = latents[idx, :, f].unsqueeze(2)
            pix_w = obj_w[idx, f].unsqueeze(1) if obj_w is not None else None
        else:
            z0 = latents[idx]
            pix_w = obj_w[idx] if obj_w is not None else None
        ids = ids_all[idx].clone()
        drop = (torch.rand(n, generator=g) < p_uncond).to(dev)
        ids[drop] = empty
        t = torch.randint(0, t_max, (n,), generator=g).to(dev)
        eps = training_noise(z0.shape, g, noise_offset).to(dev)
        zt = add_noise(model.scheduler, z0, eps, t)
        text = te(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=text).sample
        loss = noise_loss(pred, eps, weights[t], pix_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        frac = min(1.0, (time.time() - t0) / (minutes * 60))
        decay = lr_floor + (1 - lr_floor) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * decay
        opt.step()
        if avg is not None:
            with torch.no_grad():
                d = min(ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(avg, [p.detach() for p in params], 1 - d)
        step += 1
        lv = float(loss.detach())
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        if step % 25 == 0:
            log.append({"stage": "unet", "step": step, "loss": lv, "loss_ema": ema,
                        "sec": round(time.time() - t0, 1)})
            print(json.dumps(log[-1]), flush=True)
    for m in (unet, te):
        m.eval().requires_grad_(False)
    if avg is not None:
        with torch.no_grad():
            if raw_out is not None:
                raw_out.extend(p.detach().clone() for p in params)
            for p, a in zip(params, avg):
                p.copy_(a)
    return {"unet_steps": step, "unet_batch": batch, "unet_seconds": round(time.time() - t0, 1), "unet_loss_ema": ema,
            "unet_lr": f"{lr:g}, 100-step warm-up, cosine over the budget to {lr_floor:g} x", "lr": lr,
            "noise_offset": noise_offset, "image_every": image_every, "image_batch": image_batch,
            "ema_decay": ema_decay, "p2_gamma": p2_gamma,
            "unet_object_weight": object_weight if obj_w is not None else 0.0, "unet_t_max": t_max}


def noise_loss(pred: torch.Tensor, eps: torch.Tensor, t_weights: torch.Tensor, pix_w: torch.Tensor | None = None
               ) -> torch.Tensor:
    """The UNet's training loss: each clip's mean squared noise error, weighted by its timestep's weight
    (``timestep_weights``) and, where given, each latent pixel by ``pix_w`` (n, F, h, w), the same for every
    channel; then the mean over the batch."""
    err = (pred - eps) ** 2
    if pix_w is not None:
        err = err * pix_w.unsqueeze(1)
    return err.mean(dim=tuple(range(1, pred.ndim))).mul(t_weights).mean()


def timestep_weights(scheduler: DDIMScheduler, gamma: float = 0.0, k: float = 1.0) -> torch.Tensor:
    """Per-timestep loss weights ``(k + SNR_t) ** -gamma``, scaled to mean 1 over t (all ones for gamma 0).

    P2 weighting (Choi et al. 2022, "Perception Prioritized Training of Diffusion Models"). With the noise loss
    every level counts the same, so most of a small model's capacity goes to the near-clean levels, while its
    layout forms late: ``python -m shapes_world.diagnose --formation`` found the paths model's object path still
    0.32 (track distance) from where it ends at t = 521. The mean-1 scaling keeps the learning rate comparable.
    """
    ac = scheduler.alphas_cumprod.to(torch.float64)
    w = (k + ac / (1 - ac)) ** -float(gamma)
    return (w / w.mean()).float()


def training_noise(shape: torch.Size | tuple[int, ...], g: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise plus ``offset`` x one Gaussian value per (clip, channel), shared by all frames and pixels.

    Zeroscope's schedule leaves 7 % of the clean latent in z_999, and over a whole clip its per-channel mean stands
    above the noise (``python -m shapes_world.diagnose``), so the model learns to take the global colour from
    the noise instead of the caption. The offset hides that mean at high noise levels ("offset noise") without
    changing the schedule, so sampling, inversion and the beta blend stay exactly as on Zeroscope.
    """
    eps = torch.randn(shape, generator=g)
    if offset:
        eps = eps + offset * torch.randn((shape[0], shape[1]) + (1,) * (len(shape) - 2), generator=g)
    return eps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/shapes-t2v", help="model folder to write (Zeroscope layout)")
    ap.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    ap.add_argument("--world", choices=tuple(WORLDS), default="paths",
                    help="the world of a fresh model (a continued one keeps its own): paths = one object on smooth "
                         "random paths, 8 x 32 x 32; shapes = the first world, 22 named motions, 12 x 64 x 64")
    ap.add_argument("--clips", type=int, default=3000, help="number of training clips to generate")
    ap.add_argument("--vae-minutes", type=float, default=12.0, help="wall-clock budget of the VAE stage")
    ap.add_argument("--unet-minutes", type=float, default=45.0, help="wall-clock budget of the UNet stage")
    ap.add_argument("--batch", type=int, default=8, help="UNet batch size (clips)")
    ap.add_argument("--lr", type=float, default=4e-4, help="UNet + text encoder peak learning rate")
    ap.add_argument("--noise-offset", type=float, default=0.0,
                    help="offset noise for the UNet stage (0.1 hides the clip mean that z_999 still holds)")
    ap.add_argument("--image-every", type=int, default=0,
                    help="every k-th UNet step trains on single frames of --image-batch clips (0 = video only)")
    ap.add_argument("--image-batch", type=int, default=64, help="frames per image step")
    ap.add_argument("--p2-gamma", type=float, default=0.0,
                    help="P2 loss weighting (k + SNR_t)^-gamma of the UNet stage, toward the noisy levels (0 = off)")
    ap.add_argument("--ema-decay", type=float, default=0.0,
                    help="keep an exponential moving average of the UNet and text-encoder weights and save it "
                         "(e.g. 0.999; 0 = save the trained weights as they are)")
    ap.add_argument("--save-raw", default=None,
                    help="with --ema-decay: also save the model with the raw (not averaged) weights in this folder")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--device", default="cpu", help="where to train: cpu, cuda or auto (weights are saved the same)")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes that render the clips (the data are the same for any number)")
    ap.add_argument("--unet-channels", default="32,64,64",
                    help="UNet block widths of a fresh run (three multiples of 16; the shipped model: 32,64,64)")
    ap.add_argument("--unet-layers", type=int, default=1, help="UNet layers per block of a fresh run")
    ap.add_argument("--vae-factor", type=int, choices=(2, 4), default=4,
                    help="a fresh run's VAE downsampling: 4 (the shipped model, 8 x 8 latents) or 2 (16 x 16)")
    ap.add_argument("--resume-vae", default=None, help="reuse the VAE of an earlier run's folder")
    ap.add_argument("--init-from", default=None,
                    help="a fresh run: start the UNet and text encoder from this trained model of the same world "
                         "(every tensor the new layout shares; e.g. a --vae-factor 2 run from the shipped model)")
    ap.add_argument("--object-weight", type=float, default=0.0,
                    help="VAE and decoder stages: weigh the objects' pixels (and a 1-pixel rim) 1 + this in the "
                         "reconstruction loss (0 = uniform); 9 lifts the VAE's own prompt-following ceiling "
                         "(docs/results.md)")
    ap.add_argument("--unet-object-weight", type=float, default=0.0,
                    help="UNet stage: weigh the latent pixels that show an object (and a 1-latent-pixel rim) 1 + this "
                         "in the noise loss, each frame's weights scaled to mean 1 (0 = the plain loss)")
    ap.add_argument("--unet-t-max", type=int, default=1000,
                    help="UNet stage: draw timesteps from [0, this) only (the near-clean levels; 1000 = all)")
    ap.add_argument("--shape-weights", default=None,
                    help="paths world: how often each shape is drawn, e.g. square=2,star=2 (others 1; default even)")
    ap.add_argument("--sizes", default=None,
                    help="paths world: the object radii / side the clips draw, comma-separated (default: a "
                         "continued model's own, else the world's SIZES, "
                         + ",".join(f"{v:g}" for v in paths.SIZES.values()) + ")")
    ap.add_argument("--decoder-minutes", type=float, default=10.0,
                    help="final stage: fine-tune the VAE decoder alone (the latent space stays fixed)")
    ap.add_argument("--continue-from", default=None,
                    help="keep training the UNet and text encoder of a saved model (its VAE and latent scale stay); "
                         "--unet-minutes more, then the decoder stage; steps and logs accumulate")
    ap.add_argument("--grow", action="store_true",
                    help="with --continue-from: add a UNet layer to every block first, each new one starting as the "
                         "identity (the model draws the same until it trains); shapes_world/grow.py")
    ap.add_argument("--decoder-only", action="store_true",
                    help="run only the decoder stage on the model already in --out (same data and seed)")
    ap.add_argument("--replay", default=None,
                    help="a model's training_info.json: run its recorded commands again, in order, into --out")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    if args.replay:
        return replay(Path(args.replay), args.out)
    if not 0 <= args.ema_decay < 1:
        ap.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if not 1 <= args.unet_t_max <= 1000:
        ap.error(f"--unet-t-max must be in [1, 1000], got {args.unet_t_max}")
    if not 0 <= args.unet_object_weight <= 100:
        ap.error(f"--unet-object-weight must be in [0, 100], got {args.unet_object_weight}")
    if args.sizes is not None:
        try:
            args.sizes = tuple(paths.size_fraction(float(v)) for v in args.sizes.split(","))
        except ValueError as e:
            ap.error(f"--sizes: {e}")
    if args.shape_weights is not None:
        try:
            args.shape_weights = paths.shape_weights_of(args.shape_weights)
        except ValueError as e:
            ap.error(f"--shape-weights: {e}")
    if args.save_raw and (not args.ema_decay or Path(args.save_raw).resolve() == Path(args.out).resolve()):
        ap.error("--save-raw needs --ema-decay (without it the saved weights are the raw ones) and a folder "
                 "other than --out")
    if (args.continue_from or args.decoder_only) and (args.unet_channels != "32,64,64" or args.unet_layers != 1
                                                      or args.vae_factor != 4):
        ap.error("--unet-channels, --unet-layers and --vae-factor size a fresh model; a continued one keeps its own")
    if args.init_from and (args.continue_from or args.decoder_only):
        ap.error("--init-from starts a fresh run; a continued one already has its weights")
    if args.grow and not args.continue_from:
        ap.error("--grow adds layers to a trained model: give it --continue-from (a fresh one takes --unet-layers)")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = str(resolve_device(args.device))
    if args.device.startswith("cuda"):  # TF32 matmuls: several times faster, ample for this training
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    args.argv = argv  # recorded with the run, for --replay
    if args.decoder_only:
        return _decoder_only(out, args)
    if args.continue_from:
        return _continue(Path(args.continue_from), out, args)
    t_all = time.time()
    log: list[dict] = []
    sizes = world_sizes(args.sizes, args.world)
    _check_shape_weights(args.shape_weights, args.world)
    init_rec = _init_record(Path(args.init_from), args.world) if args.init_from else None  # before the long render
    frames, captions, masks = make_data(args.clips, args.seed, args.workers, args.world, sizes,  # before CUDA: fork
                                        args.shape_weights)
    weights = object_weights(masks, args.object_weight) if args.object_weight > 0 else None
    channels = tuple(int(c) for c in args.unet_channels.split(","))
    model = build_model(args.seed, channels, args.unet_layers, args.world, args.vae_factor)
    init = _init_from(model, Path(args.init_from), init_rec) if args.init_from else None
    for m in (model.unet, model.vae, model.text_encoder):
        m.to(args.device)
    print(f"data: {frames.shape} uint8, {len(set(captions))} distinct captions", flush=True)
    _, n_frames, side = WORLDS[args.world]
    info: dict = {"world": args.world, "seed": args.seed, "clips": args.clips, "frames": n_frames, "height": side,
                  "width": side, "fps": FPS, "torch_threads": torch.get_num_threads(),
                  "device": _device_name(args.device), "unet_channels": list(channels),
                  "unet_layers": args.unet_layers, "vae_factor": args.vae_factor,
                  "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "argv": args.argv}
    if init is not None:
        info["init_from"] = init
    if sizes is not None:
        info["sizes"] = list(sizes)
    if args.shape_weights is not None:
        info["shape_weights"] = dict(zip(paths.SHAPES, args.shape_weights))
    if args.resume_vae:
        model.vae = AutoencoderKL.from_pretrained(Path(args.resume_vae) / "vae").to(args.device)
        model.vae.eval().requires_grad_(False)
        info["vae_from"] = args.resume_vae
    else:
        info.update(train_vae(model.vae, frames, args.vae_minutes, args.seed, log, weights=weights))
    raw = encode_all(model.vae, frames)
    scale = float(1.0 / raw.std())
    model.vae.register_to_config(scaling_factor=scale)  # unit-variance latents, as SD's 0.18215 does for its VAE
    info["vae_scaling_factor"] = scale
    raw_params: list = []
    info.update(train_unet(model, raw * scale, captions, args.unet_minutes, args.seed, log, batch=args.batch,
                           lr=args.lr, noise_offset=args.noise_offset, image_every=args.image_every,
                           image_batch=args.image_batch, ema_decay=args.ema_decay, raw_out=raw_params,
                           p2_gamma=args.p2_gamma, object_masks=masks, object_weight=args.unet_object_weight,
                           t_max=args.unet_t_max))
    info["params"] = {k: sum(p.numel() for p in getattr(model, k).parameters())
                      for k in ("unet", "vae", "text_encoder")}
    if args.decoder_minutes > 0:
        info.update(finetune_decoder(model.vae, frames, args.decoder_minutes, args.seed, log, weights=weights))
    info["wall_seconds"] = round(time.time() - t_all, 1)
    save_model(model, out)
    (out / "training_info.json").write_text(json.dumps({"info": info, "log": log}, indent=1))
    _save_raw(model, raw_params, args.save_raw, info, log)
    print(json.dumps(info), flush=True)


def _init_record(src: Path, world_name: str) -> dict:
    """The record of the model ``--init-from`` names, checked to be one this recipe wrote for the same world."""
    try:
        rec = json.loads((src / "training_info.json").read_text())["info"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--init-from {src}: not a model folder this recipe wrote ({e})") from None
    if rec.get("world", "shapes") != world_name:
        raise SystemExit(f"--init-from {src}: a model of the {rec.get('world', 'shapes')!r} world, not {world_name!r}")
    return rec


def _init_from(model: T2VModel, src: Path, rec: dict) -> dict:
    """Start a fresh model's UNet and text encoder from the trained model in ``src`` (``grow.transplant``).

    The text encoder must match exactly (the same world, so the same vocabulary); the UNet may lack some of
    ``src``'s attention (the factor-2 layout). The VAE stays fresh: its latents are the new model's own, which the
    transplanted UNet then learns to read. Returns what ``training_info.json`` records.
    """
    from motion_core.models import load_model

    trained = load_model(src, device="cpu", dtype="float32")
    if trained.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise SystemExit(f"--init-from {src}: its vocabulary is not this world's")
    try:
        counts = transplant(model.unet, trained.unet)
        text = transplant(model.text_encoder, trained.text_encoder)
    except ValueError as e:
        raise SystemExit(f"--init-from {src}: {e}") from None
    if text["dropped"] or text["fresh"]:
        raise SystemExit(f"--init-from {src}: its text encoder is another size ({text})")
    print(f"init from {src}: UNet tensors {counts}, text encoder {text['copied']}", flush=True)
    return {"folder": str(src), "unet_steps": rec.get("unet_steps"), "unet": counts, "unet_sha256": _unet_sha(src)}


def _unet_sha(folder: Path) -> str | None:
    """The SHA-256 of a model folder's UNet weights: a replay checks that ``--init-from`` still names the same."""
    files = sorted((folder / "unet").glob("*.safetensors"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest() if files else None


def _continue(src: Path, out: Path, args: argparse.Namespace) -> None:
    """More UNet + text-encoder training on a saved model (same data; a new stream of batches)."""
    from motion_core.models import load_model

    t0 = time.time()
    rec = json.loads((src / "training_info.json").read_text())
    info, log = rec["info"], rec["log"]
    # the world a model was trained on is its own (records from before the second world name none: the first)
    sizes = world_sizes(args.sizes, info.get("world", "shapes"), info)
    _check_shape_weights(args.shape_weights, info.get("world", "shapes"))
    frames, captions, masks = make_data(args.clips, args.seed, args.workers, info.get("world", "shapes"), sizes,
                                        args.shape_weights)
    weights = object_weights(masks, args.object_weight) if args.object_weight > 0 else None
    model = load_model(src, device=args.device, dtype="float32")
    if args.grow:  # params are the saved model's; unet_layers stays the first run's, the continuation records its own
        model.unet = grow_unet(model.unet).to(args.device)
        info["params"]["unet"] = sum(p.numel() for p in model.unet.parameters())
    latents = encode_all(model.vae, frames) * model.vae.config.scaling_factor
    done = int(info.get("unet_steps", 0))
    raw_params: list = []
    more = train_unet(model, latents, captions, args.unet_minutes, args.seed + done, log, batch=args.batch,
                      lr=args.lr, noise_offset=args.noise_offset, image_every=args.image_every,
                      image_batch=args.image_batch, ema_decay=args.ema_decay, raw_out=raw_params,
                      p2_gamma=args.p2_gamma, object_masks=masks, object_weight=args.unet_object_weight,
                      t_max=args.unet_t_max)
    for line in log[len(log) - more["unet_steps"] // 25:]:
        line["step"] += done  # steps count on from the earlier run
    info["unet_steps"] = done + more["unet_steps"]
    info["unet_seconds"] = round(info.get("unet_seconds", 0) + more["unet_seconds"], 1)
    info["unet_loss_ema"] = more["unet_loss_ema"]
    if args.decoder_minutes > 0:
        _add_decoder(info, finetune_decoder(model.vae, frames, args.decoder_minutes, args.seed, log, weights=weights))
    info["wall_seconds"] = round(info.get("wall_seconds", 0) + time.time() - t0, 1)
    info.setdefault("continued", []).append({"from": str(src), "clips": args.clips, "unet_minutes": args.unet_minutes,
                                             "decoder_minutes": args.decoder_minutes,
                                             "torch_threads": torch.get_num_threads(),
                                             "device": _device_name(args.device), "argv": args.argv,
                                             **({"grow": True, "unet_layers": model.unet.config.layers_per_block}
                                                if args.grow else {}),
                                             **{k: more[k] for k in RUN_OPTIONS},
                                             **({} if sizes is None else {"sizes": list(sizes)}),
                                             **({} if args.shape_weights is None
                                                else {"shape_weights": dict(zip(paths.SHAPES, args.shape_weights))})})
    save_model(model, out)
    (out / "training_info.json").write_text(json.dumps({"info": info, "log": log}, indent=1))
    _save_raw(model, raw_params, args.save_raw, info, log)
    print(json.dumps(info), flush=True)


def recorded_commands(info: dict, out: str) -> list[list[str]] | None:
    """A model's recorded runs (the first, then each continuation) as argument lists that write (and continue)
    ``out``; None if some run was made before commands were recorded."""
    records = [info, *info.get("continued", [])]
    runs = [r.get("argv") for r in records]
    if any(r is None for r in runs):
        return None
    cmds = []
    for i, (argv, rec) in enumerate(zip(runs, records)):
        if info.get("world") == "paths" and "--sizes" not in argv:  # the sizes it drew, whatever SIZES is now
            argv = [*argv, "--sizes", ",".join(f"{v:g}" for v in rec.get("sizes", EARLIER_SIZES))]
        keep, skip = [], False
        for a in argv:  # drop the recorded folders; the command writes (and continues) ``out``
            if skip:
                skip = False
            elif a in ("--out", "--continue-from", "--save-raw", "--replay"):
                skip = True
            else:
                keep.append(a)
        cmds.append(keep + ["--out", out] + (["--continue-from", out] if i and "--decoder-only" not in keep else []))
    return cmds


def replay(record: Path, out: str) -> None:
    """Run a model's recorded commands again (the first run, then each continuation) into ``out``.

    Each run stops on its wall-clock budget, so the step counts, and with them the weights, depend on the machine.
    """
    info = json.loads(record.read_text())["info"]
    cmds = recorded_commands(info, out)
    if cmds is None:
        raise SystemExit(f"{record} has runs made before commands were recorded; rebuild by the card's commands")
    init = info.get("init_from")
    if init and init.get("unet_sha256") and _unet_sha(Path(init["folder"])) != init["unet_sha256"]:
        raise SystemExit(f"{record}: the first run started from the model then at {init['folder']} (UNet SHA-256 "
                         f"{init['unet_sha256'][:12]}...), which is no longer there: check out the revision that "
                         "shipped it, or point the recorded --init-from at a copy of it")
    for i, argv in enumerate(cmds):
        print(f"replay {i + 1}/{len(cmds)}: {' '.join(argv)}", flush=True)
        main(argv)


def _device_name(device: str) -> str:
    """What the card says the run trained on: "cpu", or the GPU's name."""
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def _save_raw(model: T2VModel, raw_params: list, folder: str | None, info: dict, log: list) -> None:
    """``--save-raw``: the same model with the trained (not averaged) UNet and text-encoder weights."""
    if not folder or not raw_params:
        return
    params = list(model.unet.parameters()) + list(model.text_encoder.parameters())
    kept = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, r in zip(params, raw_params):
            p.copy_(r)
        save_model(model, folder)
        for p, k in zip(params, kept):  # the caller's model keeps its averaged weights
            p.copy_(k)
    raw_info = json.loads(json.dumps(info))  # a copy whose last run says its weights were not averaged
    (raw_info["continued"][-1] if raw_info.get("continued") else raw_info)["ema_decay"] = 0.0
    raw_info["weights"] = "raw (not averaged); the averaged ones are the run's --out"
    rec = {"info": raw_info, "log": log}
    (Path(folder) / "training_info.json").write_text(json.dumps(rec, indent=1))


def _add_decoder(info: dict, dec: dict) -> None:
    """Decoder steps and seconds count on across runs, as UNet steps do."""
    info["decoder_steps"] = info.get("decoder_steps", 0) + dec["decoder_steps"]
    info["decoder_seconds"] = round(info.get("decoder_seconds", 0) + dec["decoder_seconds"], 1)


def _decoder_only(out: Path, args: argparse.Namespace) -> None:
    """The decoder stage alone, on a saved model (it appends to training_info.json)."""
    from motion_core.models import load_model

    t0 = time.time()
    rec = json.loads((out / "training_info.json").read_text())
    sizes = world_sizes(args.sizes, rec["info"].get("world", "shapes"), rec["info"])
    frames, _, masks = make_data(args.clips, args.seed, args.workers, rec["info"].get("world", "shapes"), sizes)
    weights = object_weights(masks, args.object_weight) if args.object_weight > 0 else None
    model = load_model(out, device=args.device, dtype="float32")
    info = rec["info"]
    _add_decoder(info, finetune_decoder(model.vae, frames, args.decoder_minutes, args.seed, rec["log"],
                                        weights=weights))
    info["wall_seconds"] = round(info["wall_seconds"] + time.time() - t0, 1)
    info.setdefault("continued", []).append({"from": str(out), "clips": args.clips, "decoder_only": True,
                                             "unet_minutes": 0, "decoder_minutes": args.decoder_minutes,
                                             "argv": args.argv, **({} if sizes is None else {"sizes": list(sizes)})})
    model.vae.save_pretrained(out / "vae")
    (out / "training_info.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec["info"]), flush=True)


if __name__ == "__main__":
    main()
