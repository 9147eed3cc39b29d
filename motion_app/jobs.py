"""What a job is: one unit of GPU work and its record, its states, its errors, and the messages users read.

Every piece of GPU work (training, inversion + sampling, checking an uploaded LoRA) is a *job*: a folder
``<store>/jobs/<id>/`` holding ``job.json`` (its state, written atomically), its inputs, checkpoints and results.
``store.JobStore`` keeps the folders; ``runner.Runner`` runs the queue, one job at a time; ``worker.Worker`` does
each kind's work with ``motion_core``. The page never runs work itself: it submits a job and polls its state, so
closing the tab stops nothing and reopening it (or a ``?job=<id>`` link) shows the job again.

Privacy: job ids are random (``secrets.token_urlsafe``), and every path is resolved and checked to stay inside
its job folder, so one person cannot reach another's files or anything outside the store.

No torch, no Gradio here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
TERMINAL = frozenset({DONE, FAILED, CANCELLED})
# secrets.token_urlsafe(16) gives 22 characters of [A-Za-z0-9_-]; accept a little more for other id makers.
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
JOB_FILE = "job.json"
CANCEL_FILE = "CANCEL"
LOG_FILE = "job.log"
SERVED_DIR = "served"  # the only folder of the store the web server may hand out (see JobStore.serve)
# What a user may download from a job: the LoRA and its config, generated videos, the motion-feature and
# motion-report pictures, the preview. Everything else in a job folder (job.json, job.log, checkpoints, latents,
# the upload) and in the store (browser_secret, speeds.json, runner.lock) is never served. Our own fixed pattern,
# matched on our own names.
SERVABLE_RE = re.compile(r"(?:train/)?(?:lora\.safetensors|config\.json)|(?:motion|base|pair)_\d{1,3}\.(?:mp4|gif)"
                         r"|features/(?:cross|temporal)_attention\.png|preview\.mp4|report_\d{1,3}\.png")
# Where a job keeps its run (``motion_core.rundir.RunDir``: LoRA, config.json, training log, checkpoint, reference
# latents, inversion cache), inside its folder: a training run in train/, an uploaded LoRA in the job folder itself.
RUN_FOLDERS = {"train": "train", "import": ""}
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".gif"})
LORA_EXTENSIONS = frozenset({".safetensors"})


class JobError(ValueError):
    """A request about a job cannot be served (unknown id, bad path, bad upload); the message is for the user."""


class UploadError(JobError):
    """An uploaded file is refused (wrong type, too large, not a video); the message says why."""


class JobCancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a job when the user cancelled it."""


class RunnerStopped(Exception):  # noqa: N818
    """Raised inside a job when the app is shutting down: the job goes back to the queue, not to 'cancelled'."""


def now() -> float:
    return time.time()


@dataclass
class Job:
    """One unit of GPU work and everything the page needs to show it; saved as ``job.json``."""

    id: str
    kind: str  # "train", "sample", "import" (see worker.Worker)
    state: str = QUEUED
    seq: int = 0  # queue order: creation time in ns, so the oldest job runs first
    created: float = 0.0
    updated: float = 0.0
    started: float | None = None
    finished: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None  # a sample job's training (or import) job
    phase: str = "waiting"
    progress: dict[str, Any] = field(default_factory=dict)  # step, total, loss, parts, steps_per_sec, eta_sec
    message: str = ""  # what the user should read: why it failed, that it was resumed, ...
    log_tail: list[str] = field(default_factory=list)  # last log lines, kept with a failure
    results: dict[str, Any] = field(default_factory=dict)  # file names relative to the job folder, numbers
    attempts: int = 0  # how many times a worker started it (restarts included)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        # Unknown keys are dropped so a store written by a newer version still loads.
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a half-written one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # a power cut after the rename must not leave an empty job.json
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def user_message(err: BaseException) -> str:
    """What a failed job tells the user: the library's own readable messages as they are, a hint for
    out-of-memory, and for anything unexpected the error's type and text (never a stack trace)."""
    name = type(err).__name__
    text = str(err).strip() or name
    if name == "OutOfMemoryError" or isinstance(err, MemoryError):
        return ("Out of memory. Try fewer frames or a smaller size, a lower LoRA rank, fewer videos at once, or a "
                "machine with more (GPU) memory. The last checkpoint is kept. " + text[:300])
    mod = type(err).__module__ or ""
    if isinstance(err, ValueError) or mod.startswith(("motion_core", "motion_app")):
        return text[:2000]
    return f"Internal error ({name}): {text[:500]}"
