"""The page's layout (Gradio Blocks) and its wiring to the handlers; no torch and no work here.

Four sections, top to bottom, in the order a user works: (1) the reference clip, its caption and the model;
(2) learning the motion, with live progress, the loss curve, advanced settings and the reference's motion
features; (3) generating, each result beside the base model's video for the same seed and β; (4) downloading,
uploading or pushing the LoRA. A ``gr.Timer`` polls the job store, so the page shows a run that survives a
refresh, a closed tab, or an app restart. A hidden column holds the components of the named API endpoints
(``/train``, ``/status``, ``/cancel``, ``/sample``, ``/download`` and a few more), whose signatures stay
stable whatever the page looks like.

``build_ui(service)`` takes the app's ``service.MotionService``; the page's events go to ``page.Page``, the
endpoints to ``api.Api``. ``THEME`` and ``CSS`` go to ``launch()`` (Gradio 6 moved them there).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from motion_core.config import OBJECTIVE_NAMES, LoraConfig, LossConfig, SampleConfig, TrainConfig

from .api import Api
from .examples import examples as bundled_examples
from .page import Page

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="amber")
CSS = """
.mm-progress { width: 100%; height: 10px; background: var(--neutral-200); border-radius: 5px; overflow: hidden; }
.mm-bar { height: 100%; background: var(--color-accent); transition: width 0.4s ease; }
.mm-progress-text { font-size: 0.9em; margin-top: 4px; color: var(--body-text-color-subdued); }
.mm-section h2 { margin-top: 0.6em; }
/* Result thumbnails are wide (LoRA | base side by side): show each whole at its own aspect ratio instead of
   letterboxed in Gradio's square cells, which left a blank band above and cut the frames at the bottom. */
#mm-gallery .thumbnail-item { aspect-ratio: auto; height: auto; }
#mm-gallery .thumbnail-item img { width: 100%; height: auto; object-fit: contain; }
"""

# Keep the address bar on ?job=<id>: the link then reopens this run, also from another device.
SET_URL_JS = """(id) => {
  const u = new URL(window.location.href);
  if (id) { u.searchParams.set("job", id); } else { u.searchParams.delete("job"); }
  window.history.replaceState(null, "", u);
  return [];
}"""

INTRO = """# MotionMatcher: learn a video's motion, then move anything that way
Upload a short reference clip and describe it. The app learns the clip's **motion** (not its look) as a small
LoRA, by matching the model's motion features: cross-attention maps (where things are) and temporal attention
(how they move). Then prompt for a new scene: it moves like the reference. Runs continue in the background: you
can close this page and come back, or share the run's link."""

FEATURES_HELP = """Computed from the reference once training starts. **Top**: for each caption word, where the
model's cross-attention falls in every frame: it follows the object as it moves (camera framing and layout).
**Bottom**: temporal self-attention between frames, as heat maps (object movement). Training makes the LoRA
reproduce these maps, not the pixels."""

BETA_LABEL = "β: motion fidelity ↔ leakage of the reference's look"
BETA_INFO = ("Higher β starts generation from noise closer to the inverted reference: the motion is followed "
             "more faithfully, but more of the reference's look (colours, shapes, background) leaks in.")


def build_ui(service: Any) -> gr.Blocks:
    """The Blocks app for a ``service.MotionService``."""
    page, api = Page(service), Api(service)
    tr, lo, lc, sc = TrainConfig(), LoraConfig(), LossConfig(), SampleConfig()
    examples = bundled_examples()
    choices = service.model_choices()
    locked = service.opts.lock_model

    with gr.Blocks(title="MotionMatcher") as demo:
        saved = gr.BrowserState({}, storage_key="motion-matcher-runs", secret=service.secret)
        # The run (training or uploaded LoRA) this page shows. A hidden Textbox, not a gr.State: State values stay
        # on the server, and the address-bar script below needs the id in the browser.
        current = gr.Textbox(visible=False, elem_id="mm-current")
        sig = gr.State({})  # what the page already shows, so polling sends only changes
        timer = gr.Timer(service.opts.poll_seconds, active=False)

        gr.Markdown(INTRO)
        history = gr.Dropdown(label="Your runs (in this browser)", choices=[], interactive=True,
                              elem_id="mm-history")

        # ---------------------------------------------------------------------------------- 1. reference
        with gr.Column(elem_classes="mm-section"):
            gr.Markdown("## 1. Reference video")
            with gr.Row():
                with gr.Column():
                    video = gr.Video(label="Reference video (mp4, mov, webm, mkv, avi, gif)", sources=["upload"],
                                     elem_id="mm-video")
                    example = gr.Dropdown(label="…or pick an example", choices=[e["name"] for e in examples],
                                          value=None, visible=bool(examples), elem_id="mm-example")
                with gr.Column():
                    preview = gr.Video(label="As the model will see it", interactive=False, autoplay=True, loop=True,
                                       height=260, elem_id="mm-preview")
                    preview_md = gr.Markdown(elem_id="mm-preview-info")
            caption = gr.Textbox(label="Caption of the reference video",
                                 placeholder="e.g. a red circle on a plain grey background", max_lines=2,
                                 elem_id="mm-caption")
            with gr.Row():
                model = gr.Dropdown(label="Model", choices=choices, value=choices[0][1], allow_custom_value=not locked,
                                    interactive=not locked, scale=2, elem_id="mm-model",
                                    info=None if locked else "Or type a Hugging Face id or a model folder.")
                model_md = gr.Markdown(elem_id="mm-model-status")

        # ------------------------------------------------------------------------------ 2. learn motion
        with gr.Column(elem_classes="mm-section"):
            gr.Markdown("## 2. Learn the motion")
            with gr.Row():
                start = gr.Button("Learn motion", variant="primary", elem_id="mm-start")
                # Clickable only while there is a run to cancel or resume (the poll switches them).
                cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="mm-cancel")
                resume = gr.Button("Resume", interactive=False, elem_id="mm-resume")
            estimate = gr.Markdown(elem_id="mm-estimate")
            with gr.Accordion("Advanced settings", open=False, elem_id="mm-advanced"):
                with gr.Row():
                    steps = gr.Number(tr.steps, label="Steps", precision=0, minimum=1, maximum=100_000,
                                      elem_id="mm-steps")
                    lr = gr.Number(tr.learning_rate, label="Learning rate", minimum=0, elem_id="mm-lr")
                    rank = gr.Number(lo.rank, label="LoRA rank", precision=0, minimum=1, maximum=512,
                                     elem_id="mm-rank")
                    seed = gr.Number(tr.seed, label="Seed", precision=0, minimum=0, elem_id="mm-seed")
                with gr.Row():
                    lca = gr.Number(lc.lambda_ca, label="λ_CA (cross-attention weight)", minimum=0,
                                    elem_id="mm-lca")
                    ltsa = gr.Number(lc.lambda_tsa, label="λ_TSA (temporal attention weight)", minimum=0,
                                     elem_id="mm-ltsa")
                    objective = gr.Dropdown(list(OBJECTIVE_NAMES), value=lc.objective, label="Objective",
                                            info="motion = MotionMatcher; the others are baselines",
                                            elem_id="mm-objective")
            status = gr.Markdown(elem_id="mm-status")
            progress = gr.HTML(elem_id="mm-progress")
            # Labels off where Gradio would draw them over the picture; the figures carry their own titles.
            loss_plot = gr.Plot(show_label=False, elem_id="mm-loss")
            with gr.Accordion("Motion features of the reference", open=True, elem_id="mm-features"):
                gr.Markdown(FEATURES_HELP)
                ca_img = gr.Image(label="Cross-attention maps over frames", show_label=False, type="filepath",
                                  interactive=False, elem_id="mm-ca")
                tsa_img = gr.Image(label="Temporal attention heat maps", show_label=False, type="filepath",
                                   interactive=False, elem_id="mm-tsa")

        # ---------------------------------------------------------------------------------- 3. generate
        with gr.Column(elem_classes="mm-section"):
            gr.Markdown("## 3. Generate")
            prompt = gr.Textbox(label="Prompt", placeholder="e.g. a green star on a dotted white background",
                                max_lines=2, elem_id="mm-prompt")
            negative = gr.Textbox(label="Negative prompt", placeholder="what to avoid (optional)", max_lines=2,
                                  elem_id="mm-negative")
            with gr.Row():
                beta = gr.Slider(0, 1, sc.beta, step=0.05, label=BETA_LABEL, info=BETA_INFO, scale=3,
                                 elem_id="mm-beta")
                fixed_seed = gr.Checkbox(False, label="Fixed seed (else random)", elem_id="mm-fixed-seed")
                sample_seed = gr.Number(None, label="Seed (the last one used; tick Fixed seed to reuse it)",
                                        precision=0, minimum=0, elem_id="mm-sample-seed")
            with gr.Row():
                s_steps = gr.Number(sc.num_inference_steps, label="Steps", precision=0, minimum=1, maximum=1000,
                                    elem_id="mm-sample-steps")
                guidance = gr.Number(sc.guidance_scale, label="Guidance", minimum=0, maximum=50,
                                     elem_id="mm-guidance")
                strength = gr.Slider(0, 2, sc.lora_scale, step=0.05, label="LoRA strength", elem_id="mm-strength")
                n_videos = gr.Number(1, label="Videos", precision=0, minimum=1, maximum=16, elem_id="mm-n")
                compare = gr.Checkbox(True, label="Also the base model (same seed and β)", elem_id="mm-compare")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="mm-generate")
                cancel_gen = gr.Button("Cancel generation", variant="stop", interactive=False,
                                       elem_id="mm-cancel-gen")
            gen_status = gr.Markdown(elem_id="mm-gen-status")
            gen_progress = gr.HTML(elem_id="mm-gen-progress")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=320):
                    gr.Markdown("**Latest result**: left with the motion LoRA, right the base model (same seed, β)")
                    result = gr.Video(label="Latest result", show_label=False, interactive=False, autoplay=True,
                                      loop=True, height=320, elem_id="mm-result")
                with gr.Column(scale=1, min_width=320):
                    # Did it learn the motion? Measured on every generated video (motion_core.report).
                    report_md = gr.Markdown(elem_id="mm-report")
                    report_img = gr.Image(label="Point tracks", show_label=False, type="filepath",
                                          interactive=False, elem_id="mm-report-img")
            gr.Markdown("**All results of this run** (newest first)")
            gallery = gr.Gallery(label="All results of this run", show_label=False, columns=3, fit_columns=False,
                                 height="auto", object_fit="contain", elem_id="mm-gallery")

        # --------------------------------------------------------------------------- 4. download, share
        with gr.Column(elem_classes="mm-section"):
            gr.Markdown("## 4. Download and share")
            downloads = gr.File(label="The LoRA (.safetensors) and its config.json", file_count="multiple",
                                interactive=False, elem_id="mm-downloads")
            with gr.Accordion("Use a LoRA made earlier", open=False, elem_id="mm-import"):
                gr.Markdown("Upload a `.safetensors` LoRA made with this app (and, optionally, its `config.json`). "
                            "It is checked against the model in section 1. With a reference video in section 1, "
                            "β blending works too; without one, generation starts from plain noise.")
                lora_files = gr.File(label="LoRA file (+ config.json)", file_count="multiple",
                                     file_types=[".safetensors", ".json"], elem_id="mm-lora-upload")
                import_btn = gr.Button("Use this LoRA", elem_id="mm-import-btn")
            with gr.Accordion("Push to the Hugging Face Hub", open=False, elem_id="mm-hub"):
                gr.Markdown("Uploads the LoRA, its config and up to four results with a model card. Your token is "
                            "used for this upload only and never stored.")
                with gr.Row():
                    repo_id = gr.Textbox(label="Repository", placeholder="your-name/my-motion-lora")
                    token = gr.Textbox(label="Access token (write)", type="password")
                    private = gr.Checkbox(True, label="Private")
                push_btn = gr.Button("Push to the Hub")
                push_md = gr.Markdown()

        # ----------------------------------------------------------------------------------- page events
        # In Page.POLL_KEYS order, then the timer and the signature.
        poll_out = [status, progress, loss_plot, ca_img, tsa_img, downloads, gen_status, gen_progress, result,
                    report_md, report_img, gallery, model_md, estimate, cancel, resume, cancel_gen, sample_seed,
                    timer, sig]
        poll_in = [current, sig, model, steps]
        section1 = [video, caption]  # Page.RUN_FIELDS
        # Page.PRESET_FIELDS: the model's own defaults (a reopened run: its own training settings first).
        presets = [steps, lr, rank, lca, ltsa, seed, objective, s_steps, guidance, beta, strength, n_videos]
        train_presets = presets[:len(Page.TRAIN_PRESETS)]
        private_ev: dict[str, Any] = {"api_visibility": "private"}
        run_out = [current, saved, history, timer, sig]

        def show_run(event: Any) -> None:
            """After an event that changes the run shown: poll once now, and put the run in the address bar."""
            event.then(page.poll, poll_in, poll_out, show_progress="hidden", **private_ev) \
                .then(None, [current], None, js=SET_URL_JS, **private_ev)

        loaded = demo.load(page.ui_load, [saved, model], [current, saved, history, model_md, timer, sig, *presets,
                                                         *section1], **private_ev)
        show_run(loaded)
        loaded.then(page.estimate, [model, steps], estimate, **private_ev)
        timer.tick(page.poll, poll_in, poll_out, show_progress="hidden", concurrency_limit=None,
                   **private_ev)
        video.change(page.ui_preview, [video, model], [preview, preview_md], concurrency_limit=2,
                     concurrency_id="ffmpeg", **private_ev)
        example.input(page.ui_example, [example], [video, caption, prompt], **private_ev)
        model.change(page.ui_model_changed, [model, steps], [model_md, estimate, *presets], **private_ev)
        steps.change(page.estimate, [model, steps], estimate, show_progress="hidden", **private_ev)
        show_run(start.click(page.ui_start, [video, caption, model, steps, lr, rank, lca, ltsa, seed, objective,
                                            saved], run_out, concurrency_limit=2, concurrency_id="ffmpeg",
                             **private_ev))
        cancel.click(page.ui_cancel, [current], [timer], **private_ev)
        resume.click(page.ui_resume, [current], [timer], **private_ev)
        show_run(history.input(page.ui_open, [history, saved], [current, saved, timer, sig, *train_presets, *section1],
                               **private_ev))
        generate.click(page.ui_generate, [current, prompt, negative, beta, fixed_seed, sample_seed, s_steps,
                                         guidance, strength, n_videos, compare], [timer], **private_ev)
        cancel_gen.click(page.ui_cancel_generation, [current], [timer], **private_ev)
        show_run(import_btn.click(page.ui_import, [lora_files, video, caption, model, saved], run_out,
                                  **private_ev))
        push_btn.click(page.ui_push, [current, repo_id, token, private], [push_md], **private_ev)

        _api_endpoints(api)
    return demo


def _api_endpoints(api: Any) -> None:
    """Hidden components and triggers for the named endpoints; parameter names come from the ``api.Api``
    method signatures. A setting's component starts empty (None): a client that leaves it out gets the model's
    own value, the one the page shows (``docs/api.md`` shows a client session)."""
    with gr.Column(visible=False):
        job_id = gr.Textbox(label="job_id")
        as_json = gr.JSON(label="status")
        # /train
        t_video = gr.File(label="video")
        t_caption = gr.Textbox(label="caption")
        t_model = gr.Textbox("", label="model")  # empty: the app's own model (its --model)
        t_steps = gr.Number(None, label="steps", precision=0)
        t_lr = gr.Number(None, label="learning_rate")
        t_rank = gr.Number(None, label="rank", precision=0)
        t_lca = gr.Number(None, label="lambda_ca")
        t_ltsa = gr.Number(None, label="lambda_tsa")
        t_seed = gr.Number(None, label="seed", precision=0)
        t_objective = gr.Textbox(None, label="objective")
        # /sample
        s_prompt = gr.Textbox(label="prompt")
        s_negative = gr.Textbox(None, label="negative_prompt")
        s_beta = gr.Number(None, label="beta")
        s_seed = gr.Number(None, label="seed", precision=0)
        s_steps = gr.Number(None, label="steps", precision=0)
        s_guidance = gr.Number(None, label="guidance")
        s_strength = gr.Number(None, label="lora_strength")
        s_n = gr.Number(None, label="num_videos", precision=0)
        s_compare = gr.Checkbox(True, label="compare_base")
        s_files = gr.File(label="videos", file_count="multiple")
        # /import_lora, /push_to_hub
        i_lora = gr.File(label="lora")
        i_video = gr.File(label="video")
        h_repo = gr.Textbox(label="repo_id")
        h_token = gr.Textbox(label="token", type="password")
        h_private = gr.Checkbox(True, label="private")
        d_files = gr.File(label="files", file_count="multiple")

        def endpoint(name: str, fn: Any, inputs: list[Any], outputs: Any, **kw: Any) -> None:
            gr.Button(visible=False).click(fn, inputs, outputs, api_name=name, **kw)

        endpoint("train", api.train, [t_video, t_caption, t_model, t_steps, t_lr, t_rank, t_lca, t_ltsa,
                                          t_seed, t_objective], as_json, concurrency_limit=2, concurrency_id="ffmpeg")
        endpoint("status", api.status, [job_id], as_json, concurrency_limit=None)
        endpoint("cancel", api.cancel, [job_id], as_json, concurrency_limit=None)
        endpoint("resume", api.resume, [job_id], as_json)
        # /sample waits for its job, which the single worker runs in turn; waiting costs a thread, not the GPU.
        endpoint("sample", api.sample, [job_id, s_prompt, s_negative, s_beta, s_seed, s_steps, s_guidance,
                                            s_strength, s_n, s_compare], [s_files, as_json], concurrency_limit=None)
        endpoint("download", api.download, [job_id], d_files, concurrency_limit=None)
        endpoint("import_lora", api.import_lora, [i_lora, i_video, t_caption, t_model], as_json)
        endpoint("push_to_hub", api.push_to_hub, [job_id, h_repo, h_token, h_private], as_json)
