"""The on-disk job store and the single GPU worker: queue, progress, cancel, resume after a restart, cleanup.

Every piece of GPU work (training, inversion + sampling, checking an uploaded LoRA) is a *job*: a folder
``<store>/jobs/<id>/`` holding ``job.json`` (its state, written atomically), its inputs, checkpoints and results.
One worker thread runs one job at a time, oldest first, so training and generation never share the GPU. The
page never runs work itself: it submits a job and polls its state, so closing the tab stops nothing and
reopening it (or a ``?job=<id>`` link) shows the job again.

Because all state is on disk, an app restart loses nothing: on start-up a job found ``running`` (the app
died under it) goes back to the queue and resumes from its last checkpoint; one that keeps killing the app is
marked failed after a few attempts, so no job stays ``running`` forever. Cancelling touches a ``CANCEL`` file
that the running job checks every step, which also works when the work runs in another process (ZeroGPU).

Privacy: job ids are random (``secrets.token_urlsafe``), and every path is resolved and checked to stay inside
its job folder, so one person cannot reach another's files or anything outside the store.

This module knows nothing about torch or the model: ``motion_app.work`` supplies one executor per job kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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
    kind: str  # "train", "sample", "import" (see motion_app.work)
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


# ------------------------------------------------------------------------------------------------ runner


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


Executor = Callable[["JobContext"], dict[str, Any] | None]


class JobContext:
    """What an executor sees of its job: parameters, folder, progress reporting and the stop checks."""

    def __init__(self, runner: Runner, job: Job) -> None:
        self.runner = runner
        self.store = runner.store
        self.job = job
        self.id = job.id
        self.dir = self.store.job_dir(job.id)
        self._last_write = 0.0
        self.progress_every = 0.5  # seconds: enough for a page polling once a second, cheap for fast steps

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def path(self, rel: str) -> Path:
        return self.store.path_in(self.id, rel)

    def log(self, line: str) -> None:
        self.store.append_log(self.id, line)

    def phase(self, name: str, **progress: Any) -> None:
        self.check()
        self.log(name)
        self.job = self.store.update(self.id, phase=name, progress=progress)
        self._last_write = time.monotonic()

    def progress(self, force: bool = False, **fields: Any) -> None:
        t = time.monotonic()
        if force or t - self._last_write >= self.progress_every:
            self.job = self.store.update(self.id, progress=fields)
            self._last_write = t

    def should_stop(self) -> bool:
        return self.runner.stopping or self.store.cancel_requested(self.id)

    def check(self) -> None:
        """Raise at a safe point if the user cancelled or the app is shutting down."""
        if self.store.cancel_requested(self.id):
            raise JobCancelled
        if self.runner.stopping:
            raise RunnerStopped


class Runner:
    """One worker thread running queued jobs oldest first, one at a time.

    ``warmup`` runs first in the worker thread (e.g. loading the model) so the page serves at once and the
    first job does not pay for it; its error, if any, is kept in ``warmup_error`` for the page to show.
    """

    def __init__(self, store: JobStore, executors: dict[str, Executor], warmup: Callable[[], None] | None = None,
                 cleanup_every_sec: float = 3600.0, idle_wait_sec: float = 1.0) -> None:
        self.store = store
        self.executors = dict(executors)
        self.warmup = warmup
        self.warmup_error: str | None = None
        self.warmup_done = threading.Event()
        self.cleanup_every_sec = cleanup_every_sec
        self.idle_wait_sec = idle_wait_sec
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file: Any = None
        self.current: str | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> Runner:
        self._acquire_store_lock()
        fixed = self.store.recover()
        if fixed:
            log.info("job store: %d job(s) left running by a previous app were fixed: %s", len(fixed), fixed)
        removed = self.store.cleanup()
        if removed:
            log.info("job store: removed %d old job(s)", len(removed))
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="motion-matcher-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the worker: a running job is interrupted at its next step and goes back to the queue."""
        self._stop.set()
        self.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # e.g. a model still loading: it stops at its next check
                log.warning("the worker did not stop within %.0f s; it ends after its current step", timeout)
        self._release_store_lock()

    def _acquire_store_lock(self) -> None:
        # Two apps on one store would both resume the same "running" job and corrupt its checkpoint.
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one app per store is then the user's duty
            return
        f = open(self.store.root / "runner.lock", "a+")  # noqa: SIM115 - held open for the runner's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            f.close()
            raise JobError(f"Another app is already using the job store {self.store.root}; give each app its own "
                           "--job-store.") from err
        self._lock_file = f

    def _release_store_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def submit(self, kind: str, params: dict[str, Any] | None = None, parent: str | None = None,
               files: dict[str, str | os.PathLike] | None = None,
               prepare: Callable[[Path], dict[str, Any] | None] | None = None) -> Job:
        if kind not in self.executors:
            raise JobError(f"unknown job kind {kind!r}")
        job = self.store.create(kind, params, parent=parent, files=files, prepare=prepare)
        self.store.append_log(job.id, f"queued ({kind})")
        self.notify()
        return job

    def notify(self) -> None:
        """Wake the worker: a job was queued (or re-queued) outside ``submit``."""
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: str) -> Job:
        return self.store.request_cancel(job_id)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.2) -> Job:
        """Block until the job is finished (for API calls that return results); returns its final state."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.store.load(job_id)
            if job.terminal or (end is not None and time.monotonic() > end):
                return job
            time.sleep(poll)

    # ------------------------------------------------------------------------------------------ worker

    def _loop(self) -> None:
        if self.warmup is not None:
            try:
                self.warmup()
            except Exception as err:  # shown on the page; jobs will report the same error when they run
                self.warmup_error = user_message(err)
                log.warning("warm-up failed: %s", self.warmup_error)
        self.warmup_done.set()
        last_cleanup = time.monotonic()
        while not self._stop.is_set():
            job = next(iter(self.store.queued()), None)
            if job is None:
                if time.monotonic() - last_cleanup > self.cleanup_every_sec:
                    last_cleanup = time.monotonic()
                    with contextlib.suppress(OSError):
                        self.store.cleanup()
                with self._wake:
                    self._wake.wait(self.idle_wait_sec)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        store = self.store
        try:
            job = store.update(job.id, state=RUNNING, started=job.started or now(), attempts=job.attempts + 1,
                               phase="starting", message="")
        except JobError:  # removed meanwhile
            return
        self.current = job.id
        store.append_log(job.id, f"started (attempt {job.attempts})")
        ctx = JobContext(self, job)
        try:
            results = self.executors[job.kind](ctx) or {}
        except JobCancelled:
            progress = store.load(job.id, fresh=True).progress  # written by the job, maybe from another process
            done = progress.get("step")
            where = f" at step {done} of {progress.get('total')}" if done else ""
            store.append_log(job.id, f"cancelled{where}")
            store.finish(job.id, CANCELLED, f"Cancelled{where}. Work done so far is kept in its checkpoint.")
        except RunnerStopped:
            store.append_log(job.id, "paused: the app is shutting down")
            store.update(job.id, state=QUEUED, phase="waiting",
                         message="Paused because the app stopped; it resumes when the app starts again.")
        except Exception as err:
            msg = user_message(err)
            log.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            store.append_log(job.id, f"ERROR: {msg.splitlines()[0] if msg else type(err).__name__}")
            store.finish(job.id, FAILED, msg)
        else:
            store.append_log(job.id, "done")
            note = str(results.pop("note", ""))  # e.g. "beta was ignored: no reference video"
            store.finish(job.id, DONE, note, results)
        finally:
            self.current = None


@contextlib.contextmanager
def running(runner: Runner) -> Iterator[Runner]:
    """``with running(Runner(...)) as r:``: start, and stop even when the block raises (tests, scripts)."""
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()
