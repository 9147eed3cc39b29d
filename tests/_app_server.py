"""Helpers for the app tests: a reference clip at the tiny model's size, and the app run as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_clip(path: Path, frames: int = 12, size: int = 32, fps: float = 8.0) -> Path:
    """A red square moving right across a dark background: long enough for the tiny model's 8 frames at 8 fps."""
    import torch

    from motion_core.video import write_mp4

    x = torch.zeros(frames, 3, size, size)
    x[:, 2] = 0.15
    for k in range(frames):
        left = 2 + 2 * k
        x[k, :, 10:20, left:left + 8] = torch.tensor([1.0, 0.1, 0.1]).view(3, 1, 1)
    return write_mp4(x, path, fps=fps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``python app.py`` on a free port; ``start()`` returns once it prints that it is serving."""

    def __init__(self, model: Path, store: Path, *extra: str) -> None:
        self.model, self.store, self.extra = model, store, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.ready_sec: float | None = None

    def start(self, timeout: float = 90.0) -> AppServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
        # One intra-op thread: on a busy 2-core machine two OpenMP threads that wait for each other made a tiny
        # training step 20x slower (8 s instead of 0.4 s, measured); the tiny model gains nothing from two.
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "app.py", "--model", str(self.model), "--job-store", str(self.store),
               "--port", str(self.port), *self.extra]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        threading.Thread(target=self._read, daemon=True).start()
        while time.perf_counter() - t0 < timeout:
            if any("MOTION_MATCHER_READY" in ln for ln in self.lines):
                self.ready_sec = time.perf_counter() - t0
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the app did not start:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def kill(self) -> None:
        """SIGKILL: the app gets no chance to tidy up, as in a crash or a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return "".join(self.lines)
