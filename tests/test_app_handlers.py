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

from motion_app import hub, views
from motion_app.api import Api
from motion_app.jobs import DONE, FAILED, JobError, UploadError
from motion_app.page import Page
from motion_app.service import AppOptions, MotionService


def wait_done(app: MotionService, job_id: str, timeout: float = 120.0):
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
        app = MotionService(AppOptions(job_store=tmp_path / "jobs", model=str(tiny_model_dir), preload=False, **kw))
        apps.append(app.start())
        return app

    yield make
    for a in apps:
        a.stop()


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory, clip):
    """One finished 2-step run, shared by the tests that only read it."""
    app = MotionService(AppOptions(job_store=tmp_path_factory.mktemp("jobs"), model=str(tiny_model_dir),
                               preload=False)).start()
    job = app.submit_train(str(clip), "a red square moving right", None, 2, 5e-4, 4, 2000, 2000, 0, "motion")
    assert wait_done(app, job.id).state == DONE
    yield app, job.id
    app.stop()


def _lora_file(path, **tiny_kw):
    from motion_core.config import LoraConfig
    from motion_core.lora_io import add_lora, save_lora
    from motion_core.testing import build_tiny_model

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
    (video,) = done.results["videos"]
    assert "without its reference video" in video.pop("report")["error"]  # no reference: no report, and why
    assert video == {"seed": 5, "lora": "motion_0.mp4"}
    assert app.store.file_in(s.id, "motion_0.mp4").stat().st_size > 0


def test_generate_needs_a_finished_run_and_sane_settings(trained):
    app, job_id = trained
    with pytest.raises(JobError, match="Learn a motion first"):
        app.submit_sample("", "a blue circle", "", 0.3, 1, 2, 12, 1, 1)
    with pytest.raises(JobError, match="Write a prompt"):
        app.submit_sample(job_id, "  ", "", 0.3, 1, 2, 12, 1, 1)
    # The ranges are the config's (SampleConfig.validate); the app only converts the values it is sent.
    for args, msg in [((1.5, 1, 2, 12, 1, 1), "beta must be in"), ((0.3, 1, 0, 12, 1, 1), "steps must be in"),
                      ((0.3, 1, 2, 99, 1, 1), "guidance must be in"), ((0.3, 1, 2, 12, 1, 50), "number of videos"),
                      ((0.3, 1, 2.5, 12, 1, 1), "steps must be a whole number"),
                      ((0.3, 1, 2, "x", 1, 1), "guidance must be a number")]:
        with pytest.raises(ValueError, match=msg):
            app.submit_sample(job_id, "a blue circle", "", *args)


def test_config_errors_reach_the_user_as_gr_errors_with_the_configs_message(trained, clip):
    import gradio as gr

    app, job_id = trained
    api = Api(app)
    with pytest.raises(gr.Error, match=r"beta must be in \[0, 1\], got 1.5") as err:
        api.sample(job_id, "a blue circle", beta=1.5)
    assert "Traceback" not in str(err.value)
    with pytest.raises(gr.Error, match=r"LoRA rank must be in \[1, 512\], got 0"):
        api.train(str(clip), "a red square", rank=0)
    with pytest.raises(gr.Error, match="steps must be a whole number"):
        api.train(str(clip), "a red square", steps="2.5")


def test_a_run_whose_latents_lie_beside_train_still_samples_with_beta(trained):
    # Runs made before the run folder (RunDir) held the reference latents kept them in the job folder.
    app, job_id = trained
    d = app.store.job_dir(job_id)
    new, old = d / "train" / "reference_latents.pt", d / "reference_latents.pt"
    new.rename(old)
    try:
        s = app.submit_sample(job_id, "a blue circle", "", 0.3, 1, 2, 12, 1, 1, compare_base=False)
        done = wait_done(app, s.id)
        assert done.state == DONE and "β was not used" not in done.message, done.message
    finally:
        old.rename(new)


def test_poll_shows_the_run_and_then_sends_only_changes(trained):
    app, job_id = trained
    out = Page(app).poll(job_id, {}, None)
    status, progress, loss, ca, tsa, files, *_rest, timer, sig = out
    assert "Training run: done" in status and f"?job={job_id}" in status and "Finished 2 steps" in status
    assert loss is not None and ca.endswith("cross_attention.png") and tsa.endswith("temporal_attention.png")
    assert sorted(f.rsplit("/", 1)[-1] for f in files) == ["config.json", "lora.safetensors"]
    assert len(out) == len(Page.POLL_KEYS) + 2
    again = Page(app).poll(job_id, sig, None)
    assert all(v == {"__type__": "update"} for v in again[:len(Page.POLL_KEYS)])  # nothing changed: nothing sent
    gone = Page(app).poll("A" * 22, {}, None)
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
    app = MotionService(AppOptions(job_store=tmp_path / "jobs", model=str(tiny_model_dir), preload=False)).start()
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
    # the snippet is Python that samples with the base model's own settings, not the library's
    import ast

    code = card.split("```python\n")[1].split("```")[0]
    ast.parse(code)
    assert "SampleConfig.for_model(model" in code and "num_steps=cfg.num_inference_steps" in code


def test_figures(tmp_path):
    from motion_app import figures

    recs = [{"step": i, "t": 600, "loss": 1e-3 / i, "ca": 5e-7 / i, "tsa": 5e-4 / i} for i in range(1, 40)]
    fig = figures.loss_figure(recs, 50)
    path = figures.save(fig, tmp_path / "loss.png")
    assert path.stat().st_size > 1000
    # The legend sits outside the plots; the CA part (1000x below the TSA part) is drawn relative to its own start.
    assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
    parts = {ln.get_label(): ln.get_ydata() for ln in fig.axes[1].get_lines() if "part" in ln.get_label()}
    assert len(parts) == 2 and all(abs(ys[4] - 1.0) < 0.5 for ys in parts.values())
    smooth = [ln for ln in fig.axes[0].get_lines() if "mean of 5 steps" in ln.get_label()]
    assert smooth and list(smooth[0].get_ydata()[:3]) == pytest.approx([1e-3, 0.75e-3, 1.8333e-3 / 3], rel=1e-3)
    assert figures.save(figures.loss_figure([], 50), tmp_path / "empty.png").is_file()
    toks = ["a</w>", "red</w>", "cir", "cle</w>", "on</w>", "blue</w>"]
    assert figures.caption_words(toks) == [("red", [2]), ("circle", [3, 4]), ("blue", [6])]
    assert figures.caption_words(["a</w>"]) == [("a", [1])]


def test_examples_are_read_safely(tmp_path, monkeypatch):
    from motion_app import examples

    ex = tmp_path / "examples"
    monkeypatch.setattr(examples, "EXAMPLES_DIR", ex)
    assert examples.examples() == []  # no folder: no examples, no error
    ex.mkdir()
    make_clip(ex / "zig.mp4")
    (tmp_path / "secret.mp4").write_text("x")
    (ex / "examples.json").write_text(json.dumps([
        {"file": "zig.mp4", "caption": "a red square", "motion": "zigzag"},
        {"file": "../secret.mp4", "caption": "escape"}, {"file": "missing.mp4"}, "junk"]))
    assert [(e["name"], e["caption"]) for e in examples.examples()] == [("zig (zigzag)", "a red square")]
    (ex / "examples.json").write_text("{broken")
    assert [e["name"] for e in examples.examples()] == ["zig"]  # a broken index: the clips, without captions


def test_preview_shows_the_clip_as_the_model_sees_it_or_says_why_not(make_app, clip, tmp_path):
    app = make_app()
    path, text = Page(app).ui_preview(str(clip), None)
    assert path.endswith("preview.mp4") and "8 frames at 8 fps" in text and "32×32" in text
    bad = tmp_path / "clip.mp4"
    bad.write_text("not a video")
    with pytest.warns(UserWarning):  # gr.Warning outside a request: a Python warning
        path, text = Page(app).ui_preview(str(bad), None)
    assert path is None and "Cannot use this video" in text and "not a video" in text


def test_the_page_layout_and_handlers_load_without_torch():
    import subprocess

    mods = ", ".join(f"motion_app.{m}" for m in ("ui", "page", "api", "views", "examples", "service", "settings",
                                                 "jobs", "store", "runner", "figures", "hub"))
    code = f"import sys, {mods}; sys.exit(1 if 'torch' in sys.modules else 0)"
    from _app_server import REPO

    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0, "torch was imported at start-up"


# ---------------------------------------------------------------------------------------------------------------
# Issue 18: hostile uploads, served files, messages.
# ---------------------------------------------------------------------------------------------------------------


def _rewritten(src, dest, tensors=None, **meta_changes):
    from motion_core.lora_io import read_lora

    t, meta = read_lora(src)
    save_file(t if tensors is None else tensors, str(dest),
              metadata={"motion_matcher": json.dumps(meta | meta_changes)})
    return dest


def test_a_hostile_lora_upload_neither_freezes_the_app_nor_breaks_later_jobs(make_app, tmp_path):
    from motion_core.lora_io import read_lora

    app = make_app()
    good = _lora_file(tmp_path / "good.safetensors")
    t0 = time.monotonic()
    redos = _rewritten(good, tmp_path / "redos.safetensors", targets="(.*)*z")  # froze the app before
    job = app.submit_import(str(redos), None, "", None)
    assert wait_done(app, job.id, timeout=60).state == DONE
    assert time.monotonic() - t0 < 60
    tensors = dict(read_lora(good)[0])
    k = next(iter(tensors))
    tensors[k] = torch.full_like(tensors[k], float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        app.submit_import(str(_rewritten(good, tmp_path / "nan.safetensors", tensors=tensors)), None, "", None)
    tensors[k] = torch.zeros(tensors[k].shape[0], tensors[k].shape[1] + 3)
    shaped = app.submit_import(str(_rewritten(good, tmp_path / "shape.safetensors", tensors=tensors)), None, "", None)
    failed = wait_done(app, shaped.id)
    assert failed.state == FAILED and "shapes" in failed.message and "Traceback" not in failed.message
    # Later jobs on the same shared model still work (before: AttributeError 'peft_config' until a restart).
    again = app.submit_import(str(good), None, "", None)
    assert wait_done(app, again.id).state == DONE
    s = app.submit_sample(again.id, "a blue circle", "", 0.3, 5, 2, 12, 1, 1, compare_base=False)
    assert wait_done(app, s.id).state == DONE


def test_a_lora_naming_another_base_model_is_imported_with_a_warning(make_app, tmp_path):
    from motion_core.lora_io import read_lora

    app = make_app()
    good = _lora_file(tmp_path / "good.safetensors")
    shape = read_lora(good)[1]["base_fingerprint"].split("|")[1]
    other = _rewritten(good, tmp_path / "other.safetensors", base_fingerprint=f"someone/other-model|{shape}")
    job = wait_done(app, app.submit_import(str(other), None, "", None).id)
    assert job.state == DONE and "Warning" in job.message and "someone/other-model" in job.message
    assert "someone/other-model" in views.status_md(job)


def test_a_one_frame_upload_is_reported_under_the_users_file_name(make_app, tmp_path):
    from motion_core.video import VideoError, write_mp4

    app = make_app()
    one = write_mp4(torch.rand(1, 3, 32, 32), tmp_path / "my holiday clip.mp4", fps=8)
    with pytest.raises(VideoError) as err:
        app.submit_train(str(one), "a red square", None, 2, 5e-4, 4, 2000, 2000, 0, "motion")
    assert "my holiday clip.mp4" in str(err.value) and "reference.mp4" not in str(err.value)


def test_prompts_and_seeds_follow_one_rule(trained):
    app, job_id = trained
    with pytest.raises(ValueError, match="prompt is too long"):
        app.submit_sample(job_id, "a" * 10_000, "", 0.3, 1, 2, 12, 1, 1)
    with pytest.raises(ValueError, match="negative prompt is too long"):
        app.submit_sample(job_id, "a cat", "n" * 10_000, 0.3, 1, 2, 12, 1, 1)
    for seed in (2**70, -2, 1.5):
        with pytest.raises(ValueError, match="seed must be"):
            app.submit_sample(job_id, "a cat", "", 0.3, seed, 2, 12, 1, 1)
    with pytest.raises(ValueError, match="caption is too long"):
        app.submit_train(None, "c" * 10_000, None, 2, 5e-4, 4, 2000, 2000, 0, "motion")
    s = app.submit_sample(job_id, "a cat", "", 0.3, -1, 2, 12, 1, 1, compare_base=False)
    assert s.params["config"]["seed"] is None  # random: drawn when it runs and reported with the result
    done = wait_done(app, s.id)
    assert done.state == DONE and 0 <= done.results["seeds"][0] <= 2**31 - 1


def test_only_allow_listed_result_files_are_served(trained):
    import runpy
    from pathlib import Path

    app, job_id = trained
    job = app.store.load(job_id)
    served = Api(app).download(job_id)
    assert sorted(p.rsplit("/", 1)[-1] for p in served) == ["config.json", "lora.safetensors"]
    for p in served:
        assert p.startswith(str(app.store.served_root) + "/")
    lora = next(p for p in served if p.endswith(".safetensors"))
    assert open(lora, "rb").read() == app.store.file_in(job_id, "train/lora.safetensors").read_bytes()
    for rel in ("job.json", "job.log", "train/checkpoint.pt", "train/reference_latents.pt", "train/reference.mp4",
                "reference_latents.pt", "reference.mp4", "../../browser_secret", "train/../job.json", "/etc/passwd"):
        with pytest.raises(JobError):
            app.store.serve(job.id, rel)
    app_py = Path(hub.__file__).resolve().parent.parent / "app.py"
    launch = runpy.run_path(str(app_py), run_name="app_main")["served_files"](app.store, 0.5)
    assert launch["max_file_size"] == 2**19  # 0.5 MB, not int(0.5) = 0 bytes
    assert launch["allowed_paths"][0] == str(app.store.served_root)
    assert not any(str(app.store.root) == p or str(app.store.jobs_root).startswith(p + "/")
                   for p in launch["allowed_paths"])


def test_a_damaged_checkpoint_fails_the_job_by_name_and_resume_starts_over(tiny_model_dir, tmp_path, clip):
    app = MotionService(AppOptions(job_store=tmp_path / "jobs", model=str(tiny_model_dir), preload=False))
    job = app.submit_train(str(clip), "a red square", None, 2, 5e-4, 4, 2000, 2000, 0, "ddpm")
    d = app.store.job_dir(job.id)
    (d / "train").mkdir()
    (d / "train" / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")  # queued, not yet run: then start
    app.start()
    try:
        failed = wait_done(app, job.id)
        assert failed.state == FAILED, failed.message
        assert "train/checkpoint.pt" in failed.message and "Resume starts the training over" in failed.message
        assert "Traceback" not in failed.message
        assert (d / "train" / "checkpoint.pt.damaged").is_file() and (d / "reference.mp4").is_file()
        app.resume(job.id)
        done = wait_done(app, job.id)
        assert done.state == DONE and done.results["steps"] == 2, done.message
    finally:
        app.stop()


def test_hub_token_and_server_paths_never_reach_the_store_or_the_card(trained, caplog):
    app, job_id = trained
    FakeHfApi.instances.clear()
    FakeHfApi.fail = None
    token = "hf_never_store_me_123"
    with caplog.at_level("DEBUG"):
        app.push(job_id, "my-motion", token, api_factory=FakeHfApi)
    card = FakeHfApi.instances[-1].calls[-1][1]["readme"]
    assert str(app.store.root) not in card and str(app.opts.model) not in card  # the folder's name only
    for p in app.store.root.rglob("*"):
        if p.is_file():
            assert token.encode() not in p.read_bytes(), p
    assert token not in caplog.text


def test_a_locked_app_runs_only_its_own_model(make_app, tmp_path):
    app = make_app(lock_model=True)
    assert [v for _, v in app.model_choices()] == [app.opts.model]
    assert app.source_of(None) == app.opts.model
    for other in ("cerspense/zeroscope_v2_576w", "default", "/etc", str(tmp_path), "../../models"):
        with pytest.raises(JobError, match="only runs its own model"):
            app.source_of(other)
    good = _lora_file(tmp_path / "good.safetensors")
    with pytest.raises(JobError, match="only runs its own model"):
        app.submit_import(str(good), None, "", "someone/else")


# ---------------------------------------------------------------------------------------------------------------
# Issue 19: the app as a newcomer meets it.
# ---------------------------------------------------------------------------------------------------------------


def test_each_generated_video_gets_a_motion_report_on_one_progress_bar(trained, monkeypatch):
    app, job_id = trained
    seen: list[tuple[str, dict]] = []
    update = app.store.update

    def spy(jid, **fields):
        if "progress" in fields and jid != job_id:
            seen.append((fields.get("phase") or "", dict(fields["progress"])))
        return update(jid, **fields)

    monkeypatch.setattr(app.store, "update", spy)
    files, info = Api(app).sample(job_id, "a blue circle", "", 0.3, 7, 2, 12, 1, 1, True)
    rep = info["videos"][0]["report"]
    assert rep["lora"]["motion_discrepancy"] >= 0 and rep["base"]["motion_discrepancy"] >= 0
    assert rep["tracker"] in ("lk", "cotracker3") and rep["verdict"] in ("closer", "same", "further")
    assert "base model's" in rep["sentence"] and rep["clip"]["available"] is False and rep["clip"]["reason"]
    # One bar for the whole request: the total never changes and the step never goes back; each phase is named.
    steps = [pr.get("step") for _, pr in seen if pr.get("step") is not None]
    assert len({pr.get("total") for _, pr in seen if pr.get("total")}) == 1
    assert steps == sorted(steps) and steps[-1] == seen[-1][1]["total"]
    phases = [ph for ph, _ in seen if ph]
    assert any("motion LoRA" in ph for ph in phases) and any("base model" in ph for ph in phases)
    assert any("measuring the motion" in ph for ph in phases)
    # The page shows the same numbers, the sentence and the track picture; the seed box the seed used.
    out = dict(zip(Page.POLL_KEYS, Page(app).poll(job_id, {}, None)))
    assert rep["sentence"] in out["report"] and f"{rep['lora']['motion_discrepancy']:.4g}" in out["report"]
    assert f"{rep['base']['motion_discrepancy']:.4g}" in out["report"] and "unavailable" in out["report"]
    assert out["report_img"].endswith("report_0.png") and out["seed"] == 7


def test_buttons_seed_and_speed_say_what_is_true_after_a_run(trained):
    app, job_id = trained
    out = dict(zip(Page.POLL_KEYS, Page(app).poll(job_id, {}, None, 400)))
    assert out["cancel"]["interactive"] is False and out["resume"]["interactive"] is False
    assert out["cancel_gen"]["interactive"] is False
    assert "s per step, measured" in out["status"]
    assert "last measured speed" in out["estimate"] and "steps/s" in out["estimate"]


def test_a_reopened_run_link_fills_the_reference_and_settings(trained):
    app, job_id = trained
    request = types.SimpleNamespace(query_params={"job": job_id})
    out = Page(app).ui_load({}, None, request=request)
    current, _saved, _hist, _model, _timer, _sig, *rest = out
    n = len(Page.PRESET_FIELDS)
    presets = dict(zip([k for k, _, _ in Page.PRESET_FIELDS], rest[:n]))
    fields = dict(zip(Page.RUN_FIELDS, rest[n:]))
    assert current == job_id and presets["steps"] == 2 and presets["lr"] == 5e-4
    assert fields["caption"] == "a red square moving right" and fields["video"].endswith("preview.mp4")
    assert (presets["rank"], presets["lambda_ca"], presets["seed"], presets["objective"]) == (4, 2000, 0, "motion")
    opened = Page(app).ui_open(job_id, {})
    k = 4 + len(Page.TRAIN_PRESETS)
    assert opened[0] == job_id and opened[4:6] == (2, 5e-4) and opened[6] == 4  # steps, lr, rank: the run's own
    assert opened[k].endswith("preview.mp4")


def test_every_app_flag_has_help():
    import runpy

    from _app_server import REPO

    parser = runpy.run_path(str(REPO / "app.py"), run_name="app_main")["build_parser"]()
    for action in parser._actions:
        assert action.help, f"app.py {action.option_strings} has no help"
    assert "port to listen on" in parser.format_help()


def test_readme_names_the_button_as_the_page_does_and_its_screenshots_exist():
    import re

    from _app_server import REPO

    ui, readme = (REPO / "motion_app" / "ui.py").read_text(), (REPO / "README.md").read_text()
    label = re.search(r'start = gr\.Button\("([^"]+)"', ui).group(1)
    assert f"*{label}*" in readme
    shots = set(re.findall(r"docs/screenshots/[\w-]+\.(?:png|jpg)", readme))
    assert shots and all((REPO / s).is_file() for s in shots), shots


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


def test_training_takes_the_models_own_defaults_under_the_pages_settings(tiny_model_dir, tmp_path, clip):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    side = json.loads((model / "motion_matcher.json").read_text())
    side["train"] = {"conv_targets": ["temp_convs"], "learning_rate": 1e-3}
    (model / "motion_matcher.json").write_text(json.dumps(side))
    app = MotionService(AppOptions(job_store=tmp_path / "jobs", model=str(model), preload=False)).start()
    try:
        job = app.submit_train(str(clip), "a red square", None, 2, 5e-4, 4, 2000, 2000, 0, "motion")
        cfg = job.params["config"]
        assert list(cfg["lora"]["conv_targets"]) == ["temp_convs"]  # the model's own LoRA targets
        assert cfg["train"]["learning_rate"] == 5e-4  # what the page says wins over the model's default
        assert wait_done(app, job.id).state == DONE
    finally:
        app.stop()


def test_the_page_shows_the_predicted_gpu_memory_before_a_run(make_app, monkeypatch):
    import motion_core.preflight as preflight

    app = make_app()
    monkeypatch.setattr(preflight, "check_run", lambda source, cfg, device_gb=None: preflight.Prediction(
        9.13, 8.92, 24.0, "half weights + checkpointing", cfg.video.num_frames, cfg.video.height, True, "fits"))
    text = Page(app).estimate(None, 400)
    assert "400 steps" in text
    assert "Predicted GPU memory: 9.1 GB to train, 8.9 GB to sample of this GPU's 24 GB" in text

    def too_big(source, cfg, device_gb=None):
        raise preflight.MemoryFitError("needs about 51.5 GB. This fits: --grad-checkpointing on")

    monkeypatch.setattr(preflight, "check_run", too_big)
    assert "**Will not fit this GPU:** needs about 51.5 GB. This fits" in Page(app).estimate(None, 400)
    monkeypatch.setattr(preflight, "check_run", lambda source, cfg, device_gb=None: None)  # no GPU here
    assert "GPU" not in Page(app).estimate(None, 400)


def test_the_api_and_the_page_give_a_model_the_same_defaults(tiny_model_dir, tmp_path, clip):
    """Issue 17: the API's settings left out are the model's own, the values the page shows for that model (before,
    /sample used the release's 75 steps and guidance 12 while the page showed the model's own)."""
    import shutil

    from motion_core.config import RunConfig, SampleConfig
    from motion_core.models import model_defaults

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    side = json.loads((model / "motion_matcher.json").read_text())
    side["train"] = {"steps": 2, "learning_rate": 1e-3, "rank": 2, "lambda_tsa": 1000.0}
    side["sample"] = {"num_inference_steps": 2, "guidance_scale": 5.0, "beta": 0.4, "lora_scale": 0.8,
                      "lora_cutoff": 0}
    (model / "motion_matcher.json").write_text(json.dumps(side))
    app = MotionService(AppOptions(job_store=tmp_path / "jobs", model=str(model), preload=False)).start()
    try:
        page, api = Page(app), Api(app)
        shown = {key: value for (key, _, _), value in zip(Page.PRESET_FIELDS, page.presets(None))}
        assert (shown["steps"], shown["lr"], shown["rank"], shown["lambda_tsa"]) == (2, 1e-3, 2, 1000.0)
        assert (shown["sample_steps"], shown["guidance"], shown["beta"], shown["strength"]) == (2, 5.0, 0.4, 0.8)
        st = api.train(str(clip), "a red square moving right")  # every setting left to the model
        cfg = RunConfig.from_dict(app.store.load(st["job_id"]).params["config"])
        for key, sec, name in Page.TRAIN_PRESETS:
            assert getattr(getattr(cfg, sec), name) == shown[key], key
        assert wait_done(app, st["job_id"]).state == DONE
        _files, info = api.sample(st["job_id"], "a blue circle")
        sc = SampleConfig.from_dict(app.store.load(info["job_id"]).params["config"])
        for key, sec, name in Page.PRESET_FIELDS:
            if sec == "sample":
                assert getattr(sc, name) == shown[key], key
        # All of it is the model's own (its cut-off too), with the seed drawn at random.
        assert sc == SampleConfig.for_model(model_defaults(str(model)), {"seed": sc.seed}) and sc.seed is None
        assert info["videos"][0]["seed"] >= 0
    finally:
        app.stop()
