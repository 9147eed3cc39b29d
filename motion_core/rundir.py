"""A training run's folder: every file name in one place, the reference prepared once, where a resumed run stands.

    run = RunDir("runs/dog")
    z0 = run.prepare_reference(model, frames, fps=8)   # reference.mp4 + reference_latents.pt, written atomically
    train_lora(model, z0, caption, run.path, cfg)       # lora.safetensors, config.json, train_log.jsonl, checkpoint
    run.steps_done()                                    # from the log: where a resume would start

The CLI's ``--out`` folder and the app's ``<job>/train`` folder are both a ``RunDir``; ``train_lora`` writes through
it, so the three agree on names by construction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .models import T2VModel, encode_video

LORA_FILE = "lora.safetensors"
CONFIG_FILE = "config.json"
LOG_FILE = "train_log.jsonl"
CHECKPOINT = "checkpoint.pt"
REFERENCE_VIDEO = "reference.mp4"
REFERENCE_LATENTS = "reference_latents.pt"
INVERSION_CACHE = "inversion"


@dataclass(frozen=True)
class RunDir:
    """The files of one run, by role. Nothing is created until something is written."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def lora(self) -> Path:
        return self.path / LORA_FILE

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def reference_video(self) -> Path:
        return self.path / REFERENCE_VIDEO

    @property
    def reference_latents(self) -> Path:
        return self.path / REFERENCE_LATENTS

    @property
    def inversion_cache(self) -> Path:
        """Inverted noise by (model, latents, steps, LoRA on/off): ``sample.invert_cached``'s folder."""
        return self.path / INVERSION_CACHE

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def prepare_reference(self, model: T2VModel, frames: torch.Tensor, fps: float) -> torch.Tensor:
        """Write the clip as the model sees it (``reference.mp4``) and its latents; return the latents.

        Both files are written under a temporary name and renamed, so a run killed half-way never leaves a
        truncated reference that a resume would then train on.
        """
        from .video import write_mp4

        self.path.mkdir(parents=True, exist_ok=True)
        tmp_video = self.path / f".{REFERENCE_VIDEO}.tmp.mp4"
        write_mp4(frames, tmp_video, fps=fps)
        os.replace(tmp_video, self.reference_video)
        z0 = encode_video(model, frames)
        self.save_latents(z0)
        return z0

    def save_latents(self, z0: torch.Tensor) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{REFERENCE_LATENTS}.tmp"
        torch.save(z0.detach().cpu(), tmp)
        os.replace(tmp, self.reference_latents)

    def load_latents(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The saved reference latents, or None when the run has none yet."""
        if not self.reference_latents.is_file():
            return None
        return torch.load(self.reference_latents, map_location=device, weights_only=True)

    def log_records(self) -> list[dict[str, Any]]:
        """The training log, one record per step done (a line cut short by a crash is skipped)."""
        if not self.log.is_file():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def steps_done(self) -> int:
        """The last step the log records: where the run stands (a resume restarts at its checkpoint, at most
        ``checkpoint_every`` steps earlier, and rewrites the log from there)."""
        recs = self.log_records()
        return int(recs[-1].get("step", len(recs))) if recs else 0

    def finished(self) -> bool:
        return self.lora.is_file()
