"""What the page says about a job, as Markdown and HTML: status lines, the progress bar, the motion report.

Plain functions of a ``Job`` (and, where it matters, its queue position): no Gradio, no torch, no store. ``page``
calls them on every poll and sends only what changed.
"""

from __future__ import annotations

import html
import math
from typing import Any

from .jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Job

# Plain words, not emoji: headless browsers and some fonts show emoji as empty boxes.
STATE_WORDS = {QUEUED: "queued", RUNNING: "running", DONE: "done", FAILED: "FAILED", CANCELLED: "cancelled"}


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def status_md(job: Job, queue_position: int | None = None) -> str:
    """The run's status under "Learn the motion": state, phase, queue place, result, message, its link."""
    what = {"train": "Training run", "import": "Uploaded LoRA", "sample": "Generation"}.get(job.kind, job.kind)
    lines = [f"**{what}: {STATE_WORDS.get(job.state, job.state)}**"
             + (f" — {html.escape(job.phase)}" if job.state == RUNNING else "")]
    if job.state == QUEUED:
        pos = queue_position
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


def gen_status_md(job: Job | None, queue_position: int | None = None) -> str:
    """The latest generation's status under "Generate"."""
    if job is None:
        return ""
    text = f"**Generation: {STATE_WORDS.get(job.state, job.state)}**"
    if job.state == RUNNING:
        text += f" — {html.escape(job.phase)}"
    if job.state == QUEUED:
        pos = queue_position
        text += f" — {pos} job{'s' if pos != 1 else ''} ahead" if pos else " — next in line"
    if job.message:
        text += f"\n\n{html.escape(job.message)}"
    if job.state == DONE:
        seeds = ", ".join(str(s) for s in job.results.get("seeds", []))
        text += f"\n\nSeed(s) {seeds}; left: with the motion LoRA, right: the base model, same seed and β."
    return text


def progress_html(job: Job | None) -> str:
    """A bar and one line (phase, step of total, speed, time left, loss) for a queued or running job."""
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


def report_md(job: Job) -> tuple[str, str | None]:
    """A generation's motion report (``motion_core.report``) as Markdown, and its track picture's name in the
    job (None when there is none)."""
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
    return "\n".join(md), rep.get("picture") or None


def caption_of(job: Job, v: dict[str, Any]) -> str:
    """A gallery caption: seed, β, the verdict, the prompt."""
    p = job.params
    beta = (p.get("config") or p).get("beta")  # a generation's SampleConfig (older jobs: flat params)
    rep = v.get("report") or {}
    verdict = {"closer": f"LoRA {rep.get('ratio') or 0:.1f}x closer", "same": "LoRA ≈ base",
               "further": "LoRA further"}.get(rep.get("verdict", ""))
    ratio = f" · {verdict}" if verdict and rep.get("ratio") else ""
    return f"seed {v['seed']} · β {beta}{ratio} · {p.get('prompt', '')[:60]}"
