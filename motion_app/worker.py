"""What each job kind does with ``motion_core``: train a motion LoRA, generate videos, check an uploaded LoRA.

The runner (``runner.Runner``) calls ``Worker.train``, ``Worker.sample`` and ``Worker.import_lora`` in its single
worker thread, one job at a time, so the model (loaded once per source and kept in ``ModelCache``) is never
used by two jobs at once. Everything a job needs is read from its folder, and everything it makes is written
there, so a job resumes after an app restart from its files alone. Pictures and video helpers: ``media``.

On Hugging Face ZeroGPU (the ``spaces`` package importable and ``SPACES_ZERO_GPU`` set) the GPU parts run under
``@spaces.GPU``, which runs them in a short-lived worker process with a per-call time limit; training is then cut
into chunks of steps (``train_lora``'s ``max_steps_this_call``) that each fit the limit and resume from the
checkpoint the previous chunk left. Progress and cancel go through the job's files, so they work across that
process boundary. Elsewhere there is no wrapping and training runs in one call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from motion_core.config import RunConfig, SampleConfig, VideoConfig
from motion_core.lora_io import base_model_warning, load_lora
from motion_core.models import T2VModel, encode_video, load_model
from motion_core.report import motion_report, save_figure, tracks_figure
from motion_core.rundir import CONFIG_FILE, LORA_FILE, RunDir
from motion_core.sample import invert_cached, sample
from motion_core.train import CheckpointError, Progress, train_lora
from motion_core.video import read_video, write_gif, write_mp4

from .jobs import DONE, JobError
from .media import FEATURES, feature_pictures, side_by_side
from .runner import JobContext, Runner
from .store import JobStore

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------- models


class ModelCache:
    """Models by source, loaded once and kept (``capacity`` at a time: a GPU rarely holds two)."""

    def __init__(self, device: str = "auto", dtype: str = "auto", capacity: int = 1) -> None:
        self.device, self.dtype, self.capacity = device, dtype, max(1, capacity)
        self._models: OrderedDict[str, T2VModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: str) -> T2VModel:
        with self._lock:
            if source in self._models:
                self._models.move_to_end(source)
                return self._models[source]
            while len(self._models) >= self.capacity:
                self._models.popitem(last=False)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            model = load_model(source, device=self.device, dtype=self.dtype)
            self._models[source] = model
            return model

    def peek(self, source: str) -> T2VModel | None:
        return self._models.get(source)


# ------------------------------------------------------------------------------------------------- ZeroGPU


def zero_gpu() -> Any | None:
    """The ``spaces`` module when running on ZeroGPU, else None (then nothing is wrapped)."""
    if os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("1", "true", "yes"):
        return None
    try:
        import spaces
    except ImportError:
        return None
    return spaces


_ACTIVE: Worker | None = None  # the worker the ZeroGPU entry point reaches (its process forks from this one)


def _gpu_entry(method: str, *args: Any) -> Any:
    """Module-level so ZeroGPU can pickle a reference to it; the model stays in this module's globals."""
    assert _ACTIVE is not None, "no active Worker"
    return getattr(_ACTIVE, method)(*args)


def _in_job(ctx: JobContext, path: Path) -> str:
    """A file's name inside its job folder (what results and messages name)."""
    return path.relative_to(ctx.dir).as_posix()


# ------------------------------------------------------------------------------------------------- worker


class Worker:
    """The executors of the three job kinds, bound to a job store and a model cache."""

    def __init__(self, store: JobStore, models: ModelCache, default_source: str | None = None,
                 gpu_seconds: int = 110, chunk_steps: int | None = None) -> None:
        global _ACTIVE
        self.store = store
        self.models = models
        self.default_source = default_source
        self.runner: Runner | None = None
        self.spaces = zero_gpu()
        self.gpu_seconds = gpu_seconds  # ZeroGPU's per-call budget we plan chunks for (its cap is a few minutes)
        self.chunk_steps = chunk_steps  # fixed ZeroGPU chunk size (tests); None = sized from measured speed
        self._gpu: Callable[..., Any] = self._call
        if self.spaces is not None:
            # Decorated here, at start-up: ZeroGPU looks for its decorated functions when the app launches. Its
            # worker process reaches this Worker through the module global, so the model is never pickled.
            _ACTIVE = self
            self._gpu = self.spaces.GPU(duration=gpu_seconds)(_gpu_entry)

    def _call(self, method: str, *args: Any) -> Any:
        return getattr(self, method)(*args)

    def executors(self) -> dict[str, Callable[[JobContext], dict[str, Any] | None]]:
        return {"train": self.train, "sample": self.sample, "import": self.import_lora}

    def warmup(self) -> None:
        if self.default_source:
            self.models.get(self.default_source)

    def _ctx(self, job_id: str) -> JobContext:
        assert self.runner is not None, "Worker.runner is not set"
        return JobContext(self.runner, self.store.load(job_id, fresh=True))

    # ----------------------------------------------------------------------------------------- train

    def train(self, ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        cfg = RunConfig.from_dict(p["config"])
        ctx.phase("loading the model")
        self.models.get(p["model"])
        run = self.store.run_dir(ctx.job)
        if not run.reference_latents.is_file() or not ctx.path(FEATURES["ca"]).is_file():
            self._gpu("_prepare_call", ctx.id)  # done once: a resumed run finds both on disk
        total = cfg.train.steps
        done = run.steps_done()  # the training log says where a resumed run stands
        if done:
            ctx.log(f"resuming from step {done} of {total}")
        ctx.phase("training", step=done, total=total)
        try:
            if self.spaces is None:
                out = self._train_call(ctx.id, None)
            else:
                out = self._train_in_chunks(ctx, total)
        except CheckpointError as err:
            raise JobError(self._set_aside(ctx, run, err)) from err
        if out["cancelled"]:
            ctx.check()  # raises JobCancelled or RunnerStopped: the runner records which
        self.store.record_speed(p["model"], out["steps_per_sec"])
        return {"lora": _in_job(ctx, run.lora), "config": _in_job(ctx, run.config), "steps": out["steps_done"],
                "seconds": round(out["seconds"], 1), "features": [v for v in FEATURES.values()
                                                                  if ctx.path(v).is_file()]}

    def _set_aside(self, ctx: JobContext, run: RunDir, err: CheckpointError) -> str:
        """A damaged checkpoint is renamed (kept for a look, never deleted) so that Resume starts over; every
        other file of the job stays. Returns the message for the user, naming the file inside the job."""
        rel = _in_job(ctx, run.checkpoint)
        kept = f"{rel}.damaged"
        with contextlib.suppress(OSError):
            os.replace(run.checkpoint, ctx.path(kept))
        return (f"This run's checkpoint {rel} is damaged or not from this run ({err.reason}). It was kept as {kept} "
                "and the run's other files are untouched. Resume starts the training over from step 0.")

    def _prepare_call(self, job_id: str) -> None:
        """The reference as the model sees it and its latents (the run folder's, for training and inversion), and
        its motion feature pictures."""
        ctx = self._ctx(job_id)
        p = ctx.params
        cfg = RunConfig.from_dict(p["config"])
        model = self.models.get(p["model"])
        ctx.phase("reading the video")
        frames = read_video(ctx.path(p["video"]), cfg.video)
        z0 = self.store.run_dir(ctx.job).prepare_reference(model, frames, fps=cfg.video.fps)
        ctx.phase("computing the motion features")
        try:
            feature_pictures(model, frames, z0, p["caption"], cfg, ctx.dir)
        except Exception as err:  # pictures are a bonus: never let them stop the training
            log.warning("motion feature pictures failed for job %s: %s", ctx.id, err, exc_info=True)
            ctx.log(f"warning: no motion feature pictures ({type(err).__name__}: {err})")

    def _train_in_chunks(self, ctx: JobContext, total: int) -> dict[str, Any]:
        """ZeroGPU: calls of at most ``gpu_seconds`` each; the first is short and measures the speed."""
        chunk = self.chunk_steps or 5
        while True:
            out = self._gpu("_train_call", ctx.id, chunk)
            if out["cancelled"] or out["done"]:
                return out
            ctx.check()
            if not self.chunk_steps and out["steps_per_sec"] > 0:
                # 70% of the budget: model loading, checkpoint writes and timing noise eat the rest.
                chunk = max(1, int(0.7 * self.gpu_seconds * out["steps_per_sec"]))

    def _train_call(self, job_id: str, max_steps: int | None) -> dict[str, Any]:
        """One call of ``train_lora`` (all of it, or a ZeroGPU chunk), reading everything from the job folder."""
        ctx = self._ctx(job_id)
        p = ctx.params
        cfg = RunConfig.from_dict(p["config"])
        model = self.models.get(p["model"])
        run = self.store.run_dir(ctx.job)
        z0 = run.load_latents(model.device)
        phase, rate = ["training"], [0.0]

        def on_progress(pr: Progress) -> None:
            if pr.phase == "resuming":  # the rate and the time left count only the steps run from here
                ctx.store.update(ctx.id, message=f"Resuming from step {pr.step} of {pr.total}.")
                return
            fields = {"step": pr.step, "total": pr.total, "loss": pr.loss, "parts": pr.parts,
                      "steps_per_sec": pr.steps_per_sec, "eta_sec": pr.eta_sec}
            if pr.phase == "training":
                rate[0] = pr.steps_per_sec  # speed of this call's steps only (a resumed call starts afresh)
            if pr.phase != phase[0]:
                phase[0] = pr.phase
                ctx.store.update(ctx.id, phase=pr.phase, progress=fields)
            else:
                ctx.progress(force=pr.step == pr.total, **fields)

        res = train_lora(model, z0, p["caption"], run.path, cfg, callback=on_progress,
                         should_cancel=ctx.should_stop, resume=True, max_steps_this_call=max_steps)
        return {"steps_done": res.steps_done, "cancelled": res.cancelled, "done": res.lora_path is not None,
                "seconds": res.seconds, "steps_per_sec": rate[0]}

    # ---------------------------------------------------------------------------------------- sample

    def sample(self, ctx: JobContext) -> dict[str, Any]:
        parent = self.store.load(ctx.job.parent or "")
        if parent.state != DONE or "lora" not in parent.results:
            raise JobError("That run has no finished LoRA to generate with.")
        ctx.phase("loading the model")
        self.models.get(parent.params["model"])
        return self._gpu("_sample_call", ctx.id)

    def _sample_call(self, job_id: str) -> dict[str, Any]:
        ctx = self._ctx(job_id)
        p = ctx.params
        parent = self.store.load(ctx.job.parent or "")
        model = self.models.get(parent.params["model"])
        ctx.phase("loading the LoRA")
        meta = load_lora(self.store.file_in(parent.id, parent.results["lora"]), model)
        warning = base_model_warning(meta, model)
        if "config" not in p:
            raise JobError("This generation was queued by an older version of the app; generate again.")
        cfg = SampleConfig.from_dict(p["config"])  # resolved when it was queued: the model's own, then the user's

        # One progress bar for the whole request (inversion, LoRA videos, base videos, writing, motion report): each
        # phase is named and the step count runs on from where the last one stopped, never back to 0.
        compare = bool(p.get("compare_base", True))
        runs = cfg.num_videos * (2 if compare else 1)
        run = self.store.run_dir(parent)
        z0 = run.load_latents(model.device)
        if z0 is None and parent.kind == "train":  # a run made when the latents lay beside train/, not in it
            z0 = RunDir(self.store.job_dir(parent.id)).load_latents(model.device)
        has_ref = z0 is not None
        n_steps = cfg.num_inference_steps
        total = (n_steps if has_ref else 0) + runs * n_steps + 2 * cfg.num_videos  # + writing, + report per video
        offset = [0]

        def progress(step: int, _total: int, t: int) -> None:
            ctx.progress(step=offset[0] + step, total=total, t=t)
            ctx.check()  # stops within one denoising step

        def phase(name: str) -> None:
            ctx.phase(name, step=offset[0], total=total)

        eps_inv, latent_shape, note = None, None, ""
        # The clip the LoRA was made for: its own record first, then the model's (VideoConfig.for_model).
        vcfg = VideoConfig.for_model(model, {"num_frames": meta.get("frames"), "fps": meta.get("fps"),
                                             "height": meta.get("height"), "width": meta.get("width")})
        if has_ref:
            phase("inverting the reference")
            eps_inv = invert_cached(model, z0, n_steps, run.inversion_cache, callback=progress,
                                    with_lora=cfg.invert_with_lora)
            offset[0] += n_steps  # also when the cache answered at once
        else:
            latent_shape = (vcfg.num_frames, vcfg.height // model.vae_scale, vcfg.width // model.vae_scale)
            note = "Note: β was not used: this LoRA came without its reference video, so sampling starts from noise."
        phase("generating with the motion LoRA")
        res = sample(model, p["prompt"], cfg, eps_inv=eps_inv, latent_shape=latent_shape, use_lora=True,
                     callback=progress)
        offset[0] += cfg.num_videos * n_steps
        base = None
        if compare:
            phase("generating with the base model (same seed and β)")
            base = sample(model, p["prompt"], dataclasses.replace(cfg, seed=res.seeds[0]), eps_inv=eps_inv,
                          latent_shape=latent_shape, use_lora=False, callback=progress)
            offset[0] += cfg.num_videos * n_steps
        phase("writing the videos")
        fps = vcfg.fps
        videos = []
        for i, seed in enumerate(res.seeds):
            item: dict[str, Any] = {"seed": seed, "lora": f"motion_{i}.mp4"}
            write_mp4(res.frames[i], ctx.path(item["lora"]), fps)
            if base is not None:
                item["base"] = f"base_{i}.mp4"
                item["pair"] = f"pair_{i}.mp4"
                item["gif"] = f"pair_{i}.gif"  # the gallery shows GIFs: they move without pressing play
                write_mp4(base.frames[i], ctx.path(item["base"]), fps)
                pair = side_by_side(res.frames[i], base.frames[i])
                write_mp4(pair, ctx.path(item["pair"]), fps)
                write_gif(pair, ctx.path(item["gif"]), fps)
            videos.append(item)
            offset[0] += 1
        phase("measuring the motion (point tracks of the reference and each video)")
        reference = self._reference_frames(parent)
        for i, item in enumerate(videos):
            item["report"] = self._report(ctx, i, reference, res.frames[i],
                                          base.frames[i] if base is not None else None, p["prompt"])
            offset[0] += 1
            ctx.progress(force=True, step=offset[0], total=total)
        out: dict[str, Any] = {"videos": videos, "seeds": res.seeds, "fps": fps}
        notes = [f"Warning: {warning}" if warning else "", note]
        if any(notes):
            out["note"] = " ".join(n for n in notes if n)
        return out

    def _reference_frames(self, parent: Any) -> torch.Tensor | None:
        """The run's reference clip as the model saw it (F, 3, H, W), or None for a LoRA uploaded without one."""
        pp = parent.params
        vcfg = pp.get("video_config") or pp.get("config", {}).get("video")
        if not pp.get("video") or not vcfg:
            return None
        return read_video(self.store.file_in(parent.id, pp["video"]), VideoConfig.from_dict(vcfg))

    def _report(self, ctx: JobContext, i: int, reference: torch.Tensor | None, lora: torch.Tensor,
                base: torch.Tensor | None, prompt: str) -> dict[str, Any]:
        """The motion report of video ``i`` (``motion_core.report``) and its track picture ``report_<i>.png``. A
        report that cannot be made says why; it never fails the generation, whose videos are already written."""
        if reference is None:
            return {"error": "No motion report: this LoRA came without its reference video. Upload it with the "
                             "reference clip to compare the motion."}
        try:
            rep = motion_report(reference, lora, base, prompt=prompt)
            save_figure(tracks_figure(rep), ctx.path(f"report_{i}.png"))
            return rep.to_dict() | {"picture": f"report_{i}.png"}
        except Exception as err:
            log.warning("motion report failed for job %s: %s", ctx.id, err, exc_info=True)
            return {"error": f"No motion report ({type(err).__name__}: {err})."}

    # ----------------------------------------------------------------------------------------- import

    def import_lora(self, ctx: JobContext) -> dict[str, Any]:
        ctx.phase("loading the model")
        self.models.get(ctx.params["model"])
        return self._gpu("_import_call", ctx.id)

    def _import_call(self, job_id: str) -> dict[str, Any]:
        ctx = self._ctx(job_id)
        p = ctx.params
        model = self.models.get(p["model"])
        run = self.store.run_dir(ctx.job)  # the job folder itself: lora.safetensors, config.json, latents
        ctx.phase("checking the LoRA")
        meta = load_lora(run.lora, model)  # LoraFileError says why a file does not fit this model
        warning = base_model_warning(meta, model)
        if warning:
            ctx.log(f"warning: {warning}")
        if p.get("video"):
            ctx.phase("reading the video")
            vcfg = VideoConfig.from_dict(p["video_config"])
            run.save_latents(encode_video(model, read_video(ctx.path(p["video"]), vcfg)))
        out: dict[str, Any] = {"lora": LORA_FILE, "meta": meta}
        if run.config.is_file():
            out["config"] = CONFIG_FILE
        if warning:
            out["note"] = f"Warning: {warning}"
        return out

