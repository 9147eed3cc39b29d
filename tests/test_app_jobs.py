"""The app's job store and worker: queue order, one job at a time, cancel, resume after a restart, cleanup,
paths that try to leave the store, and refused uploads."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from _app_server import make_clip

from motion_app.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobError, UploadError, user_message
from motion_app.runner import JobContext, Runner, running
from motion_app.store import JobStore


def wait_for(pred, timeout=60.0, every=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "store", ttl_hours=1.0, max_upload_mb=1.0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "square.mp4")


class Recorder:
    """Fake executors: record order and overlap; a job named "block" waits for ``release``."""

    def __init__(self):
        self.order, self.active, self.max_active = [], 0, 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, ctx: JobContext):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.order.append(ctx.params["name"])
        try:
            if ctx.params["name"] == "block":
                while not self.release.wait(0.02):
                    ctx.check()  # where a real job checks between steps
            return {"name": ctx.params["name"]}
        finally:
            with self.lock:
                self.active -= 1


def test_queue_runs_oldest_first_one_at_a_time(store):
    rec = Recorder()
    with running(Runner(store, {"fake": rec})) as runner:
        first = runner.submit("fake", {"name": "block"})
        wait_for(lambda: store.load(first.id).state == RUNNING)
        later = [runner.submit("fake", {"name": n}) for n in ("a", "b", "c")]
        assert [store.queue_position(j.id) for j in later] == [1, 2, 3]  # the running job counts as ahead
        rec.release.set()
        wait_for(lambda: all(store.load(j.id).state == DONE for j in later))
    assert rec.order == ["block", "a", "b", "c"]
    assert rec.max_active == 1
    assert store.load(later[0].id).results == {"name": "a"}
    assert store.queue_position(later[0].id) is None


def test_cancel_queued_and_running_jobs_frees_the_worker(store):
    rec = Recorder()
    with running(Runner(store, {"fake": rec})) as runner:
        busy = runner.submit("fake", {"name": "block"})
        waiting = runner.submit("fake", {"name": "never"})
        wait_for(lambda: store.load(busy.id).state == RUNNING)
        assert runner.cancel(waiting.id).state == CANCELLED  # at once, before it runs
        runner.cancel(busy.id)
        wait_for(lambda: store.load(busy.id).state == CANCELLED, timeout=5)
        after = runner.submit("fake", {"name": "after"})
        wait_for(lambda: store.load(after.id).state == DONE, timeout=5)
    assert rec.order == ["block", "after"]
    assert "Cancelled" in store.load(busy.id).message
    assert not (store.job_dir(busy.id) / "CANCEL").exists()
    assert runner.cancel(after.id).state == DONE  # finished jobs are left alone


def test_failed_job_keeps_message_and_log_never_done(store):
    def boom(ctx):
        ctx.phase("doing things")
        raise RuntimeError("disk on fire\nTraceback (most recent call last): secret internals")

    with running(Runner(store, {"boom": boom})) as runner:
        job = runner.submit("boom", {})
        final = wait_for(lambda: (j := store.load(job.id)).terminal and j)
    assert final.state == FAILED and final.results == {}
    assert final.message.startswith("Internal error (RuntimeError): disk on fire")
    assert any("doing things" in ln for ln in final.log_tail)
    assert not any("Traceback" in ln for ln in final.log_tail)


def test_user_messages():
    class OutOfMemoryError(RuntimeError):
        pass

    assert "Out of memory" in user_message(OutOfMemoryError("CUDA out of memory"))
    assert user_message(ValueError("the caption is empty")) == "the caption is empty"
    assert user_message(KeyError("x")).startswith("Internal error (KeyError)")


def test_app_restart_requeues_running_jobs_and_gives_up_after_max_attempts(store):
    again = store.create("fake", {"name": "again"})
    store.update(again.id, state=RUNNING, attempts=1)
    looping = store.create("fake", {"name": "loops"})
    store.update(looping.id, state=RUNNING, attempts=store.max_attempts)
    assert sorted(store.recover()) == sorted([again.id, looping.id])
    a, b = store.load(again.id), store.load(looping.id)
    assert a.state == QUEUED and "restarted" in a.message
    assert b.state == FAILED and "stopped 3 times" in b.message
    assert not [j for j in store.list_jobs() if j.state == RUNNING]


def test_second_runner_on_one_store_is_refused(store):
    with running(Runner(store, {})):
        with pytest.raises(JobError, match="Another app"):
            Runner(store, {}).start()
    Runner(store, {}).start().stop()  # free again after stop


def test_cleanup_removes_only_old_finished_jobs(store):
    old_done = store.create("fake", {}, state=DONE)
    old_queued = store.create("fake", {})
    fresh_done = store.create("fake", {}, state=DONE)
    store.update(old_done.id, finished=time.time() - 7200)
    store.update(old_queued.id, created=time.time() - 7200)
    up = store.new_upload_dir()
    os.utime(up, (time.time() - 7200, time.time() - 7200))
    assert store.cleanup() == [old_done.id]
    assert not up.exists()
    assert {j.id for j in store.list_jobs()} == {old_queued.id, fresh_done.id}
    with pytest.raises(JobError, match="no job"):
        store.load(old_done.id)


def test_paths_cannot_leave_the_store(store, tmp_path):
    job = store.create("fake", {})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("private")
    for bad in ("../x", "..", "a/../../b", "/etc/passwd", "", "x" * 10, "abc def ghi jkl mno", 42, None):
        with pytest.raises(JobError):
            store.job_dir(bad)
    for bad in ("../../outside/secret.txt", "/etc/passwd", str(outside / "secret.txt"), "", "a/../../job.json"):
        with pytest.raises(JobError):
            store.path_in(job.id, bad)
    # A symlink inside a job that points out of the store.
    os.symlink(outside, store.job_dir(job.id) / "link")
    with pytest.raises(JobError, match="outside"):
        store.path_in(job.id, "link/secret.txt")
    with pytest.raises(JobError):
        store.file_in(job.id, "link/secret.txt")
    # A "job" whose folder is itself a symlink out of the store.
    fake_id = "A" * 22
    (outside / "job.json").write_text(json.dumps({"id": fake_id, "kind": "fake"}))
    os.symlink(outside, store.jobs_root / fake_id)
    with pytest.raises(JobError):
        store.load(fake_id)
    assert fake_id not in {j.id for j in store.list_jobs()}
    assert store.file_in(job.id, "job.json").is_file()  # the job's own files stay reachable


def test_uploads_are_checked_for_type_size_and_content(store, clip, tmp_path):
    assert store.check_video_upload(clip) == Path(clip)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UploadError, match="not a video"):
        store.check_video_upload(text)
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video at all, only text in an mp4 name")
    with pytest.raises(ValueError, match="not a video"):
        store.check_video_upload(fake)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (2 * 2**20))  # 2 MB over the 1 MB limit: refused before anything reads it
    with pytest.raises(UploadError, match="over 1 MB"):
        store.check_video_upload(big)
    with pytest.raises(UploadError, match="No video"):
        store.check_video_upload(None)
    with pytest.raises(UploadError, match="missing"):
        store.check_video_upload(tmp_path / "gone.mp4")


# ------------------------------------------------------------------------------------ with the tiny model


@pytest.fixture
def make_app(tiny_model_dir, tmp_path):
    from motion_app.service import AppOptions, MotionService

    apps = []

    def make(**kw):
        opts = AppOptions(job_store=tmp_path / "jobs", model=str(tiny_model_dir), preload=False, **kw)
        app = MotionService(opts).start()
        apps.append(app)
        return app

    yield make
    for a in apps:
        a.stop()


def test_training_resumes_after_the_worker_is_stopped_mid_run(make_app, clip, monkeypatch):
    app = make_app()
    # Stop the runner right after step 2 of 4, as an app shutting down mid-training would.
    orig = JobContext.progress

    def progress(self, force=False, **fields):
        orig(self, force=force, **fields)
        if fields.get("step") == 2:
            self.runner._stop.set()

    monkeypatch.setattr(JobContext, "progress", progress)
    job = app.submit_train(str(clip), "a red square moving right", None, 4, 5e-4, 4, 2000, 2000, 0, "motion")
    wait_for(lambda: app.runner._thread is not None and not app.runner._thread.is_alive(), timeout=120)
    app.stop()
    paused = app.store.load(job.id)
    assert paused.state == QUEUED and "resumes" in paused.message
    assert (app.store.job_dir(job.id) / "train" / "checkpoint.pt").is_file()
    monkeypatch.undo()

    app2 = make_app()  # a new runner and worker on the same store
    done = wait_for(lambda: (j := app2.store.load(job.id)).terminal and j, timeout=120)
    assert done.state == DONE, done.message
    assert done.results["steps"] == 4 and done.attempts == 2
    log = app2.store.job_dir(job.id) / "train" / "train_log.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4]
    for name in ("train/lora.safetensors", "train/config.json", "preview.mp4", *done.results["features"]):
        assert app2.store.file_in(job.id, name).stat().st_size > 0


def test_bad_inputs_give_readable_errors_and_queue_nothing(make_app, clip, tmp_path):
    from motion_core.config import ConfigError
    from motion_core.video import VideoTooShortError

    app = make_app()
    good = dict(video=str(clip), caption="a red square", model=None, steps=3, learning_rate=5e-4, rank=4,
                lambda_ca=2000, lambda_tsa=2000, seed=0, objective="motion")
    cases = [
        (dict(caption="   "), JobError, "Write a caption"),
        (dict(steps=0), ConfigError, "steps must be in \\[1, 100000\\], got 0"),
        (dict(steps=2.5), ConfigError, "whole number"),
        (dict(learning_rate=float("nan")), ConfigError, "learning_rate must be in"),
        (dict(rank=10_000), ConfigError, "LoRA rank must be in"),
        (dict(objective="magic"), ConfigError, "objective must be one of"),
        (dict(lambda_ca=0, lambda_tsa=0), ConfigError, "lambda_ca \\+ lambda_tsa"),
        (dict(model="/no/such/folder"), Exception, "no model folder"),
        (dict(video=None), UploadError, "No video"),
    ]
    for change, err, msg in cases:
        with pytest.raises(err, match=msg):
            app.submit_train(**(good | change))
    short = make_clip(tmp_path / "short.mp4", frames=3)
    with pytest.raises(VideoTooShortError, match="too short"):
        app.submit_train(**(good | dict(video=str(short))))
    assert app.store.list_jobs() == []  # nothing half-made was left behind
    assert list(app.store.jobs_root.iterdir()) == []
