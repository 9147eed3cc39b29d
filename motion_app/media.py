"""Pictures and videos the jobs make: the reference's motion-feature pictures, the LoRA | base comparison, the preview.

``worker.Worker`` calls these from its jobs; ``service.MotionService`` writes the preview of an upload with
``write_preview`` before it queues a job (so a clip that is too short is refused at once, under the user's file
name). The figures themselves are drawn by ``figures`` (numpy and matplotlib only).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motion_core.attention import MotionFeatureExtractor
from motion_core.config import RunConfig, VideoConfig
from motion_core.ddim import add_noise
from motion_core.lora_io import read_lora
from motion_core.models import T2VModel, encode_prompt
from motion_core.video import read_video, to_uint8, write_mp4

from . import figures

PREVIEW = "preview.mp4"
FEATURES = {"ca": "features/cross_attention.png", "tsa": "features/temporal_attention.png"}


@torch.no_grad()
def feature_pictures(model: T2VModel, frames: torch.Tensor, z0: torch.Tensor, caption: str, cfg: RunConfig,
                     out_dir: Path) -> None:
        """The reference's motion features as the extractor sees them at one noise level of the training range:
        cross-attention maps of the caption's words over the frames, and temporal attention heat maps."""
        lo, hi = cfg.loss.t_range(model.num_train_timesteps)
        t = torch.tensor([lo + (hi - lo) // 4], device=model.device)  # noisy enough to be in range, clear enough
        eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
        z_t = add_noise(model.scheduler, z0.float(), eps, t.cpu()).to(model.device)
        text = encode_prompt(model, caption)
        ext = MotionFeatureExtractor(model, cfg.loss.capture_blocks)
        try:
            feats = ext(z_t, t, text)
        finally:
            ext.remove()
        ca = feats.ca[0].float().cpu().numpy()  # (F, HW, 77)
        tsa = feats.tsa[0].float().cpu().numpy()  # (HW, F, F)
        grid = _capture_grid(ext.blocks, z0.shape[3], z0.shape[4])
        if grid is not None and grid[0] * grid[1] < ca.shape[1]:
            hw = grid[0] * grid[1]  # several capture blocks are concatenated: picture the first one
            ca, tsa = ca[:, :hw], tsa[:hw]
        elif grid is not None and grid[0] * grid[1] != ca.shape[1]:
            grid = None
        tokens = model.tokenizer.tokenize(caption)[: ca.shape[2] - 2]
        words = figures.caption_words(tokens)
        rgb = to_uint8(frames)
        figures.save(figures.cross_attention_picture(rgb, ca, words, grid), out_dir / FEATURES["ca"])
        figures.save(figures.temporal_attention_picture(tsa, ca, words), out_dir / FEATURES["tsa"])


def _capture_grid(blocks: tuple[str, ...], h: int, w: int) -> tuple[int, int] | None:
    """The attention map size of the first capture block: each down block before it halves the latent size."""
    m = re.fullmatch(r"down_blocks\.(\d+)", blocks[0]) if blocks else None
    if m is None:
        return None
    k = int(m.group(1))
    return max(1, h >> k), max(1, w >> k)


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

