"""The functions behind the page's events and the named API endpoints.

``MotionApp`` owns the job store, the runner (one worker thread) and, through ``motion_app.work``, the model cache. Its
methods check inputs, submit jobs, and turn job state into what the page shows; none of them runs GPU work
itself, so a closed tab or a dropped API client never stops a job.

Two families of methods:
- ``ui_*``: wired to the page by ``motion_app.ui`` (they return Gradio updates);
- ``api_*``: the named endpoints ``/train``, ``/status``, ``/cancel``, ``/sample``, ``/download`` (and
  ``/import_lora``, ``/resume``, ``/push_to_hub``), with plain parameters and JSON results for ``gradio_client``.

Every bad input ends as a ``gr.Error`` with a readable message (``user_errors``); stack traces go to the server
log only. ``motion_app.work`` (torch, diffusers) is imported on first use, so the page is served before torch loads.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from motion_core.config import (
    OBJECTIVE_NAMES,
    ConfigError,
    RunConfig,
    SampleConfig,
    check_seed,
    check_text,
    resolve_seed,
)

from .jobs import (
    CANCELLED,
    DONE,
    FAILED,
    LORA_EXTENSIONS,
    QUEUED,
    RUNNING,
    Job,
    JobError,
    JobStore,
    Runner,
    UploadError,
    user_message,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
ZEROSCOPE_ID = "cerspense/zeroscope_v2_576w"
# Plain words, not emoji: headless browsers and some fonts show emoji as empty boxes.
STATE_WORDS = {QUEUED: "queued", RUNNING: "running", DONE: "done", FAILED: "FAILED", CANCELLED: "cancelled"}
MAX_HISTORY = 20


@dataclass
class AppOptions:
    """Everything ``app.py``'s command line decides."""

    job_store: Path
    model: str = "default"  # the model choice preselected (and the only one with lock_model)
    lock_model: bool = False  # public deployments: users cannot load arbitrary folders or hub repos
    max_upload_mb: float = 200.0
    ttl_hours: float = 72.0
    device: str = "auto"
    dtype: str = "auto"
    preload: bool = True  # load the default model in the background at start-up
    poll_seconds: float = 1.0
    extra_models: list[str] = field(default_factory=list)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any exception into a ``gr.Error`` with a readable message; the trace goes to the server log."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            if not isinstance(err, (ValueError, JobError)) and not type(err).__module__.startswith("motion_core"):
                log.exception("handler %s failed", fn.__name__)
            raise gr.Error(user_message(err), print_exception=False) from err

    return wrapper


def _work() -> Any:
    """``motion_app.work`` imported on first use (it pulls in torch and diffusers: seconds of start-up)."""
    from . import work

    return work


def _num(value: Any, name: str, lo: float, hi: float, integer: bool = False) -> Any:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise ConfigError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    if integer:
        if x != int(x):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        return int(x)
    return x


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class MotionApp:
    """The app's state: store, runner, worker. Build it, ``start()`` it, hand it to ``motion_app.ui.build_ui``."""

    def __init__(self, opts: AppOptions) -> None:
        self.opts = opts
        self.store = JobStore(opts.job_store, ttl_hours=opts.ttl_hours, max_upload_mb=opts.max_upload_mb)
        self.runner = Runner(self.store, {"train": self._exec("train"), "sample": self._exec("sample"),
                                          "import": self._exec("import")},
                             warmup=self._warmup if opts.preload else None)
        self._worker: Any = None
        self._worker_lock = threading.Lock()
        self.secret = self._browser_secret()

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> MotionApp:
        if os.environ.get("SPACES_ZERO_GPU"):
            self.worker()  # ZeroGPU wants its @spaces.GPU functions to exist when the app launches
        self.runner.start()
        return self

    def stop(self) -> None:
        self.runner.stop()

    def worker(self) -> Any:
        with self._worker_lock:
            if self._worker is None:
                work = _work()
                models = work.ModelCache(self.opts.device, self.opts.dtype)
                self._worker = work.Worker(self.store, models, default_source=self.default_source())
                self._worker.runner = self.runner
            return self._worker

    def _exec(self, kind: str) -> Callable[[Any], Any]:
        def run(ctx: Any) -> Any:
            return self.worker().executors()[kind](ctx)

        return run

    def _warmup(self) -> None:
        self.worker().warmup()

    def _browser_secret(self) -> str:
        # BrowserState encrypts what it keeps in the browser; a secret that survives restarts keeps the user's
        # run history readable after the app restarts.
        path = self.store.root / "browser_secret"
        if not path.is_file():
            with contextlib.suppress(FileExistsError):  # created with owner-only rights from the first byte
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    # ---------------------------------------------------------------------------------------- models

    def default_source(self) -> str:
        return _work().resolve_source(self.opts.model)

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, value) for the model dropdown: the app's model first, Zeroscope for GPU machines."""
        first = self.opts.model or "default"
        label = "Embedded shapes model (CPU-friendly)" if first == "default" else first
        choices = [(label, first)]
        if not self.opts.lock_model:
            for extra in [*self.opts.extra_models, ZEROSCOPE_ID, "default"]:
                if extra not in [v for _, v in choices]:
                    name = {"default": "Embedded shapes model (CPU-friendly)",
                            ZEROSCOPE_ID: "Zeroscope v2 576w (needs a GPU)"}.get(extra, extra)
                    choices.append((name, extra))
        return choices

    def source_of(self, choice: str | None) -> str:
        """Resolve a model choice (empty: the app's own model; "default": the embedded one); with
        ``lock_model`` only the app's own model is accepted."""
        choice = (choice or "").strip() or self.opts.model
        allowed = [v for _, v in self.model_choices()]
        if self.opts.lock_model and choice not in allowed:
            raise JobError("This app only runs its own model; the model cannot be changed here.")
        source = _work().resolve_source(choice)
        _work().check_source(source)
        return source

    def model_status(self, choice: str | None) -> str:
        try:
            source = self.source_of(choice)
        except Exception as err:
            return f"**Model problem:** {user_message(err)}"
        w = self._worker
        if w is not None and w.models.peek(source) is not None:
            return f"Model `{source}`: loaded."
        if source == self.default_source() and self.opts.preload:
            if not self.runner.warmup_done.is_set():
                return f"Model `{source}`: loading in the background…"
            if self.runner.warmup_error:
                return f"**Model problem:** {self.runner.warmup_error}"
        return f"Model `{source}`: loads when the first job starts."

    def video_config(self, source: str, lora_meta: dict[str, Any] | None = None) -> Any:
        w = self._worker
        return _work().video_config_for(source, w.models if w else None, self.opts.max_upload_mb, lora_meta)

    def run_defaults(self, source: str, vcfg: Any) -> RunConfig:
        """A run's settings before the page's: the model's own training defaults (its sidecar's train section:
        LoRA targets ...) over the library's, at the clip size ``vcfg``."""
        own = _work().model_defaults(source)
        return RunConfig.for_model(SimpleNamespace(video_defaults=vcfg.to_dict(), sample_defaults=own["sample"],
                                                   train_defaults=own["train"]))

    def memory_note(self, source: str) -> str:
        """Preflight's prediction for training this model on this machine's GPU, shown before a run (issue 16);
        empty where there is nothing to predict (no GPU, or a model without measured fits)."""
        from motion_core.preflight import MemoryFitError, check_run

        try:
            fit = check_run(source, self.run_defaults(source, self.video_config(source)))
        except MemoryFitError as err:
            return f" **Will not fit this GPU:** {err}"
        except Exception:  # a prediction is a courtesy: never let it break the page
            return ""
        if fit is None:
            return ""
        device = f" of this GPU's {fit.device_gb:.0f} GB" if fit.device_gb else ""
        return (f" Predicted GPU memory: {fit.train_peak_gb:.1f} GB to train, {fit.sample_peak_gb:.1f} GB to "
                f"sample{device} (`motion-matcher preflight`).")

    def estimate(self, choice: str | None, steps: Any) -> str:
        try:
            source = self.source_of(choice)
            n = _num(steps, "steps", 1, 100_000, integer=True)
        except Exception:
            return ""
        rate = self.worker().speeds().get(source) if self._worker or self.runner.warmup_done.is_set() else None
        if rate:
            return (f"{n} steps: about **{fmt_seconds(n / rate)}** at this machine's last measured speed "
                    f"({rate:.2f} steps/s), plus loading and writing." + self.memory_note(source))
        return f"{n} steps. The time per step is measured on the first run with this model." + self.memory_note(source)

    # -------------------------------------------------------------------------------------- examples

    def examples(self) -> list[dict[str, str]]:
        """Bundled reference clips: ``assets/examples/examples.json`` lists ``{"file": ..., "caption": ...}``
        entries (or maps file -> caption). Missing files or folder: no examples, no error."""
        index = EXAMPLES_DIR / "examples.json"
        try:
            raw = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = None
        if isinstance(raw, dict) and isinstance(raw.get("examples"), list):
            raw = raw["examples"]
        if isinstance(raw, dict):
            raw = [{"file": k, "caption": v} for k, v in raw.items()]
        entries = []
        if isinstance(raw, list):
            for e in raw:
                if not isinstance(e, dict):
                    continue
                name = e.get("file") or e.get("video") or e.get("path") or ""
                path = (EXAMPLES_DIR / str(name)).resolve()
                if path.parent == EXAMPLES_DIR.resolve() and path.is_file():  # no paths out of the folder
                    label = e.get("name") or (f"{path.stem} ({e['motion']})" if e.get("motion") else path.stem)
                    entries.append({"name": str(label), "path": str(path),
                                    "caption": str(e.get("caption", "")), "prompt": str(e.get("prompt", ""))})
        elif EXAMPLES_DIR.is_dir():  # no index: every clip, without a caption
            entries = [{"name": p.stem, "path": str(p), "caption": "", "prompt": ""}
                       for p in sorted(EXAMPLES_DIR.glob("*.mp4"))]
        return entries

    # ----------------------------------------------------------------------------------- job actions

    def submit_train(self, video: str | None, caption: str, model: str | None, steps: Any, learning_rate: Any,
                     rank: Any, lambda_ca: Any, lambda_tsa: Any, seed: Any, objective: str | None) -> Job:
        if not (caption or "").strip():
            raise JobError("Write a caption describing the reference video (e.g. 'a red circle on a blue "
                           "background'): training needs it.")
        caption = check_text(caption, "caption")
        source = self.source_of(model)
        vcfg = self.video_config(source)
        cfg = self.run_defaults(source, vcfg)
        cfg.model, cfg.caption = source, caption
        cfg.train.steps = _num(steps, "steps", 1, 100_000, integer=True)
        cfg.train.learning_rate = _num(learning_rate, "learning rate", 1e-7, 1.0)
        cfg.train.seed = resolve_seed(seed)  # -1: a random seed, recorded in the run's config
        # Checkpoints about every tenth of the run (at most every 50 steps), so a restart or a cancel loses little.
        cfg.train.checkpoint_every = max(1, min(cfg.train.checkpoint_every, cfg.train.steps // 10))
        cfg.lora.rank = _num(rank, "LoRA rank", 1, 512, integer=True)
        cfg.loss.lambda_ca = _num(lambda_ca, "λ_CA", 0, 1e7)
        cfg.loss.lambda_tsa = _num(lambda_tsa, "λ_TSA", 0, 1e7)
        cfg.loss.objective = (objective or "motion").strip()
        if cfg.loss.objective not in OBJECTIVE_NAMES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, got {objective!r}")
        cfg.validate()
        from motion_core.preflight import MemoryFitError, check_run  # issue 16: refuse what cannot fit the GPU

        try:
            fit = check_run(source, cfg)
        except MemoryFitError as err:
            raise JobError(str(err)) from err
        if fit is not None:
            log.info("preflight: %s", fit.advice)
        src = self.store.check_video_upload(video)
        name = "reference" + src.suffix.lower()
        work = _work()

        def prepare(d: Path) -> None:
            # Read from the upload itself, not the job's copy: a refusal names the user's file, not reference.mp4.
            work.write_preview(src, vcfg, d / work.PREVIEW)  # also refuses clips that are too short

        params = {"caption": caption, "model": source, "config": cfg.to_dict(), "video": name,
                  "video_name": Path(src).name[:200]}
        return self.runner.submit("train", params, files={name: src}, prepare=prepare)

    def submit_sample(self, job_id: str, prompt: str, negative_prompt: str, beta: Any, seed: Any, steps: Any,
                      guidance: Any, lora_strength: Any, num_videos: Any, compare_base: bool = True) -> Job:
        parent = self._run_with_lora(job_id)
        if not (prompt or "").strip():
            raise JobError("Write a prompt describing the new video (e.g. 'a green star on a dotted background').")
        prompt = check_text(prompt, "prompt")
        seed_v = check_seed(seed)  # -1 (the API's default) or empty: a random seed, reported with the result
        cfg = SampleConfig(num_inference_steps=_num(steps, "steps", 1, 1000, integer=True),
                           guidance_scale=_num(guidance, "guidance", 0, 50), beta=_num(beta, "β", 0, 1),
                           lora_scale=_num(lora_strength, "LoRA strength", 0, 4),
                           negative_prompt=check_text(negative_prompt, "negative prompt", required=False),
                           seed=seed_v,
                           num_videos=_num(num_videos, "number of videos", 1, 16, integer=True))
        cfg.validate()
        params = {"prompt": prompt, "negative_prompt": cfg.negative_prompt, "beta": cfg.beta,
                  "seed": cfg.seed, "steps": cfg.num_inference_steps, "guidance": cfg.guidance_scale,
                  "lora_strength": cfg.lora_scale, "num_videos": cfg.num_videos, "compare_base": bool(compare_base)}
        return self.runner.submit("sample", params, parent=parent.id)

    def submit_import(self, lora: str | None, video: str | None, caption: str | None, model: str | None,
                      config: str | None = None) -> Job:
        src = self.store.check_upload(lora, LORA_EXTENSIONS, "LoRA file")
        meta = _work().lora_meta_of(src)  # LoraFileError for files that are not MotionMatcher LoRAs
        source = self.source_of(model)
        files: dict[str, Any] = {"lora.safetensors": src}
        if config:
            cfg_path = self.store.check_upload(config, frozenset({".json"}), "config file")
            try:
                RunConfig.from_dict(json.loads(Path(cfg_path).read_text(encoding="utf-8")))
            except (ValueError, TypeError) as err:
                raise UploadError(f"{Path(cfg_path).name} is not a MotionMatcher config.json ({err}).") from err
            files["config.json"] = cfg_path
        caption = check_text(caption, "caption", required=False) or str(meta.get("caption", ""))[:500]
        params: dict[str, Any] = {"model": source, "caption": caption,
                                  "lora_name": Path(src).name[:200]}
        prepare = None
        if video:
            vsrc = self.store.check_video_upload(video)
            name = "reference" + vsrc.suffix.lower()
            files[name] = vsrc
            vcfg = self.video_config(source, meta)
            params.update(video=name, video_config=vcfg.to_dict())
            work = _work()

            def prepare(d: Path) -> None:
                work.write_preview(vsrc, vcfg, d / work.PREVIEW)  # the upload itself: errors name the user's file

        return self.runner.submit("import", params, files=files, prepare=prepare)

    def _run_with_lora(self, job_id: str | None) -> Job:
        if not job_id:
            raise JobError("Learn a motion first (section 2), or upload a LoRA (section 4), then generate.")
        job = self.store.load(job_id)
        if job.kind == "sample" and job.parent:
            job = self.store.load(job.parent)
        if job.state in (QUEUED, RUNNING):
            raise JobError("This run is not finished yet; generate when it is done.")
        if job.state != DONE or "lora" not in job.results:
            raise JobError(f"This run ended {job.state} and has no LoRA to generate with. Start a new run.")
        return job

    def resume(self, job_id: str) -> Job:
        """Put a cancelled or failed training run back in the queue; it continues from its checkpoint."""
        job = self.store.load(job_id)
        if job.kind != "train":
            raise JobError("Only training runs can be resumed.")
        if job.state not in (CANCELLED, FAILED):
            raise JobError(f"This run is {job.state}; only cancelled or failed runs can be resumed.")
        self.store.append_log(job_id, "resumed by the user")
        job = self.store.update(job_id, state=QUEUED, phase="waiting", finished=None, attempts=0,
                                message="Resumed: it continues from its last checkpoint.", log_tail=[])
        self.runner.notify()
        return job

    def files_of(self, job: Job) -> list[Path]:
        """The LoRA and its config.json of a finished run, resolved inside the job folder."""
        return [self.store.file_in(job.id, n) for n in self._download_names(job)]

    def _download_names(self, job: Job) -> list[str]:
        if job.state != DONE or "lora" not in job.results:
            raise JobError(f"This run is {job.state}: there is no LoRA to download yet.")
        return [job.results["lora"]] + ([job.results["config"]] if job.results.get("config") else [])

    def served(self, job: Job, rel: str) -> str:
        """A job's result file as the web server may hand it out (allow-listed, under the store's served/)."""
        return str(self.store.serve(job.id, rel))

    def status_dict(self, job: Job) -> dict[str, Any]:
        p = job.progress or {}
        out: dict[str, Any] = {
            "job_id": job.id, "kind": job.kind, "state": job.state, "phase": job.phase,
            "step": p.get("step"), "total": p.get("total"), "loss": p.get("loss"),
            "steps_per_sec": p.get("steps_per_sec"), "eta_sec": p.get("eta_sec"),
            "queue_position": self.store.queue_position(job.id), "message": job.message,
            "created": job.created, "started": job.started, "finished": job.finished, "parent": job.parent,
            "results": job.results,
        }
        if job.state == FAILED:
            out["log_tail"] = job.log_tail
        return out

    # ----------------------------------------------------------------------------------- API endpoints

    @user_errors
    def api_train(self, video: str, caption: str, model: str = "", steps: float = 400,
                  learning_rate: float = 5e-4, rank: float = 32, lambda_ca: float = 2000.0,
                  lambda_tsa: float = 2000.0, seed: float = 0, objective: str = "motion") -> dict[str, Any]:
        """Queue a training run on an uploaded video; returns its status (``job_id`` for the other endpoints)."""
        job = self.submit_train(video, caption, model, steps, learning_rate, rank, lambda_ca, lambda_tsa, seed,
                                objective)
        return self.status_dict(job)

    @user_errors
    def api_status(self, job_id: str) -> dict[str, Any]:
        """A job's state, phase, progress, queue position, message (and last log lines when it failed)."""
        return self.status_dict(self.store.load((job_id or "").strip()))

    @user_errors
    def api_cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, or a running one at its next step (its checkpoint is kept)."""
        return self.status_dict(self.runner.cancel((job_id or "").strip()))

    @user_errors
    def api_resume(self, job_id: str) -> dict[str, Any]:
        """Continue a cancelled or failed training run from its checkpoint."""
        return self.status_dict(self.resume((job_id or "").strip()))

    @user_errors
    def api_sample(self, job_id: str, prompt: str, negative_prompt: str = "", beta: float = 0.3,
                   seed: float = -1, steps: float = 75, guidance: float = 12.0, lora_strength: float = 1.0,
                   num_videos: float = 1, compare_base: bool = True) -> tuple[list[str], dict[str, Any]]:
        """Generate with a finished run's LoRA (waits for the job). Returns the MP4s and a JSON description:
        for each video its seed, the motion-LoRA file, the base model's file for the same seed and β, and its
        motion report (``motion_core.report``: motion discrepancies, the sentence, CLIP scores where available)."""
        job = self.submit_sample((job_id or "").strip(), prompt, negative_prompt, beta, seed, steps, guidance,
                                 lora_strength, num_videos, compare_base)
        job = self.runner.wait(job.id)
        if job.state != DONE:
            raise JobError(f"Generation {job.state}: {job.message or 'no message'}")
        files, videos = [], []
        for v in job.results.get("videos", []):
            entry = {"seed": v["seed"], "motion": v["lora"], "base": v.get("base"), "report": v.get("report")}
            files.append(self.served(job, v["lora"]))
            if v.get("base"):
                files.append(self.served(job, v["base"]))
            videos.append(entry)
        info = self.status_dict(job) | {"videos": videos}
        return files, info

    @user_errors
    def api_download(self, job_id: str) -> list[str]:
        """The finished run's ``lora.safetensors`` and ``config.json``."""
        job = self.store.load((job_id or "").strip())
        return [self.served(job, n) for n in self._download_names(job)]

    @user_errors
    def api_import_lora(self, lora: str, video: str | None = None, caption: str = "",
                        model: str = "") -> dict[str, Any]:
        """Register a LoRA made earlier (checked against the model) so ``/sample`` can use it; the optional
        reference video enables β blending."""
        return self.status_dict(self.submit_import(lora, video, caption, model))

    @user_errors
    def api_push_to_hub(self, job_id: str, repo_id: str, token: str, private: bool = True) -> dict[str, Any]:
        """Upload the run's LoRA, config and sample videos with a model card; private unless asked otherwise."""
        url = self.push(job_id, repo_id, token, private)
        return {"url": url, "repo_id": repo_id, "private": bool(private)}

    def push(self, job_id: str, repo_id: str, token: str, private: bool = True,
             api_factory: Callable[..., Any] | None = None) -> str:
        from . import hub

        job = self._run_with_lora((job_id or "").strip())
        hub.check_token(token)
        hub.check_repo_id(repo_id, user="user")  # the real owner is filled in from the token
        lora, *rest = self.files_of(job)
        files = {"lora.safetensors": lora}
        if rest:
            files["config.json"] = rest[0]
        samples = []
        for child in reversed(self.store.children(job.id)):
            for v in child.results.get("videos", []) if child.state == DONE else []:
                if len(samples) < 4 and v.get("pair"):
                    name = f"samples/{child.id[:8]}_{v['pair']}"
                    files[name] = self.store.file_in(child.id, v["pair"])
                    samples.append(name)
        run_cfg = json.loads(rest[0].read_text()) if rest else None
        meta = job.results.get("meta") or _work().lora_meta_of(lora)
        from motion_core.models import model_name  # the card is public: a folder by its name, never its path

        card = hub.model_card(repo_id, model_name(job.params.get("model", "")), job.params.get("caption", "") or
                              meta.get("caption", ""), run_cfg, meta, samples)
        return hub.push_lora(files, card, repo_id, token, private=private, api_factory=api_factory)

    # -------------------------------------------------------------------------------------- page: setup

    def remember(self, saved: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
        saved = dict(saved or {})
        hist = [job_id] + [j for j in saved.get("history", []) if j != job_id]
        saved.update(current=job_id, history=hist[:MAX_HISTORY])
        return saved

    def history_choices(self, saved: dict[str, Any] | None) -> list[tuple[str, str]]:
        out = []
        for job_id in (saved or {}).get("history", []):
            try:
                job = self.store.load(job_id)
            except JobError:
                continue
            when = time.strftime("%d %b %H:%M", time.localtime(job.created))
            what = job.params.get("caption") or job.params.get("lora_name") or job.kind
            out.append((f"{when} · {what[:40]} · {job.state}", job.id))
        return out

    @user_errors
    def ui_load(self, saved: dict[str, Any] | None, model: str | None, request: gr.Request | None = None):
        """Page opened: re-attach to the run in the link (``?job=``) or the one this browser ran last."""
        wanted = None
        if request is not None:
            wanted = (request.query_params.get("job") or "").strip() or None
        wanted = wanted or (saved or {}).get("current")
        current = None
        if wanted:
            try:
                job = self.store.load(wanted)
                current = job.parent if job.kind == "sample" and job.parent else job.id
            except JobError:
                if request is not None and request.query_params.get("job"):
                    gr.Warning(f"The run {wanted[:40]} was not found (runs are removed {self.opts.ttl_hours:g} h "
                               "after they finish).")
        if current:
            saved = self.remember(saved, current)
        choices = self.history_choices(saved)
        presets = self.presets(model)
        section1 = [gr.skip()] * len(self.RUN_FIELDS)
        if current:
            section1, presets = self.run_fields(current, presets)
        return (current, saved or {}, gr.update(choices=choices, value=current if choices else None),
                self.model_status(model), gr.Timer(active=bool(current) or self._warming_up()), {},
                *presets, *section1)

    # What a reopened run puts back in sections 1 and 2 (in ``motion_app.ui``'s order), besides steps and learning
    # rate.
    RUN_FIELDS = ("video", "caption", "rank", "lambda_ca", "lambda_tsa", "seed", "objective")

    def run_fields(self, job_id: str, presets: list[Any]) -> tuple[list[Any], list[Any]]:
        """A reopened run (a link, the history) shows its own clip (as the model saw it), caption and settings, so
        the page says what the run was, and Learn motion repeats it. Returns (RUN_FIELDS updates, presets)."""
        job = self.store.load(job_id)
        p = job.params
        cfg = p.get("config", {}) if job.kind == "train" else {}
        values: dict[str, Any] = {"caption": p.get("caption") or gr.skip()}
        preview = self.store.job_dir(job.id) / "preview.mp4"
        values["video"] = self.served(job, "preview.mp4") if preview.is_file() else gr.skip()
        tr, lo, ls = cfg.get("train", {}), cfg.get("lora", {}), cfg.get("loss", {})
        for key, value in (("rank", lo.get("rank")), ("lambda_ca", ls.get("lambda_ca")),
                           ("lambda_tsa", ls.get("lambda_tsa")), ("seed", tr.get("seed")),
                           ("objective", ls.get("objective"))):
            values[key] = value if value is not None else gr.skip()
        presets = list(presets)
        if tr.get("steps") is not None:
            presets[0] = tr["steps"]
        if tr.get("learning_rate") is not None:
            presets[1] = tr["learning_rate"]
        return [values[k] for k in self.RUN_FIELDS], presets

    @user_errors
    def ui_preview(self, video: str | None, model: str | None):
        """The clip as the model will see it (resampled, cropped, resized), with what was done to it."""
        if not video:
            return None, ""
        note = ""
        try:
            vcfg = self.video_config(self.source_of(model))
        except Exception as err:  # no usable model yet: show the clip at the paper's settings, and say so
            from motion_core.config import VideoConfig

            vcfg = VideoConfig(max_file_mb=self.opts.max_upload_mb)
            note = f" (the paper's settings: the model is not usable: {user_message(err)})"
        try:
            src = self.store.check_video_upload(video)
            from motion_core.video import probe_video

            info = probe_video(src)
            out = self.store.new_preview_dir() / "preview.mp4"
            _work().write_preview(src, vcfg, out)
        except Exception as err:
            msg = user_message(err)
            gr.Warning(msg)
            return None, f"**Cannot use this video:** {msg}"
        secs = vcfg.num_frames / vcfg.fps
        src_desc = f"{info.width}×{info.height}"
        if info.duration_sec:
            src_desc += f", {info.duration_sec:.1f} s"
        if info.fps:
            src_desc += f" at {info.fps:.3g} fps"
        return str(out), (f"The model sees **{vcfg.num_frames} frames at {vcfg.fps:g} fps** ({secs:.1f} s from the "
                          f"start), centre-cropped to **{vcfg.width}×{vcfg.height}**{note}. Source: {src_desc}.")

    def ui_example(self, name: str | None):
        for e in self.examples():
            if e["name"] == name:
                return e["path"], e["caption"], e["prompt"] or gr.skip()
        return gr.skip(), gr.skip(), gr.skip()

    PRESET_FIELDS = (("train", "steps"), ("train", "learning_rate"), ("sample", "num_inference_steps"),
                     ("sample", "guidance_scale"))

    def presets(self, model: str | None) -> list[Any]:
        """Updates for the train steps, learning rate, sampling steps and guidance from the model's sidecar
        presets (a small CPU model wants fewer steps than Zeroscope); skipped where it has none."""
        try:
            found = _work().model_defaults(self.source_of(model))
        except Exception:
            found = {}
        return [gr.update(value=found[sec][key]) if key in found.get(sec, {}) else gr.skip()
                for sec, key in self.PRESET_FIELDS]

    def ui_model_changed(self, model: str | None, steps: Any):
        return self.model_status(model), self.estimate(model, steps), *self.presets(model)

    @user_errors
    def ui_start(self, video, caption, model, steps, lr, rank, lca, ltsa, seed, objective, saved):
        job = self.submit_train(video, caption, model, steps, lr, rank, lca, ltsa, seed, objective)
        gr.Info("Training queued. You can close this page: the run goes on, and this page (or its link) shows it.")
        saved = self.remember(saved, job.id)
        return job.id, saved, gr.update(choices=self.history_choices(saved), value=job.id), gr.Timer(active=True), {}

    @user_errors
    def ui_import(self, files, video, caption, model, saved):
        paths = [str(f) for f in (files if isinstance(files, list) else [files] if files else [])]
        loras = [p for p in paths if p.lower().endswith(".safetensors")]
        configs = [p for p in paths if p.lower().endswith(".json")]
        if len(loras) != 1 or len(configs) > 1:
            raise UploadError("Upload one .safetensors LoRA file, and optionally its config.json.")
        job = self.submit_import(loras[0], video, caption, model, configs[0] if configs else None)
        saved = self.remember(saved, job.id)
        return job.id, saved, gr.update(choices=self.history_choices(saved), value=job.id), gr.Timer(active=True), {}

    @user_errors
    def ui_open(self, job_id: str | None, saved):
        """A run picked from the history: shown, with its clip, caption and settings in sections 1 and 2."""
        if not job_id:
            return (gr.skip(),) * (6 + len(self.RUN_FIELDS))
        section1, (steps, lr) = self.run_fields(job_id, [gr.skip(), gr.skip()])
        return job_id, self.remember(saved, job_id), gr.Timer(active=True), {}, steps, lr, *section1

    @user_errors
    def ui_cancel(self, job_id: str | None):
        if not job_id:
            raise JobError("There is no run to cancel.")
        job = self.runner.cancel(job_id)
        if job.terminal and job.state != CANCELLED:
            gr.Info(f"This run is already {job.state}.")
        return gr.Timer(active=True)

    @user_errors
    def ui_resume(self, job_id: str | None):
        if not job_id:
            raise JobError("There is no run to resume.")
        self.resume(job_id)
        return gr.Timer(active=True)

    @user_errors
    def ui_generate(self, job_id, prompt, negative, beta, fixed_seed, seed, steps, guidance, strength, n, compare):
        self.submit_sample(job_id, prompt, negative, beta, seed if fixed_seed else -1, steps, guidance, strength, n,
                           compare)
        return gr.Timer(active=True)

    @user_errors
    def ui_cancel_generation(self, job_id: str | None):
        latest = self._latest_sample(job_id) if job_id else None
        if latest is None or latest.terminal:
            raise JobError("No generation is running.")
        self.runner.cancel(latest.id)
        return gr.Timer(active=True)

    @user_errors
    def ui_push(self, job_id, repo_id, token, private):
        url = self.push(job_id, repo_id, token, private)
        return f"Uploaded to [{url}]({url}) ({'private' if private else 'public'})."

    # ------------------------------------------------------------------------------------- page: polling

    def _latest_sample(self, job_id: str) -> Job | None:
        samples = [j for j in self.store.children(job_id) if j.kind == "sample"]
        return samples[-1] if samples else None

    # What one timer tick updates, in the order of ``motion_app.ui``'s poll outputs (then the timer and the signature).
    POLL_KEYS = ("status", "progress", "loss", "ca", "tsa", "files", "gen_status", "gen_progress", "result",
                 "report", "report_img", "gallery", "model", "estimate", "cancel", "resume", "cancel_gen", "seed")

    def poll(self, job_id: str | None, sig: dict[str, Any] | None, model: str | None = None, steps: Any = None):
        """One timer tick: everything the page shows about the current run (``POLL_KEYS``), sending only what
        changed, then the timer and the signature."""
        sig = dict(sig or {})
        n = len(self.POLL_KEYS)
        if not job_id:
            if self._warming_up() or sig.get("model_pending"):  # keep the model line true while it loads
                sig["model_pending"] = self._warming_up()
                values = [gr.skip()] * n
                values[self.POLL_KEYS.index("model")] = self.model_status(model)
                return (*values, gr.Timer(active=True), sig)
            return (*(gr.skip() for _ in range(n)), gr.Timer(active=False), sig)
        try:
            return self._poll(job_id, sig, model, steps)
        except JobError as err:
            return (f"**{err}**", "", *(gr.skip() for _ in range(n - 2)), gr.Timer(active=False), sig)
        except Exception:  # a timer tick must never raise: it would pop an error every second
            log.exception("poll failed for job %s", job_id)
            return (*(gr.skip() for _ in range(n)), gr.skip(), sig)

    def _poll(self, job_id: str, sig: dict[str, Any], model: str | None, steps: Any = None):
        out: dict[str, Any] = {}
        job = self.store.load(job_id)
        out["status"] = self._status_md(job)
        out["progress"] = self._progress_html(job)
        out["ca"], out["tsa"], out["files"] = self._result_files(job)
        samples = [j for j in self.store.children(job.id) if j.kind == "sample"]
        latest = samples[-1] if samples else None
        out["gen_status"] = self._gen_status_md(latest)
        out["gen_progress"] = self._progress_html(latest) if latest and not latest.terminal else ""
        done = [j for j in samples if j.state == DONE]
        out["result"] = self._video_of(done[-1], 0) if done else None
        out["report"], out["report_img"] = self._report_of(done[-1]) if done else ("", None)
        out["gallery"] = [(self.served(j, v.get("gif") or v["lora"]), self._caption_of(j, v))
                          for j in reversed(done) for v in j.results.get("videos", [])]
        out["model"] = self.model_status(model)
        out["estimate"] = self.estimate(model, steps) if steps is not None else None
        # Buttons are clickable only when they can do something.
        out["cancel"] = gr.update(interactive=not job.terminal)
        out["resume"] = gr.update(interactive=job.kind == "train" and job.state in (CANCELLED, FAILED))
        out["cancel_gen"] = gr.update(interactive=latest is not None and not latest.terminal)
        # The seed box shows the seed the last generation used (a random one included), ready to reuse.
        out["seed"] = done[-1].results.get("seeds", [None])[0] if done else None
        values = []
        for key in self.POLL_KEYS:
            if key == "loss":
                values.append(self._loss_update(job, sig))
                continue
            if key in ("estimate", "seed") and out[key] is None:
                values.append(gr.skip())
                continue
            stamp = json.dumps(out[key], default=str, sort_keys=True)
            if sig.get(key) == stamp:
                values.append(gr.skip())
            else:
                sig[key] = stamp
                values.append(out[key])
        active = not job.terminal or (latest is not None and not latest.terminal) or self._warming_up()
        return (*values, gr.Timer(active=active), sig)

    def _warming_up(self) -> bool:
        return self.opts.preload and not self.runner.warmup_done.is_set()

    def _loss_update(self, job: Job, sig: dict[str, Any]) -> Any:
        if job.kind != "train":  # an uploaded LoRA has no loss: clear the plot once
            key = f"{job.id}:none"
            if sig.get("loss") == key:
                return gr.skip()
            sig["loss"] = key
            return None
        path = self.store.job_dir(job.id) / "train" / "train_log.jsonl"
        size = path.stat().st_size if path.is_file() else 0
        key = f"{job.id}:{size}:{job.state}"
        if sig.get("loss") == key:
            return gr.skip()
        # At most one picture every 2 s while training: the curve barely moves between, and it costs CPU.
        recent = time.monotonic() - sig.get("loss_t", 0.0) < 2.0
        if not job.terminal and recent and str(sig.get("loss", "")).startswith(job.id):
            return gr.skip()
        records = []
        if size:
            for line in path.read_text(encoding="utf-8").splitlines()[-5000:]:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line being written right now
        from .figures import loss_figure

        sig["loss"], sig["loss_t"] = key, time.monotonic()
        return loss_figure(records, (job.progress or {}).get("total") or job.params.get("config", {}).get(
            "train", {}).get("steps"))

    def _result_files(self, job: Job) -> tuple[str | None, str | None, list[str] | None]:
        d = self.store.job_dir(job.id)
        ca = d / "features" / "cross_attention.png"
        tsa = d / "features" / "temporal_attention.png"
        files = None
        if job.state == DONE and "lora" in job.results:
            files = [self.served(job, n) for n in self._download_names(job)]
        return (self.served(job, "features/cross_attention.png") if ca.is_file() else None,
                self.served(job, "features/temporal_attention.png") if tsa.is_file() else None, files)

    def _report_of(self, job: Job) -> tuple[str, str | None]:
        """The latest generation's motion report (``motion_core.report``) as Markdown, and its track picture."""
        videos = job.results.get("videos", [])
        if not videos:
            return "", None
        rep = videos[0].get("report") or {}
        if "error" in rep or not rep:
            why = html.escape(rep.get("error", "none for this generation."), quote=False)
            return f"**Motion report:** {why}", None
        md = [f"**Motion report** (seed {videos[0]['seed']}): **{html.escape(rep['sentence'], quote=False)}**", "",
              "| video | motion discrepancy (lower = closer to the reference) | CLIP-T (text) | "
              "look of the reference (CLIP, leakage) |", "|---|---|---|---|"]
        for label, key in (("motion LoRA", "lora"), ("base model", "base")):
            sc = rep.get(key)
            if sc:
                clip_t = "n/a" if sc.get("clip_t") is None else f"{sc['clip_t']:.1f}"
                look = "n/a" if sc.get("look") is None else f"{sc['look']:.1f}"
                md.append(f"| {label} | {sc['motion_discrepancy']:.4g} ({sc['tracks']} tracks) | {clip_t} | {look} |")
        for i, v in enumerate(videos[1:], start=2):  # more videos: one line each
            other = v.get("report") or {}
            if "sentence" in other:
                md.append(f"\nVideo {i} (seed {v['seed']}): {html.escape(other['sentence'], quote=False)}")
        from motion_core.report import tracker_words

        md.append(f"\nPoint tracks: {tracker_words(rep)}. One sample: judge from a few seeds.")
        if not rep["clip"]["available"]:
            md.append(f"n/a: CLIP scores unavailable: {html.escape(rep['clip']['reason'], quote=False)}")
        pic = self.served(job, rep["picture"]) if rep.get("picture") else None
        return "\n".join(md), pic

    def _video_of(self, job: Job, i: int) -> str:
        v = job.results["videos"][i]
        return self.served(job, v.get("pair") or v["lora"])

    @staticmethod
    def _caption_of(job: Job, v: dict[str, Any]) -> str:
        p = job.params
        rep = v.get("report") or {}
        verdict = {"closer": f"LoRA {rep.get('ratio') or 0:.1f}x closer", "same": "LoRA ≈ base",
                   "further": "LoRA further"}.get(rep.get("verdict", ""))
        ratio = f" · {verdict}" if verdict and rep.get("ratio") else ""
        return f"seed {v['seed']} · β {p.get('beta')}{ratio} · {p.get('prompt', '')[:60]}"

    def _status_md(self, job: Job) -> str:
        what = {"train": "Training run", "import": "Uploaded LoRA", "sample": "Generation"}.get(job.kind, job.kind)
        lines = [f"**{what}: {STATE_WORDS.get(job.state, job.state)}**"
                 + (f" — {html.escape(job.phase)}" if job.state == RUNNING else "")]
        if job.state == QUEUED:
            pos = self.store.queue_position(job.id)
            if pos:
                lines.append(f"Waiting for the GPU: **{pos} job{'s' if pos > 1 else ''} ahead** of this one.")
            else:
                lines.append("Next in line.")
        if job.state == DONE and job.kind == "train":
            n, secs = job.results.get("steps") or 0, job.results.get("seconds")
            per = f" ({secs / n:.2f} s per step, measured)" if n and secs else ""
            lines.append(f"Finished {n} steps in {fmt_seconds(secs)}{per}. Whether the motion was learned: see the "
                         "motion report of each generated video (section 3). Generate below, or download the LoRA.")
        if job.state == DONE and job.kind == "import":
            lines.append("The LoRA fits the model. Generate below.")
        if job.message:
            lines.append(html.escape(job.message))
        if job.state == FAILED and job.log_tail:
            lines.append("Last log lines:\n```\n" + "\n".join(job.log_tail[-8:]) + "\n```")
        if job.state in (CANCELLED, FAILED) and job.kind == "train":
            lines.append("*Resume* continues from the last checkpoint.")
        lines.append(f"Link to this run: [`?job={job.id}`](?job={job.id})")
        return "\n\n".join(lines)

    def _gen_status_md(self, job: Job | None) -> str:
        if job is None:
            return ""
        text = f"**Generation: {STATE_WORDS.get(job.state, job.state)}**"
        if job.state == RUNNING:
            text += f" — {html.escape(job.phase)}"
        if job.state == QUEUED:
            pos = self.store.queue_position(job.id)
            text += f" — {pos} job{'s' if pos != 1 else ''} ahead" if pos else " — next in line"
        if job.message:
            text += f"\n\n{html.escape(job.message)}"
        if job.state == DONE:
            seeds = ", ".join(str(s) for s in job.results.get("seeds", []))
            text += f"\n\nSeed(s) {seeds}; left: with the motion LoRA, right: the base model, same seed and β."
        return text

    def _progress_html(self, job: Job | None) -> str:
        if job is None or job.state not in (RUNNING, QUEUED):
            return ""
        p = job.progress or {}
        step, total = p.get("step"), p.get("total")
        frac = (step or 0) / total if total else 0.0
        bits = [html.escape(job.phase)]
        if total:
            bits.append(f"step {step or 0} of {total}")
        if p.get("steps_per_sec"):
            bits.append(f"{p['steps_per_sec']:.2f} steps/s")
        if p.get("eta_sec") and job.phase == "training":
            bits.append(f"about {fmt_seconds(p['eta_sec'])} left")
        if p.get("loss") is not None and job.kind == "train":
            bits.append(f"loss {p['loss']:.4g}")
        if job.state == QUEUED:
            bits = ["waiting in the queue"]
        return (f'<div class="mm-progress"><div class="mm-bar" style="width:{100 * frac:.1f}%"></div></div>'
                f'<div class="mm-progress-text">{" · ".join(bits)}</div>')
