"""Pictures and videos the jobs make: the reference's motion-feature pictures, the LoRA | base comparison, the preview.

``worker.Worker`` calls these from its jobs; ``service.MotionService`` writes the preview of an upload with
``write_preview`` before it queues a job (so a clip that is too short is refused at once, under the user's file
name). The figures themselves are drawn by ``figures`` (numpy and matplotlib only).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motion_core.attention import feature_grid, reference_features
from motion_core.config import RunConfig, VideoConfig
from motion_core.lora_io import read_lora
from motion_core.models import T2VModel
from motion_core.video import read_video, to_uint8, write_mp4

from . import figures

PREVIEW = "preview.mp4"
FEATURES = {"ca": "features/cross_attention.png", "tsa": "features/temporal_attention.png"}


def feature_pictures(model: T2VModel, frames: torch.Tensor, z0: torch.Tensor, caption: str, cfg: RunConfig,
                     out_dir: Path) -> None:
    """The reference's motion features as the extractor sees them at one noise level of the training range
    (``motion_core.attention.reference_features``): cross-attention maps of the caption's words over the frames,
    and temporal attention heat maps. Several capture blocks: the first one's."""
    lo, hi = cfg.loss.t_range(model.num_train_timesteps)
    t = lo + (hi - lo) // 4  # noisy enough to be in range, clear enough to show the clip
    feats = reference_features(model, z0, caption, t, cfg.loss.capture_blocks, seed=0).block(0)
    ca = feats.ca[0].float().cpu().numpy()  # (F, HW, 77)
    tsa = feats.tsa[0].float().cpu().numpy()  # (HW, F, F)
    grid = feature_grid(ca.shape[1], z0.shape[3], z0.shape[4])  # None: figures guesses from the frame's shape
    tokens = model.tokenizer.tokenize(caption)[: ca.shape[2] - 2]
    words = figures.caption_words(tokens)
    rgb = to_uint8(frames)
    figures.save(figures.cross_attention_picture(rgb, ca, words, grid), out_dir / FEATURES["ca"])
    figures.save(figures.temporal_attention_picture(tsa, ca, words), out_dir / FEATURES["tsa"])


# ----------------------------------------------------------------------------------------- video helpers


def side_by_side(a: torch.Tensor, b: torch.Tensor, labels: tuple[str, str] = ("motion LoRA", "base model"),
                 min_side: int = 192) -> np.ndarray:
    """Two clips (F, 3, H, W) next to each other, labelled, enlarged by a whole factor (nearest neighbour, so
    small models' pixels stay crisp) until the shorter side reaches ``min_side``. Returns uint8 (F, H', W', 3)."""
    from PIL import Image, ImageDraw, ImageFont

    x, y = to_uint8(a), to_uint8(b)
    n, h, w, _ = x.shape
    k = max(1, math.ceil(min_side / min(h, w)))
    x = x.repeat(k, axis=1).repeat(k, axis=2)
    y = y.repeat(k, axis=1).repeat(k, axis=2)
    gap, strip = 6, 20
    out = np.full((n, h * k + strip, 2 * w * k + gap, 3), 255, np.uint8)
    out[:, strip:, : w * k] = x
    out[:, strip:, w * k + gap:] = y
    banner = Image.new("RGB", (out.shape[2], strip), "white")
    draw = ImageDraw.Draw(banner)
    font = ImageFont.load_default()
    for i, text in enumerate(labels):
        draw.text((i * (w * k + gap) + 4, 4), text, fill=(0, 0, 0), font=font)
    out[:, :strip] = np.asarray(banner)
    return out


def lora_meta_of(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a LoRA file (no model needed); ``LoraFileError`` for files that are not ours."""
    return read_lora(path)[1]


def write_preview(path_in: str | os.PathLike, vcfg: VideoConfig, out: Path) -> torch.Tensor:
    """Read the clip as training will and write it as an MP4 (what the page shows as 'as the model sees it')."""
    frames = read_video(path_in, vcfg)
    k = max(1, math.ceil(192 / min(vcfg.height, vcfg.width)))  # tiny clips are enlarged to be visible
    big = to_uint8(frames).repeat(k, axis=1).repeat(k, axis=2) if k > 1 else frames
    write_mp4(big, out, vcfg.fps)
    return frames

