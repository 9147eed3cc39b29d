"""The single GPU worker thread: runs queued jobs oldest first, one at a time, with progress, cancel and pause.

One worker thread runs one job at a time, so training and generation never share the GPU. ``Runner`` calls one
executor per job kind (``worker.Worker`` supplies them) with a ``JobContext``: the job's parameters and folder,
progress reporting and the stop checks. A job cancelled by the user ends ``cancelled`` with its checkpoint kept;
one interrupted by the app shutting down goes back to the queue.

This module knows nothing about torch, the model or Gradio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .jobs import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    Job,
    JobCancelled,
    JobError,
    RunnerStopped,
    now,
    user_message,
)
from .store import JobStore

log = logging.getLogger(__name__)

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
