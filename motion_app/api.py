"""The named API endpoints for ``gradio_client``: plain parameters in, JSON (and files) out.

``/train``, ``/status``, ``/cancel``, ``/resume``, ``/sample``, ``/download``, ``/import_lora`` and ``/push_to_hub``
(``docs/api.md``). Each method of ``Api`` is one endpoint; ``ui`` wires them to hidden components whose labels
are the parameter names. The work is the service's (``service.MotionService``); here only the shapes of the
answers. Every bad input ends as a ``gr.Error`` with a readable message (``user_errors``); stack traces go to the
server log only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from .jobs import DONE, JobError, user_message
from .service import MotionService

log = logging.getLogger(__name__)


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


class Api:
    """The named endpoints of one ``MotionService``."""

    def __init__(self, service: MotionService) -> None:
        self.svc = service

    @user_errors
    def train(self, video: str, caption: str, model: str = "", steps: float | None = None,
              learning_rate: float | None = None, rank: float | None = None, lambda_ca: float | None = None,
              lambda_tsa: float | None = None, seed: float | None = None,
              objective: str | None = None) -> dict[str, Any]:
        """Queue a training run on an uploaded video; returns its status (``job_id`` for the other endpoints).

        ``model``: empty for the app's own. Every setting left out (None) is the model's own default, the value the
        page shows for it (``RunConfig.for_model``: the paper's 400 steps, learning rate 5e-4, rank 32, λ 2000,
        seed 0, objective "motion", unless the model's sidecar says otherwise); ``seed`` -1 draws a random one,
        recorded in the run's config. Out-of-range values are refused with the config's message."""
        job = self.svc.submit_train(video, caption, model, steps, learning_rate, rank, lambda_ca, lambda_tsa, seed,
                                    objective)
        return self.svc.status_dict(job)

    @user_errors
    def status(self, job_id: str) -> dict[str, Any]:
        """A job's state, phase, progress, queue position, message (and last log lines when it failed)."""
        return self.svc.status_dict(self.svc.store.load((job_id or "").strip()))

    @user_errors
    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, or a running one at its next step (its checkpoint is kept)."""
        return self.svc.status_dict(self.svc.cancel((job_id or "").strip()))

    @user_errors
    def resume(self, job_id: str) -> dict[str, Any]:
        """Continue a cancelled or failed training run from its checkpoint."""
        return self.svc.status_dict(self.svc.resume((job_id or "").strip()))

    @user_errors
    def sample(self, job_id: str, prompt: str, negative_prompt: str | None = None, beta: float | None = None,
               seed: float | None = None, steps: float | None = None, guidance: float | None = None,
               lora_strength: float | None = None, num_videos: float | None = None,
               compare_base: bool = True) -> tuple[list[str], dict[str, Any]]:
        """Generate with a finished run's LoRA (waits for the job). Returns the MP4s and a JSON description:
        for each video its seed, the motion-LoRA file, the base model's file for the same seed and β, and its
        motion report (``motion_core.report``: motion discrepancies, the sentence, CLIP scores where available).

        Every setting left out (None) is the run's model's own default, the value the page shows for it
        (``SampleConfig.for_model``: e.g. 25 DDIM steps and guidance 3 for the embedded model, the release's 75
        and 12 for Zeroscope; β 0.3, LoRA strength 1, one video); ``seed`` left out or -1: a random one,
        reported. Out-of-range values are refused with the config's message."""
        job = self.svc.submit_sample((job_id or "").strip(), prompt, negative_prompt, beta, seed, steps, guidance,
                                     lora_strength, num_videos, compare_base)
        job = self.svc.runner.wait(job.id)
        if job.state != DONE:
            raise JobError(f"Generation {job.state}: {job.message or 'no message'}")
        files, videos = [], []
        for v in job.results.get("videos", []):
            entry = {"seed": v["seed"], "motion": v["lora"], "base": v.get("base"), "report": v.get("report")}
            files.append(self.svc.served(job, v["lora"]))
            if v.get("base"):
                files.append(self.svc.served(job, v["base"]))
            videos.append(entry)
        info = self.svc.status_dict(job) | {"videos": videos}
        return files, info

    @user_errors
    def download(self, job_id: str) -> list[str]:
        """The finished run's ``lora.safetensors`` and ``config.json``."""
        job = self.svc.store.load((job_id or "").strip())
        return [self.svc.served(job, n) for n in self.svc.download_names(job)]

    @user_errors
    def import_lora(self, lora: str, video: str | None = None, caption: str = "", model: str = "") -> dict[str, Any]:
        """Register a LoRA made earlier (checked against the model) so ``/sample`` can use it; the optional
        reference video enables β blending."""
        return self.svc.status_dict(self.svc.submit_import(lora, video, caption, model))

    @user_errors
    def push_to_hub(self, job_id: str, repo_id: str, token: str, private: bool = True) -> dict[str, Any]:
        """Upload the run's LoRA, config and sample videos with a model card; private unless asked otherwise."""
        url = self.svc.push(job_id, repo_id, token, private)
        return {"url": url, "repo_id": repo_id, "private": bool(private)}
