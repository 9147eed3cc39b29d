"""The job service: what the page and the API ask of the app, without Gradio.

``MotionService`` owns the job store, the runner (one worker thread) and, through ``worker``, the model cache. It
checks inputs, submits training, sampling and import jobs, cancels and resumes them, says where a job stands
(``status_dict``) and which of its files may be handed out; none of it runs GPU work itself, so a closed tab or
a dropped API client never stops a job. ``page`` and ``api`` turn its answers into what Gradio shows.

``worker`` (torch, diffusers) is imported on first use, so the page is served before torch loads. A job's
settings are resolved by ``settings`` (the model's own, then what was given). Bad input raises ``JobError`` or the
library's ``ConfigError`` (both ``ValueError``) with a message for the user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motion_core.config import RunConfig, VideoConfig, check_text

from . import settings
from .jobs import CANCELLED, DONE, FAILED, LORA_EXTENSIONS, QUEUED, RUNNING, Job, JobError, UploadError
from .runner import Runner
from .store import JobStore

log = logging.getLogger(__name__)

ZEROSCOPE_ID = "cerspense/zeroscope_v2_576w"


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


class MotionService:
    """The app's state: store, runner, worker. Build it, ``start()`` it, hand it to ``ui.build_ui``."""

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

    def start(self) -> MotionService:
        if os.environ.get("SPACES_ZERO_GPU"):
            self.worker()  # ZeroGPU wants its @spaces.GPU functions to exist when the app launches
        self.runner.start()
        return self

    def stop(self) -> None:
        self.runner.stop()

    def worker(self) -> Any:
        with self._worker_lock:
            if self._worker is None:
                work = settings.load_worker()
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

    def warming_up(self) -> bool:
        """The default model is still loading in the background."""
        return self.opts.preload and not self.runner.warmup_done.is_set()

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
        settings.load_worker()
        from motion_core.models import resolve_source

        return resolve_source(self.opts.model)

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
        settings.load_worker()
        from motion_core.models import resolve_source

        source = resolve_source(choice)
        settings.check_source(source)
        return source

    def model_loaded(self, source: str) -> bool:
        return self._worker is not None and self._worker.models.peek(source) is not None

    def video_config(self, source: str, lora_meta: dict[str, Any] | None = None) -> VideoConfig:
        """How a reference clip is read for this model, uploads up to the app's limit (``settings.video_config``)."""
        return settings.video_config(source, self.opts.max_upload_mb, lora_meta)

    def run_defaults(self, source: str, vcfg: VideoConfig | None = None) -> RunConfig:
        """The model's own run settings at the clip size ``vcfg`` (default: the model's): what the page shows
        before a run, and what the API uses for a setting not given (``settings.run_defaults``)."""
        return settings.run_defaults(source, vcfg or self.video_config(source))

    # ----------------------------------------------------------------------------------- job actions

    def submit_train(self, video: str | None, caption: str, model: str | None, steps: Any = None,
                     learning_rate: Any = None, rank: Any = None, lambda_ca: Any = None, lambda_tsa: Any = None,
                     seed: Any = None, objective: str | None = None) -> Job:
        """Queue a training run; settings not given (None) are the model's own (``train_config``)."""
        if not (caption or "").strip():
            raise JobError("Write a caption describing the reference video (e.g. 'a red circle on a blue "
                           "background'): training needs it.")
        caption = check_text(caption, "caption")
        source = self.source_of(model)
        cfg = settings.train_config(source, caption, self.video_config(source), steps, learning_rate, rank,
                                    lambda_ca, lambda_tsa, seed, objective)
        vcfg = cfg.video
        from motion_core.preflight import MemoryFitError, check_run  # issue 16: refuse what cannot fit the GPU

        try:
            fit = check_run(source, cfg)
        except MemoryFitError as err:
            raise JobError(str(err)) from err
        if fit is not None:
            log.info("preflight: %s", fit.advice)
        src = self.store.check_video_upload(video)
        name = "reference" + src.suffix.lower()
        media = settings.load_media()

        def prepare(d: Path) -> None:
            # Read from the upload itself, not the job's copy: a refusal names the user's file, not reference.mp4.
            media.write_preview(src, vcfg, d / media.PREVIEW)  # also refuses clips that are too short

        params = {"caption": caption, "model": source, "config": cfg.to_dict(), "video": name,
                  "video_name": Path(src).name[:200]}
        return self.runner.submit("train", params, files={name: src}, prepare=prepare)

    def submit_sample(self, job_id: str, prompt: str, negative_prompt: str | None = None, beta: Any = None,
                      seed: Any = None, steps: Any = None, guidance: Any = None, lora_strength: Any = None,
                      num_videos: Any = None, compare_base: bool = True) -> Job:
        """Queue a generation with a finished run's LoRA; its params carry the resolved ``SampleConfig`` (as a
        training job's carry its ``RunConfig``). Settings not given are the run's model's own."""
        parent = self.run_with_lora(job_id)
        if not (prompt or "").strip():
            raise JobError("Write a prompt describing the new video "
                           "(e.g. 'a green star on a dotted white background').")
        prompt = check_text(prompt, "prompt")
        cfg = settings.sample_config(parent.params["model"], negative_prompt, beta, seed, steps, guidance,
                                     lora_strength, num_videos)
        params = {"prompt": prompt, "compare_base": bool(compare_base), "config": cfg.to_dict()}
        return self.runner.submit("sample", params, parent=parent.id)

    def submit_import(self, lora: str | None, video: str | None, caption: str | None, model: str | None,
                      config: str | None = None) -> Job:
        src = self.store.check_upload(lora, LORA_EXTENSIONS, "LoRA file")
        media = settings.load_media()
        meta = media.lora_meta_of(src)  # LoraFileError for files that are not MotionMatcher LoRAs
        source = self.source_of(model)
        from motion_core.rundir import CONFIG_FILE, LORA_FILE  # an import job's folder is its run folder

        files: dict[str, Any] = {LORA_FILE: src}
        if config:
            cfg_path = self.store.check_upload(config, frozenset({".json"}), "config file")
            try:
                RunConfig.from_dict(json.loads(Path(cfg_path).read_text(encoding="utf-8")))
            except (ValueError, TypeError) as err:
                raise UploadError(f"{Path(cfg_path).name} is not a MotionMatcher config.json ({err}).") from err
            files[CONFIG_FILE] = cfg_path
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

            def prepare(d: Path) -> None:
                media.write_preview(vsrc, vcfg, d / media.PREVIEW)  # the upload itself: errors name the user's file

        return self.runner.submit("import", params, files=files, prepare=prepare)

    def run_with_lora(self, job_id: str | None) -> Job:
        """The finished run (training or import) a generation uses; a sample job's id stands for its run."""
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

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or a running one at its next step (its checkpoint is kept)."""
        return self.runner.cancel(job_id)

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

    def run_dir(self, job: Job) -> Any:
        """The job's run folder, a ``motion_core.rundir.RunDir`` (``JobStore.run_dir``)."""
        settings.load_worker()
        return self.store.run_dir(job)

    def samples_of(self, job_id: str) -> list[Job]:
        """A run's generations, oldest first."""
        return [j for j in self.store.children(job_id) if j.kind == "sample"]

    # ----------------------------------------------------------------------------------- files, status

    def files_of(self, job: Job) -> list[Path]:
        """The LoRA and its config.json of a finished run, resolved inside the job folder."""
        return [self.store.file_in(job.id, n) for n in self.download_names(job)]

    def download_names(self, job: Job) -> list[str]:
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

    def push(self, job_id: str, repo_id: str, token: str, private: bool = True,
             api_factory: Callable[..., Any] | None = None) -> str:
        """Upload a finished run's LoRA, config and up to four results with a model card; returns the URL."""
        from . import hub

        job = self.run_with_lora((job_id or "").strip())
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
        meta = job.results.get("meta") or settings.load_media().lora_meta_of(lora)
        from motion_core.models import model_name  # the card is public: a folder by its name, never its path

        card = hub.model_card(repo_id, model_name(job.params.get("model", "")), job.params.get("caption", "") or
                              meta.get("caption", ""), run_cfg, meta, samples)
        return hub.push_lora(files, card, repo_id, token, private=private, api_factory=api_factory)
