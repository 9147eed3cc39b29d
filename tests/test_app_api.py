"""The app's named API endpoints through ``gradio_client``, against ``python app.py`` on a free port with the tiny
model: train, status, cancel, sample, download, readable errors, and a run that survives the server being killed."""

from __future__ import annotations

import json
import time

import pytest
from _app_server import AppServer, make_clip

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

FINAL = ("done", "failed", "cancelled")


def wait_status(client: Client, job_id: str, pred, timeout: float = 120.0, every: float = 0.3) -> dict:
    end = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < end:
        st = client.predict(job_id=job_id, api_name="/status")
        if pred(st):
            return st
        time.sleep(every)
    raise AssertionError(f"timed out; last status {st}")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "square.mp4")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = AppServer(tiny_model_dir, tmp_path_factory.mktemp("store")).start()
    print(f"app ready in {srv.ready_sec:.2f} s (process start to serving)")
    yield srv
    srv.kill()  # graceful shutdown has its own test below; here it would only wait for uvicorn's timeout


@pytest.fixture(scope="module")
def client(server):
    c = Client(server.url, verbose=False)
    yield c
    c.close()  # else the server's shutdown waits for the client's open stream


@pytest.fixture(scope="module")
def trained(client, clip):
    st = client.predict(video=handle_file(str(clip)), caption="a red square moving right", steps=2, rank=4,
                        api_name="/train")
    assert st["state"] in ("queued", "running") and st["job_id"]
    return wait_status(client, st["job_id"], lambda s: s["state"] in FINAL)


def test_train_and_status(trained):
    assert trained["state"] == "done", trained
    assert trained["step"] == trained["total"] == 2
    assert trained["results"]["lora"] == "train/lora.safetensors"
    assert trained["queue_position"] is None and trained["message"] == ""


def test_download_gives_a_lora_that_loads(client, trained, tiny_model_dir):
    from motion_core.lora_io import load_lora
    from motion_core.models import load_model

    files = client.predict(job_id=trained["job_id"], api_name="/download")
    names = sorted(p.rsplit("/", 1)[-1] for p in files)
    assert names == ["config.json", "lora.safetensors"]
    lora = next(p for p in files if p.endswith(".safetensors"))
    meta = load_lora(lora, load_model(str(tiny_model_dir)))
    assert meta["steps"] == 2 and meta["caption"] == "a red square moving right"
    cfg = json.loads(open(next(p for p in files if p.endswith(".json"))).read())
    assert cfg["train"]["steps"] == 2 and cfg["lora"]["rank"] == 4


def test_sample_returns_playable_videos_beside_the_base_model(client, trained):
    from motion_core.config import VideoConfig
    from motion_core.video import probe_video, read_video

    files, info = client.predict(job_id=trained["job_id"], prompt="a blue circle", steps=2, seed=7, beta=0.5,
                                 api_name="/sample")
    report = info["videos"][0].pop("report")
    assert info["state"] == "done" and info["videos"] == [{"seed": 7, "motion": "motion_0.mp4",
                                                           "base": "base_0.mp4"}]
    # The motion report travels with the video: the same numbers the page shows.
    assert report["lora"]["motion_discrepancy"] >= 0 and report["base"]["motion_discrepancy"] >= 0
    assert report["sentence"] and report["verdict"] in ("closer", "same", "further")
    assert len(files) == 2
    for f in files:
        v = probe_video(f)
        assert v.codec == "h264" and (v.width, v.height) == (32, 32)
        assert read_video(f, VideoConfig(num_frames=8, fps=8, height=32, width=32)).shape == (8, 3, 32, 32)


def test_cancel_stops_a_long_run_and_frees_the_worker(client, clip):
    st = client.predict(video=handle_file(str(clip)), caption="a red square", steps=500, rank=4, api_name="/train")
    job = st["job_id"]
    wait_status(client, job, lambda s: (s["step"] or 0) >= 1)
    t0 = time.monotonic()
    client.predict(job_id=job, api_name="/cancel")
    st = wait_status(client, job, lambda s: s["state"] in FINAL, timeout=30)
    assert st["state"] == "cancelled" and st["step"] < 500, st
    print(f"cancel took {time.monotonic() - t0:.2f} s")
    # The worker is free: a short job queued now runs to the end.
    nxt = client.predict(video=handle_file(str(clip)), caption="a red square", steps=1, rank=4, api_name="/train")
    assert wait_status(client, nxt["job_id"], lambda s: s["state"] in FINAL)["state"] == "done"


def test_bad_requests_give_readable_errors(client, clip, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cases = [
        (dict(video=handle_file(str(clip)), caption="  "), "Write a caption"),
        (dict(video=handle_file(str(text)), caption="a square"), "not a video"),
        (dict(video=handle_file(str(clip)), caption="a square", steps=-3), "steps must be in"),
        (dict(video=handle_file(str(clip)), caption="a square", learning_rate=7), "learning_rate must be in"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(AppError, match=msg) as err:
            client.predict(**kwargs, api_name="/train")
        assert "Traceback" not in str(err.value)
    for endpoint in ("/status", "/cancel", "/download"):
        with pytest.raises(AppError, match="not a job id|no job"):
            client.predict(job_id="../../etc/passwd", api_name=endpoint)
        with pytest.raises(AppError, match="no job"):
            client.predict(job_id="A" * 22, api_name=endpoint)


def test_a_run_finishes_after_the_server_is_killed_and_restarted(tiny_model_dir, clip, tmp_path):
    store = tmp_path / "store"
    srv = AppServer(tiny_model_dir, store).start()
    try:
        client = Client(srv.url, verbose=False)
        st = client.predict(video=handle_file(str(clip)), caption="a red square", steps=12, rank=4,
                            api_name="/train")
        job = st["job_id"]
        wait_status(client, job, lambda s: (s["step"] or 0) >= 2 or s["state"] in FINAL, every=0.1)
        client.close()
    finally:
        srv.kill()  # no clean shutdown: the job is left "running" on disk, as after a crash
    state = json.loads((store / "jobs" / job / "job.json").read_text())
    assert state["state"] == "running"

    srv2 = AppServer(tiny_model_dir, store).start()
    try:
        client = Client(srv2.url, verbose=False)
        st = wait_status(client, job, lambda s: s["state"] in FINAL)
        assert st["state"] == "done" and st["results"]["steps"] == 12, st
        client.close()
    finally:
        srv2.kill()  # the job is finished; a graceful stop would only wait for uvicorn's connection timeout
    state = json.loads((store / "jobs" / job / "job.json").read_text())
    assert state["attempts"] == 2
    log = (store / "jobs" / job / "job.log").read_text()
    assert "the app restarted" in log
    lines = (store / "jobs" / job / "train" / "train_log.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines]
    assert steps == list(range(1, 13))  # resumed from its checkpoint: no step lost, none counted twice


def test_stopping_the_server_pauses_the_running_job_instead_of_leaving_it_running(tiny_model_dir, clip, tmp_path):
    store = tmp_path / "store"
    srv = AppServer(tiny_model_dir, store).start()
    try:
        client = Client(srv.url, verbose=False)
        job = client.predict(video=handle_file(str(clip)), caption="a red square", steps=500, rank=4,
                             api_name="/train")["job_id"]
        wait_status(client, job, lambda s: (s["step"] or 0) >= 1)
        client.close()
    finally:
        srv.stop()  # SIGTERM, as from docker stop or a Space restart
    assert srv.proc.returncode == 0, srv.output()[-2000:]
    state = json.loads((store / "jobs" / job / "job.json").read_text())
    assert state["state"] == "queued" and "Paused" in state["message"], state
    assert (store / "jobs" / job / "train" / "checkpoint.pt").is_file()


def test_the_store_s_own_files_are_never_served_but_results_are(server, client, trained):
    """Issue 18: ``GET /gradio_api/file=<store>/browser_secret`` returned the secret. Only allow-listed results
    (linked under ``<store>/served``) may be fetched."""
    import urllib.error
    import urllib.request
    from pathlib import Path

    def get(path: Path) -> tuple[int, bytes]:
        url = f"{server.url}gradio_api/file={urllib.request.quote(str(path))}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, b""

    store = Path(server.store).resolve()
    job = store / "jobs" / trained["job_id"]
    secret = store / "browser_secret"
    run = job / "train"
    private = [secret, store / "speeds.json", store / "runner.lock", job / "job.json", job / "job.log",
               run / "checkpoint.pt", run / "reference_latents.pt", run / "reference.mp4", run / "lora.safetensors"]
    for p in private:
        assert p.is_file(), p
        status, body = get(p)
        assert status in (403, 404), (p, status)
        assert secret.read_bytes().strip() not in body
    files = client.predict(job_id=trained["job_id"], api_name="/download")  # fetched over HTTP by the client
    lora = next(Path(p) for p in files if p.endswith(".safetensors"))
    served = store / "served" / trained["job_id"] / "train" / "lora.safetensors"
    status, body = get(served)
    assert status == 200 and body == lora.read_bytes() == (job / "train" / "lora.safetensors").read_bytes()
