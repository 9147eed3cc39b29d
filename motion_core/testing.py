"""Tiny real models for tests: the library's own diffusers/transformers classes at toy size, built in-process.

No download and well under a second on a CPU, so tests of code built on ``motion_core`` (training, sampling, LoRA
files, an app around them) can run everywhere:

    from motion_core.testing import build_tiny_model
    model = build_tiny_model(seed=0)          # 8 frames of 32 x 32, random weights, a 22-word vocabulary
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextConfig, CLIPTextModel

from motion_core.models import T2VModel, UNet3DWithPeft, build_word_tokenizer, default_capture_blocks

TINY_WORDS = ["a", "an", "red", "green", "blue", "yellow", "circle", "square", "triangle", "star", "on",
              "background", "striped", "dotted", "moving", "left", "right", "up", "down", "dog", "cat", "car"]


def build_tiny_model(
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (16, 32),
    layers_per_block: int = 1,
    cross_attention_dim: int = 16,
    heads: int = 2,
    vae_channels: tuple[int, ...] = (8, 16),
    text_layers: int = 2,
    words: list[str] | None = None,
    video_defaults: dict[str, Any] | None = None,
    capture_blocks: tuple[str, ...] | None = None,
) -> T2VModel:
    """Real diffusers/transformers classes at toy size, with deterministic random weights.

    The last down block has no attention (as in Zeroscope), so the capture block is ``down_blocks.{n-2}``.
    """
    torch.manual_seed(seed)
    n = len(block_out_channels)
    groups = min(4, min(block_out_channels))
    unet = UNet3DWithPeft(
        sample_size=None,
        in_channels=4,
        out_channels=4,
        down_block_types=tuple(["CrossAttnDownBlock3D"] * (n - 1) + ["DownBlock3D"]),
        up_block_types=tuple(["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (n - 1)),
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        norm_num_groups=groups,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=heads,  # diffusers' naming quirk: this is the number of heads
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=tuple(["DownEncoderBlock2D"] * len(vae_channels)),
        up_block_types=tuple(["UpDecoderBlock2D"] * len(vae_channels)),
        block_out_channels=vae_channels,
        latent_channels=4,
        norm_num_groups=min(4, min(vae_channels)),
        layers_per_block=1,
        sample_size=32,
    )
    tokenizer = build_word_tokenizer(words or TINY_WORDS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=cross_attention_dim,
        intermediate_size=cross_attention_dim * 4,
        num_hidden_layers=text_layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    ))
    # Zeroscope's schedule (STACK.md): scaled-linear betas 0.00085 -> 0.012, epsilon prediction.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    blocks = capture_blocks or default_capture_blocks(unet)
    vd = {"num_frames": 8, "fps": 8.0, "height": 32, "width": 32} | (video_defaults or {})
    return T2VModel(unet, vae, text_encoder, tokenizer, scheduler, f"tiny-seed{seed}", tuple(blocks), vd)
