"""The on-disk job store: job folders, their records, paths that cannot leave them, served files, uploads.

Because all state is on disk, an app restart loses nothing: on start-up a job found ``running`` (the app
died under it) goes back to the queue and resumes from its last checkpoint; one that keeps killing the app is
marked failed after a few attempts, so no job stays ``running`` forever. Cancelling touches a ``CANCEL`` file
that the running job checks every step, which also works when the work runs in another process (ZeroGPU).

This module knows nothing about torch, the model or Gradio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .jobs import (
    CANCEL_FILE,
    CANCELLED,
    FAILED,
    JOB_FILE,
    JOB_ID_RE,
    LOG_FILE,
    QUEUED,
    RUN_FOLDERS,
    RUNNING,
    SERVABLE_RE,
    SERVED_DIR,
    TERMINAL,
    VIDEO_EXTENSIONS,
    Job,
    JobError,
    UploadError,
    atomic_write_text,
    now,
)

if TYPE_CHECKING:
    from motion_core.rundir import RunDir

SPEEDS_FILE = "speeds.json"  # measured training speed per model, for the estimate before a run


class JobStore:
    """Jobs as folders under ``root/jobs``; uploads awaiting a job under ``root/uploads``.

    Thread-safe within one process: every read-modify-write of a job holds one lock.
    """

    def __init__(self, root: str | os.PathLike, ttl_hours: float = 72.0, max_upload_mb: float = 200.0,
                 max_attempts: int = 3) -> None:
        self.root = Path(root).expanduser().resolve()
        self.jobs_root = self.root / "jobs"
        self.uploads_root = self.root / "uploads"
        self.served_root = self.root / SERVED_DIR
        for d in (self.jobs_root, self.uploads_root, self.served_root):
            d.mkdir(parents=True, exist_ok=True)
        self.ttl_hours = ttl_hours
        self.max_upload_mb = max_upload_mb
        self.max_attempts = max_attempts
        self._lock = threading.RLock()
        self._seq_last = 0
        # id -> (job.json's inode, mtime, size; Job): polling pages list jobs every second, so only changed files
        # are parsed again. Every write replaces the file (a new inode), so a change is seen even within one
        # timestamp tick; read-modify-write still reads afresh (fresh=True).
        self._cache: dict[str, tuple[tuple[int, int, int], Job]] = {}

    # ------------------------------------------------------------------------------------------ paths

    def _check_id(self, job_id: Any) -> str:
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
            shown = job_id[:80] if isinstance(job_id, str) else type(job_id).__name__
            raise JobError(f"{shown!r} is not a job id (ids look like 'Xk3v9...' and come from Start or Generate).")
        return job_id

    def job_dir(self, job_id: str, must_exist: bool = True) -> Path:
        """The job's folder, refusing anything that is not a plain folder directly inside the store."""
        job_id = self._check_id(job_id)
        path = (self.jobs_root / job_id).resolve()
        # resolve() follows symlinks: a job folder that is a link to elsewhere lands outside and is refused.
        if path.parent != self.jobs_root:
            raise JobError(f"job {job_id} is refused: its folder is not inside the job store")
        if must_exist and not (path / JOB_FILE).is_file():
            raise JobError(f"There is no job {job_id} here. Jobs are removed {self.ttl_hours:g} h after they "
                           f"finish; start a new one.")
        return path

    def path_in(self, job_id: str, rel: str | os.PathLike) -> Path:
        """``rel`` inside the job's folder, refusing absolute paths, ``..`` and symlinks that lead out."""
        base = self.job_dir(job_id)
        rel_s = os.fspath(rel)
        p = Path(rel_s)
        if not rel_s or p.is_absolute() or p.drive or ".." in p.parts:
            raise JobError(f"refused the path {rel_s!r}: only names inside the job's own folder are allowed")
        resolved = (base / p).resolve()
        if resolved != base and not resolved.is_relative_to(base):
            raise JobError(f"refused the path {rel_s!r}: it leads outside the job's folder")
        return resolved

    def file_in(self, job_id: str, rel: str | os.PathLike) -> Path:
        """Like ``path_in`` but the file must exist."""
        p = self.path_in(job_id, rel)
        if not p.is_file():
            raise JobError(f"job {job_id} has no file {os.fspath(rel)!r}")
        return p

    def run_dir(self, job: Job) -> RunDir:
        """The job's run folder (``RUN_FOLDERS``): the library's names for its LoRA, log, checkpoint, latents."""
        from motion_core.rundir import RunDir  # lazy: it imports torch

        if job.kind not in RUN_FOLDERS:
            raise JobError(f"a {job.kind} job has no run folder")
        return RunDir(self.job_dir(job.id) / RUN_FOLDERS[job.kind])

    def serve(self, job_id: str, rel: str) -> Path:
        """A result file of a job, as a path the web server may hand out: a hard link (a copy where the file
        system has none) under ``served/<job id>/``. Only names on the allow-list (``SERVABLE_RE``) pass; the
        web server is only ever allowed ``served/``, so the store's own files cannot be fetched by URL."""
        if not isinstance(rel, str) or not SERVABLE_RE.fullmatch(rel):
            raise JobError(f"{str(rel)[:80]!r} is not a file this app hands out")
        src = self.file_in(job_id, rel)
        dest = self.served_root / job_id / rel
        with contextlib.suppress(OSError):  # already served and unchanged (pages poll every second)
            a, b = src.stat(), dest.stat()
            if (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns):
                return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)  # keeps the time stamp, which says the copy is current
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return dest

    def new_preview_dir(self) -> Path:
        """A fresh folder for a preview the page shows (servable: it holds only what the app wrote there)."""
        d = self.served_root / "previews" / secrets.token_urlsafe(16)
        d.mkdir(parents=True)
        return d

    # ---------------------------------------------------------------------------------------- records

    def _next_seq(self) -> int:
        with self._lock:
            self._seq_last = max(time.time_ns(), self._seq_last + 1)
            return self._seq_last

    def new_id(self) -> str:
        while True:
            job_id = secrets.token_urlsafe(16)
            if not (self.jobs_root / job_id).exists():
                return job_id

    def create(self, kind: str, params: dict[str, Any] | None = None, parent: str | None = None,
               files: dict[str, str | os.PathLike] | None = None, state: str = QUEUED,
               prepare: Callable[[Path], dict[str, Any] | None] | None = None) -> Job:
        """Make a job folder, copy ``files`` (name in the job -> source path) into it and queue it.

        ``prepare(job_dir)`` runs before the job becomes visible to the worker (e.g. to write a preview) and may
        return extra params. If anything fails, the half-made folder is removed and nothing is queued.
        """
        job_id = self.new_id()
        d = self.jobs_root / job_id
        d.mkdir(parents=True)
        try:
            for name, src in (files or {}).items():
                dest = self.path_in_new(d, name)
                shutil.copyfile(src, dest)
            params = dict(params or {})
            if prepare is not None:
                params.update(prepare(d) or {})
            t = now()
            job = Job(id=job_id, kind=kind, state=state, seq=self._next_seq(), created=t, updated=t, params=params,
                      parent=parent, finished=t if state in TERMINAL else None)
            self._write(job)  # job.json last: the worker only sees complete jobs
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        return job

    @staticmethod
    def path_in_new(base: Path, name: str) -> Path:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts or len(p.parts) != 1:
            raise JobError(f"refused the file name {name!r}")
        return base / p

    def _write(self, job: Job) -> None:
        d = self.jobs_root / job.id
        atomic_write_text(d / JOB_FILE, json.dumps(job.to_dict(), indent=1, default=str))

    def load(self, job_id: str, fresh: bool = False) -> Job:
        d = self.job_dir(job_id)
        path = d / JOB_FILE
        try:
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            hit = self._cache.get(job_id)
            if not fresh and hit is not None and hit[0] == key:
                return dataclasses.replace(hit[1])
            job = Job.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:
            raise JobError(f"job {job_id} cannot be read ({err}); its files are kept") from err
        self._cache[job_id] = (key, job)
        return dataclasses.replace(job)

    def update(self, job_id: str, **fields: Any) -> Job:
        with self._lock:
            job = self.load(job_id, fresh=True)
            for k, v in fields.items():
                if not hasattr(job, k):
                    raise AttributeError(f"Job has no field {k!r}")
                setattr(job, k, v)
            job.updated = now()
            self._write(job)
            return job

    def finish(self, job_id: str, state: str, message: str = "", results: dict[str, Any] | None = None) -> Job:
        assert state in TERMINAL
        fields: dict[str, Any] = {"state": state, "finished": now(), "message": message}
        if results is not None:
            fields["results"] = results
        if state == FAILED:
            fields["log_tail"] = self.log_tail(job_id)
        job = self.update(job_id, **fields)
        with contextlib.suppress(OSError):
            (self.job_dir(job_id) / CANCEL_FILE).unlink(missing_ok=True)
        return job

    def list_jobs(self) -> list[Job]:
        out = []
        for d in self.jobs_root.iterdir():
            if JOB_ID_RE.fullmatch(d.name) and (d / JOB_FILE).is_file():
                with contextlib.suppress(JobError):
                    out.append(self.load(d.name))
        return sorted(out, key=lambda j: j.seq)

    def queued(self) -> list[Job]:
        return [j for j in self.list_jobs() if j.state == QUEUED]

    def children(self, parent_id: str) -> list[Job]:
        return [j for j in self.list_jobs() if j.parent == parent_id]

    def queue_position(self, job_id: str) -> int | None:
        """How many jobs run or wait before this one (0: it is next), or None when it is not queued."""
        jobs = self.list_jobs()
        me = next((j for j in jobs if j.id == job_id), None)
        if me is None or me.state != QUEUED:
            return None
        return sum(1 for j in jobs if j.state == RUNNING or (j.state == QUEUED and j.seq < me.seq))

    # ------------------------------------------------------------------------------------ cancel, log

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; ask a running one to stop at its next step. Finished jobs are left alone."""
        with self._lock:
            job = self.load(job_id, fresh=True)
            if job.state == QUEUED:
                return self.finish(job_id, CANCELLED, "Cancelled before it started.")
            if job.state == RUNNING:
                (self.job_dir(job_id) / CANCEL_FILE).touch()
                return self.update(job_id, message="Stopping at the next step…")
            return job

    def cancel_requested(self, job_id: str) -> bool:
        return (self.jobs_root / job_id / CANCEL_FILE).exists()

    def append_log(self, job_id: str, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self._lock, (self.job_dir(job_id) / LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")

    def log_tail(self, job_id: str, n: int = 12) -> list[str]:
        path = self.job_dir(job_id) / LOG_FILE
        if not path.is_file():
            return []
        # The log holds short lines written by us (phases, warnings); reading the end is enough.
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return lines[-n:]

    # ------------------------------------------------------------------------------- restart, cleanup

    def recover(self) -> list[str]:
        """Fix jobs a dead app left ``running``: re-queue them (they resume from their checkpoint), or fail
        them after ``max_attempts`` starts so a job that crashes the app cannot loop forever. Returns their ids."""
        fixed = []
        for job in self.list_jobs():
            if job.state != RUNNING:
                continue
            fixed.append(job.id)
            if self.cancel_requested(job.id):
                self.finish(job.id, CANCELLED, "Cancelled (the app restarted while it was stopping).")
            elif job.attempts >= self.max_attempts:
                self.append_log(job.id, f"ERROR: the app stopped {job.attempts} times while running this job")
                self.finish(job.id, FAILED, (
                    f"The app stopped {job.attempts} times while running this job (last phase: {job.phase}), so "
                    "it was given up. It may need more memory than this machine has; try fewer steps, a lower "
                    "rank or a smaller model."))
            else:
                self.append_log(job.id, "the app restarted; the job goes back to the queue and resumes")
                self.update(job.id, state=QUEUED, phase="waiting",
                            message="The app restarted during this job; it resumes from its last checkpoint.")
        return fixed

    def cleanup(self, at: float | None = None) -> list[str]:
        """Remove finished jobs and stale uploads older than the time to live. Queued and running jobs stay."""
        at = now() if at is None else at
        limit = at - self.ttl_hours * 3600
        removed = []
        for job in self.list_jobs():
            if job.terminal and (job.finished or job.updated) < limit:
                with self._lock:
                    shutil.rmtree(self.job_dir(job.id), ignore_errors=True)
                    shutil.rmtree(self.served_root / job.id, ignore_errors=True)
                    self._cache.pop(job.id, None)
                removed.append(job.id)
        previews = self.served_root / "previews"
        for d in [*self.uploads_root.iterdir(), *(previews.iterdir() if previews.is_dir() else [])]:
            with contextlib.suppress(OSError):
                if d.lstat().st_mtime >= limit:
                    continue
                if d.is_dir() and not d.is_symlink():
                    shutil.rmtree(d)
                else:
                    d.unlink()
        return removed

    # ------------------------------------------------------------------------------------------ speeds

    def speeds(self) -> dict[str, float]:
        """Measured training steps per second by model source, for the estimate shown before a run."""
        try:
            return {k: float(v) for k, v in json.loads((self.root / SPEEDS_FILE).read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def record_speed(self, source: str, rate: float) -> None:
        if rate > 0 and math.isfinite(rate):
            speeds = self.speeds()
            speeds[source] = rate
            with contextlib.suppress(OSError):
                atomic_write_text(self.root / SPEEDS_FILE, json.dumps(speeds, indent=1))

    # ----------------------------------------------------------------------------------------- uploads

    def check_upload(self, path: str | os.PathLike | None, allowed: frozenset[str], what: str) -> Path:
        """Refuse a missing, oversized or wrongly typed upload before anything reads it. Returns its path."""
        if path is None or not os.fspath(path):
            raise UploadError(f"No {what} was given: upload one first.")
        p = Path(path)
        if not p.is_file():
            raise UploadError(f"The {what} upload is missing on the server; upload it again.")
        ext = p.suffix.lower()
        if ext not in allowed:
            raise UploadError(f"{p.name!r} is not a {what} this app takes: use one of {', '.join(sorted(allowed))}.")
        mb = p.stat().st_size / 2**20
        if mb > self.max_upload_mb:
            raise UploadError(f"{p.name!r} is {mb:.1f} MB; uploads over {self.max_upload_mb:g} MB are refused.")
        if mb == 0:
            raise UploadError(f"{p.name!r} is empty (0 bytes).")
        return p

    def check_video_upload(self, path: str | os.PathLike | None) -> Path:
        """Extension and size first (cheap), then ffmpeg's probe: a renamed text file is refused here."""
        p = self.check_upload(path, VIDEO_EXTENSIONS, "video")
        from motion_core.video import probe_video  # lazy: keeps torch out of the app's start-up path

        probe_video(p)  # raises VideoError subclasses with readable messages
        return p

    def new_upload_dir(self) -> Path:
        d = self.uploads_root / secrets.token_urlsafe(16)
        d.mkdir(parents=True)
        return d

