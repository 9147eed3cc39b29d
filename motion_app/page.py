"""The page's event handlers: what each click, upload and timer tick of the page does.

``Page`` wraps a ``service.MotionService``; ``ui`` wires its ``ui_*`` methods to the page's events and ``poll`` to
its timer. They return Gradio updates in the order ``ui`` lists its components (``POLL_KEYS``, ``RUN_FIELDS``,
``PRESET_FIELDS``). The words on the page for a job's state come from ``views``; bad input ends as a ``gr.Error``
(``api.user_errors``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import gradio as gr

from motion_core.config import TrainConfig

from . import examples, views
from .api import user_errors
from .jobs import CANCELLED, DONE, FAILED, Job, JobError, UploadError, user_message
from .service import MotionService
from .settings import as_number, load_media

log = logging.getLogger(__name__)

MAX_HISTORY = 20


class Page:
    """The handlers of the page of one ``MotionService``."""

    # What one timer tick updates, in the order of ``ui``'s poll outputs (then the timer and the signature).
    POLL_KEYS = ("status", "progress", "loss", "ca", "tsa", "files", "gen_status", "gen_progress", "result",
                 "report", "report_img", "gallery", "model", "estimate", "cancel", "resume", "cancel_gen", "seed")
    # The page's settings, in ``ui``'s order: (component, config section, field). They show the model's own
    # defaults (``MotionService.run_defaults``, what the API uses for a setting not given); a reopened run shows
    # its own training settings.
    PRESET_FIELDS = (("steps", "train", "steps"), ("lr", "train", "learning_rate"), ("rank", "lora", "rank"),
                     ("lambda_ca", "loss", "lambda_ca"), ("lambda_tsa", "loss", "lambda_tsa"),
                     ("seed", "train", "seed"), ("objective", "loss", "objective"),
                     ("sample_steps", "sample", "num_inference_steps"), ("guidance", "sample", "guidance_scale"),
                     ("beta", "sample", "beta"), ("strength", "sample", "lora_scale"),
                     ("num_videos", "sample", "num_videos"))
    TRAIN_PRESETS = tuple(f for f in PRESET_FIELDS if f[1] != "sample")  # what a run's own config holds
    # What a reopened run puts back in section 1 (in ``ui``'s order), besides its settings.
    RUN_FIELDS = ("video", "caption")

    def __init__(self, service: MotionService) -> None:
        self.svc = service
        self.store = service.store

    # ------------------------------------------------------------------------------- model, estimate

    def model_status(self, choice: str | None) -> str:
        try:
            source = self.svc.source_of(choice)
        except Exception as err:
            return f"**Model problem:** {user_message(err)}"
        if self.svc.model_loaded(source):
            return f"Model `{source}`: loaded."
        runner = self.svc.runner
        if source == self.svc.default_source() and self.svc.opts.preload:
            if not runner.warmup_done.is_set():
                return f"Model `{source}`: loading in the background…"
            if runner.warmup_error:
                return f"**Model problem:** {runner.warmup_error}"
        return f"Model `{source}`: loads when the first job starts."

    def memory_note(self, source: str) -> str:
        """Preflight's prediction for training this model on this machine's GPU, shown before a run (issue 16);
        empty where there is nothing to predict (no GPU, or a model without measured fits)."""
        from motion_core.preflight import MemoryFitError, check_run

        try:
            fit = check_run(source, self.svc.run_defaults(source))
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
            source = self.svc.source_of(choice)
            n = as_number(steps, "steps", integer=True)
            TrainConfig(steps=n).validate()  # the config's range
        except Exception:
            return ""
        rate = self.store.speeds().get(source)
        if rate:
            return (f"{n} steps: about **{views.fmt_seconds(n / rate)}** at this machine's last measured speed "
                    f"({rate:.2f} steps/s), plus loading and writing." + self.memory_note(source))
        return f"{n} steps. The time per step is measured on the first run with this model." + self.memory_note(source)

    def presets(self, model: str | None) -> list[Any]:
        """The settings' values for the model (``PRESET_FIELDS``): its own defaults, the same the API uses for a
        setting not given (a small CPU model wants fewer sampling steps than Zeroscope). Left as they are when
        the model is not usable."""
        try:
            cfg = self.svc.run_defaults(self.svc.source_of(model))
        except Exception:
            return [gr.skip()] * len(self.PRESET_FIELDS)
        return [getattr(getattr(cfg, sec), name) for _, sec, name in self.PRESET_FIELDS]

    # -------------------------------------------------------------------------------------- examples

    def ui_example(self, name: str | None):
        for e in examples.examples():
            if e["name"] == name:
                return e["path"], e["caption"], e["prompt"] or gr.skip()
        return gr.skip(), gr.skip(), gr.skip()

    # ------------------------------------------------------------------------------ the runs of a browser

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

    def _shown(self, saved: dict[str, Any], job: Job):
        """After a run was started or imported: remember it, list it, poll."""
        saved = self.remember(saved, job.id)
        return job.id, saved, gr.update(choices=self.history_choices(saved), value=job.id), gr.Timer(active=True), {}

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
                    gr.Warning(f"The run {wanted[:40]} was not found (runs are removed "
                               f"{self.svc.opts.ttl_hours:g} h after they finish).")
        if current:
            saved = self.remember(saved, current)
        choices = self.history_choices(saved)
        presets = self.presets(model)
        section1 = [gr.skip()] * len(self.RUN_FIELDS)
        if current:
            section1, presets = self.run_fields(current, presets)
        return (current, saved or {}, gr.update(choices=choices, value=current if choices else None),
                self.model_status(model), gr.Timer(active=bool(current) or self.svc.warming_up()), {},
                *presets, *section1)

    def run_fields(self, job_id: str, presets: list[Any]) -> tuple[list[Any], list[Any]]:
        """A reopened run (a link, the history) shows its own clip (as the model saw it), caption and settings, so
        the page says what the run was, and Learn motion repeats it. Returns (RUN_FIELDS updates, ``presets``
        with the run's own training settings in place of the model's)."""
        job = self.store.load(job_id)
        p = job.params
        cfg = p.get("config", {}) if job.kind == "train" else {}
        values: dict[str, Any] = {"caption": p.get("caption") or gr.skip()}
        preview = self.store.job_dir(job.id) / "preview.mp4"
        values["video"] = self.svc.served(job, "preview.mp4") if preview.is_file() else gr.skip()
        presets = list(presets)
        for i, (_, sec, name) in enumerate(self.PRESET_FIELDS):
            value = cfg.get(sec, {}).get(name) if sec != "sample" else None
            if value is not None:
                presets[i] = value
        return [values[k] for k in self.RUN_FIELDS], presets

    @user_errors
    def ui_open(self, job_id: str | None, saved):
        """A run picked from the history: shown, with its clip, caption and training settings in sections 1 and
        2 (``TRAIN_PRESETS``, then ``RUN_FIELDS``)."""
        n = len(self.TRAIN_PRESETS)
        if not job_id:
            return (gr.skip(),) * (4 + n + len(self.RUN_FIELDS))
        section1, presets = self.run_fields(job_id, [gr.skip()] * len(self.PRESET_FIELDS))
        return job_id, self.remember(saved, job_id), gr.Timer(active=True), {}, *presets[:n], *section1

    # --------------------------------------------------------------------------------------- events

    @user_errors
    def ui_preview(self, video: str | None, model: str | None):
        """The clip as the model will see it (resampled, cropped, resized), with what was done to it."""
        if not video:
            return None, ""
        note = ""
        try:
            vcfg = self.svc.video_config(self.svc.source_of(model))
        except Exception as err:  # no usable model yet: show the clip at the paper's settings, and say so
            from motion_core.config import VideoConfig

            vcfg = VideoConfig(max_file_mb=self.svc.opts.max_upload_mb)
            note = f" (the paper's settings: the model is not usable: {user_message(err)})"
        try:
            src = self.store.check_video_upload(video)
            from motion_core.video import probe_video

            info = probe_video(src)
            out = self.store.new_preview_dir() / "preview.mp4"
            load_media().write_preview(src, vcfg, out)
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

    def ui_model_changed(self, model: str | None, steps: Any):
        return self.model_status(model), self.estimate(model, steps), *self.presets(model)

    @user_errors
    def ui_start(self, video, caption, model, steps, lr, rank, lca, ltsa, seed, objective, saved):
        job = self.svc.submit_train(video, caption, model, steps, lr, rank, lca, ltsa, seed, objective)
        gr.Info("Training queued. You can close this page: the run goes on, and this page (or its link) shows it.")
        return self._shown(saved, job)

    @user_errors
    def ui_import(self, files, video, caption, model, saved):
        paths = [str(f) for f in (files if isinstance(files, list) else [files] if files else [])]
        loras = [p for p in paths if p.lower().endswith(".safetensors")]
        configs = [p for p in paths if p.lower().endswith(".json")]
        if len(loras) != 1 or len(configs) > 1:
            raise UploadError("Upload one .safetensors LoRA file, and optionally its config.json.")
        return self._shown(saved, self.svc.submit_import(loras[0], video, caption, model,
                                                         configs[0] if configs else None))

    @user_errors
    def ui_cancel(self, job_id: str | None):
        if not job_id:
            raise JobError("There is no run to cancel.")
        job = self.svc.cancel(job_id)
        if job.terminal and job.state != CANCELLED:
            gr.Info(f"This run is already {job.state}.")
        return gr.Timer(active=True)

    @user_errors
    def ui_resume(self, job_id: str | None):
        if not job_id:
            raise JobError("There is no run to resume.")
        self.svc.resume(job_id)
        return gr.Timer(active=True)

    @user_errors
    def ui_generate(self, job_id, prompt, negative, beta, fixed_seed, seed, steps, guidance, strength, n, compare):
        self.svc.submit_sample(job_id, prompt, negative, beta, seed if fixed_seed else -1, steps, guidance, strength,
                               n, compare)
        return gr.Timer(active=True)

    @user_errors
    def ui_cancel_generation(self, job_id: str | None):
        samples = self.svc.samples_of(job_id) if job_id else []
        if not samples or samples[-1].terminal:
            raise JobError("No generation is running.")
        self.svc.cancel(samples[-1].id)
        return gr.Timer(active=True)

    @user_errors
    def ui_push(self, job_id, repo_id, token, private):
        url = self.svc.push(job_id, repo_id, token, private)
        return f"Uploaded to [{url}]({url}) ({'private' if private else 'public'})."

    # ------------------------------------------------------------------------------------------ polling

    def poll(self, job_id: str | None, sig: dict[str, Any] | None, model: str | None = None, steps: Any = None):
        """One timer tick: everything the page shows about the current run (``POLL_KEYS``), sending only what
        changed, then the timer and the signature."""
        sig = dict(sig or {})
        n = len(self.POLL_KEYS)
        if not job_id:
            if self.svc.warming_up() or sig.get("model_pending"):  # keep the model line true while it loads
                sig["model_pending"] = self.svc.warming_up()
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
        out["status"] = views.status_md(job, self.store.queue_position(job.id))
        out["progress"] = views.progress_html(job)
        out["ca"], out["tsa"], out["files"] = self._result_files(job)
        samples = self.svc.samples_of(job.id)
        latest = samples[-1] if samples else None
        out["gen_status"] = views.gen_status_md(latest, self.store.queue_position(latest.id) if latest else None)
        out["gen_progress"] = views.progress_html(latest) if latest and not latest.terminal else ""
        done = [j for j in samples if j.state == DONE]
        out["result"] = self._video_of(done[-1], 0) if done else None
        out["report"], out["report_img"] = "", None
        if done:
            out["report"], pic = views.report_md(done[-1])
            out["report_img"] = self.svc.served(done[-1], pic) if pic else None
        out["gallery"] = [(self.svc.served(j, v.get("gif") or v["lora"]), views.caption_of(j, v))
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
        active = not job.terminal or (latest is not None and not latest.terminal) or self.svc.warming_up()
        return (*values, gr.Timer(active=active), sig)

    def _loss_update(self, job: Job, sig: dict[str, Any]) -> Any:
        if job.kind != "train":  # an uploaded LoRA has no loss: clear the plot once
            key = f"{job.id}:none"
            if sig.get("loss") == key:
                return gr.skip()
            sig["loss"] = key
            return None
        path = self.svc.run_dir(job).log
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
            files = [self.svc.served(job, n) for n in self.svc.download_names(job)]
        return (self.svc.served(job, "features/cross_attention.png") if ca.is_file() else None,
                self.svc.served(job, "features/temporal_attention.png") if tsa.is_file() else None, files)

    def _video_of(self, job: Job, i: int) -> str:
        v = job.results["videos"][i]
        return self.svc.served(job, v.get("pair") or v["lora"])
