"""The app's handlers in-process: uploaded LoRAs (foreign, mismatched, good), generation without a reference,
ZeroGPU chunking, the Hub push with its model card (upload mocked), pictures, examples, and polling."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest
import torch
import yaml
from _app_server import make_clip
from safetensors.torch import save_file

from app import hub
from app.handlers import AppOptions, MotionApp
from app.jobs import DONE, FAILED, JobError, UploadError


def wait_done(app: MotionApp, job_id: str, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = app.store.load(job_id)
        if job.terminal:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {app.store.load(job_id)}")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "square.mp4")


@pytest.fixture
def make_app(tiny_model_dir, tmp_path):
    apps = []

    def make(**kw):
        app = MotionApp(AppOptions(job_store=tmp_path / "jobs", model=str(tiny_model_dir), preload=False, **kw))
        apps.append(app.start())
        return app

    yield make
    for a in apps:
        a.stop()


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory, clip):
    """One finished 2-step run, shared by the tests that only read it."""
    app = MotionApp(AppOptions(job_store=tmp_path_factory.mktemp("jobs"), model=str(tiny_model_dir),
                               preload=False)).start()
    job = app.submit_train(str(clip), "a red square moving right", None, 2, 5e-4, 4, 2000, 2000, 0, "motion")
    assert wait_done(app, job.id).state == DONE
    yield app, job.id
    app.stop()


def _lora_file(path, **tiny_kw):
    from motion_core.config import LoraConfig
    from motion_core.lora_io import add_lora, save_lora
    from motion_core.models import build_tiny_model

    model = build_tiny_model(**tiny_kw)
    add_lora(model, LoraConfig(rank=2))
    return save_lora(path, model, LoraConfig(rank=2), {"steps": 1, "caption": "a red square", "frames": 8,
                                                         "fps": 8.0, "height": 32, "width": 32})


def test_uploaded_lora_for_another_model_or_not_ours_is_refused(make_app, tmp_path):
    app = make_app()
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="no MotionMatcher metadata"):
        app.submit_import(str(foreign), None, "", None)
    weights = tmp_path / "x.bin"
    weights.write_text("x")
    with pytest.raises(UploadError, match="not a LoRA file"):
        app.submit_import(str(weights), None, "", None)
    other = _lora_file(tmp_path / "other.safetensors", layers_per_block=2)
    job = app.submit_import(str(other), None, "", None)
    done = wait_done(app, job.id)
    assert done.state == FAILED and "was trained for base model" in done.message, done.message
    with pytest.raises(JobError, match="ended failed"):
        app.submit_sample(job.id, "a blue circle", "", 0.3, 1, 2, 12, 1, 1)


def test_uploaded_lora_generates_from_noise_with_a_note(make_app, tmp_path):
    app = make_app()
    good = _lora_file(tmp_path / "good.safetensors")
    job = app.submit_import(str(good), None, "", None)
    assert wait_done(app, job.id).state == DONE
    s = app.submit_sample(job.id, "a blue circle", "", 0.3, 5, 2, 12, 1, 1, compare_base=False)
    done = wait_done(app, s.id)
    assert done.state == DONE and "β was not used" in done.message
    assert done.results["videos"] == [{"seed": 5, "lora": "motion_0.mp4"}]
    assert app.store.file_in(s.id, "motion_0.mp4").stat().st_size > 0


def test_generate_needs_a_finished_run_and_sane_settings(trained):
    app, job_id = trained
    with pytest.raises(JobError, match="Learn a motion first"):
        app.submit_sample("", "a blue circle", "", 0.3, 1, 2, 12, 1, 1)
    with pytest.raises(JobError, match="Write a prompt"):
        app.submit_sample(job_id, "  ", "", 0.3, 1, 2, 12, 1, 1)
    for args, msg in [((1.5, 1, 2, 12, 1, 1), "β must be between"), ((0.3, 1, 0, 12, 1, 1), "steps"),
                      ((0.3, 1, 2, 99, 1, 1), "guidance"), ((0.3, 1, 2, 12, 1, 50), "number of videos")]:
        with pytest.raises(ValueError, match=msg):
            app.submit_sample(job_id, "a blue circle", "", *args)


def test_poll_shows_the_run_and_then_sends_only_changes(trained):
    app, job_id = trained
    out = app.poll(job_id, {}, None)
    status, progress, loss, ca, tsa, files, *_rest, timer, sig = out
    assert "Training run: done" in status and f"?job={job_id}" in status and "Finished 2 steps" in status
    assert loss is not None and ca.endswith("cross_attention.png") and tsa.endswith("temporal_attention.png")
    assert sorted(f.rsplit("/", 1)[-1] for f in files) == ["config.json", "lora.safetensors"]
    again = app.poll(job_id, sig, None)
    assert all(v == {"__type__": "update"} for v in again[:11])  # nothing changed: nothing sent
    gone = app.poll("A" * 22, {}, None)
    assert "no job" in gone[0]


def test_zero_gpu_runs_gpu_work_under_spaces_gpu_in_chunks(tiny_model_dir, tmp_path, clip, monkeypatch):
    calls = []
    spaces = types.ModuleType("spaces")

    def gpu(duration=60):
        def wrap(fn):
            def inner(*args):
                calls.append((duration, args[0]))
                return fn(*args)
            return inner
        return wrap

    spaces.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    app = MotionApp(AppOptions(job_store=tmp_path / "jobs", model=str(tiny_model_dir), preload=False)).start()
    try:
        app.worker().chunk_steps = 1
        job = app.submit_train(str(clip), "a red square", None, 3, 5e-4, 4, 2000, 2000, 0, "motion")
        done = wait_done(app, job.id)
        assert done.state == DONE and done.results["steps"] == 3
        assert [c[1] for c in calls] == ["_prepare_call"] + ["_train_call"] * 3 and all(c[0] == 110 for c in calls)
        s = app.submit_sample(job.id, "a blue circle", "", 0.3, 1, 2, 12, 1, 1, compare_base=False)
        assert wait_done(app, s.id).state == DONE
        assert calls[-1][1] == "_sample_call"
    finally:
        app.stop()
    log = (app.store.job_dir(job.id) / "train" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2, 3]


class FakeHfApi:
    """Records what a push would do; ``role`` is the token's permission, ``fail`` an exception for the upload."""

    instances: list[FakeHfApi] = []
    role = "write"
    fail: Exception | None = None

    def __init__(self, token=None):
        self.token, self.calls = token, []
        FakeHfApi.instances.append(self)

    def whoami(self):
        return {"name": "alice", "auth": {"accessToken": {"role": self.role}}}

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))
        return f"https://huggingface.co/{kw['repo_id']}"

    def upload_folder(self, folder_path, **kw):
        from pathlib import Path

        if self.fail:
            raise self.fail
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        readme = (Path(folder_path) / "README.md").read_text()
        self.calls.append(("upload_folder", {"files": files, "readme": readme, **kw}))


def test_push_to_hub_uploads_lora_config_samples_and_card_privately(trained, monkeypatch):
    app, job_id = trained
    s = app.submit_sample(job_id, "a blue circle", "", 0.3, 3, 2, 12, 1, 1)
    assert wait_done(app, s.id).state == DONE
    FakeHfApi.instances.clear()
    url = app.push(job_id, "my-motion", "hf_secret_token", api_factory=FakeHfApi)
    assert url == "https://huggingface.co/alice/my-motion"
    api = FakeHfApi.instances[-1]
    assert api.token == "hf_secret_token"
    (_, create), (_, upload) = api.calls
    assert create == {"repo_id": "alice/my-motion", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["files"] == ["README.md", "config.json", "lora.safetensors", f"samples/{s.id[:8]}_pair_0.mp4"]
    card = upload["readme"]
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front  # a local folder is not a hub id; the Hub would reject it
    assert front["pipeline_tag"] == "text-to-video" and "lora" in front["tags"]
    assert 'Reference caption: "a red square moving right"' in card and "| steps | 2 |" in card
    assert "hf_secret_token" not in card


def test_push_arguments_are_checked(trained, monkeypatch):
    app, job_id = trained
    for repo, token, msg in [("alice/my lora", "hf_abcdefgh", "not a valid repository id"),
                             ("a/b/c", "hf_abcdefgh", "not a valid repository id"), ("", "hf_abcdefgh", "Give a"),
                             ("alice/x", "", "Paste a Hugging Face access token"),
                             ("alice/x", "has space token", "does not look like")]:
        with pytest.raises(hub.HubError, match=msg):
            app.push(job_id, repo, token, api_factory=FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "role", "read")
    with pytest.raises(hub.HubError, match="can only read"):
        app.push(job_id, "alice/x", "hf_abcdefgh", api_factory=FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "role", "write")
    monkeypatch.setattr(FakeHfApi, "fail", ConnectionError("Name or service not known"))
    with pytest.raises(hub.HubError, match="Upload to alice/x failed: Name or service not known"):
        app.push(job_id, "alice/x", "hf_abcdefgh", api_factory=FakeHfApi)
    with pytest.raises(JobError, match="Learn a motion first"):
        app.push("", "alice/x", "hf_abcdefgh", api_factory=FakeHfApi)


def test_model_card_names_a_hub_base_model():
    card = hub.model_card("alice/zig", "cerspense/zeroscope_v2_576w", 'a "red" circle: zig | zag',
                          {"train": {"steps": 400}, "video": {"num_frames": 16, "fps": 8, "height": 384,
                                                               "width": 384}}, {"rank": 32})
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "cerspense/zeroscope_v2_576w"
    assert "| LoRA rank | 32 |" in card and "zig / zag" in card
    assert 'load_model("cerspense/zeroscope_v2_576w")' in card and "num_frames=16" in card


def test_figures(tmp_path):
    from app import figures

    recs = [{"step": i, "t": 600, "loss": 1e-3 / i, "ca": 5e-4 / i, "tsa": 5e-4 / i} for i in range(1, 40)]
    path = figures.save(figures.loss_figure(recs, 50), tmp_path / "loss.png")
    assert path.stat().st_size > 1000
    assert figures.save(figures.loss_figure([], 50), tmp_path / "empty.png").is_file()
    toks = ["a</w>", "red</w>", "cir", "cle</w>", "on</w>", "blue</w>"]
    assert figures.caption_words(toks) == [("red", [2]), ("circle", [3, 4]), ("blue", [6])]
    assert figures.caption_words(["a</w>"]) == [("a", [1])]


def test_examples_are_read_safely(make_app, tmp_path, monkeypatch):
    import app.handlers as handlers

    app = make_app()
    ex = tmp_path / "examples"
    monkeypatch.setattr(handlers, "EXAMPLES_DIR", ex)
    assert app.examples() == []  # no folder: no examples, no error
    ex.mkdir()
    make_clip(ex / "zig.mp4")
    (tmp_path / "secret.mp4").write_text("x")
    (ex / "examples.json").write_text(json.dumps([
        {"file": "zig.mp4", "caption": "a red square", "motion": "zigzag"},
        {"file": "../secret.mp4", "caption": "escape"}, {"file": "missing.mp4"}, "junk"]))
    assert [(e["name"], e["caption"]) for e in app.examples()] == [("zig (zigzag)", "a red square")]
    (ex / "examples.json").write_text("{broken")
    assert [e["name"] for e in app.examples()] == ["zig"]  # a broken index: the clips, without captions


def test_preview_shows_the_clip_as_the_model_sees_it_or_says_why_not(make_app, clip, tmp_path):
    app = make_app()
    path, text = app.ui_preview(str(clip), None)
    assert path.endswith("preview.mp4") and "8 frames at 8 fps" in text and "32×32" in text
    bad = tmp_path / "clip.mp4"
    bad.write_text("not a video")
    with pytest.warns(UserWarning):  # gr.Warning outside a request: a Python warning
        path, text = app.ui_preview(str(bad), None)
    assert path is None and "Cannot use this video" in text and "not a video" in text


def test_the_page_layout_and_handlers_load_without_torch():
    import subprocess

    code = ("import sys, app.ui, app.handlers, app.jobs, app.figures, app.hub; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    from _app_server import REPO

    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0, "torch was imported at start-up"


def test_a_training_run_that_cannot_fit_the_gpu_is_refused_with_one_that_does(make_app, clip, monkeypatch):
    # Issue 16: the app asks preflight before it queues a run (on a GPU); the message names a setting that fits.
    import motion_core.preflight as preflight

    seen = {}

    def fake_check(source, cfg, device_gb=None):
        seen["frames"], seen["size"] = cfg.video.num_frames, cfg.video.height
        raise preflight.MemoryFitError("needs about 51.5 GB: does not fit the device's 24 GB. This fits: "
                                       "--grad-checkpointing on")

    monkeypatch.setattr(preflight, "check_run", fake_check)
    app = make_app()
    with pytest.raises(JobError, match="This fits: --grad-checkpointing on"):
        app.submit_train(str(clip), "a red square", None, 2, 5e-4, 4, 2000, 2000, 0, "motion")
    assert seen["frames"] > 0 and seen["size"] > 0  # the run's own video size was checked
