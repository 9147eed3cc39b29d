"""The MotionMatcher web app: learn a reference video's motion in the browser, generate, download the LoRA.

Gradio (the page and the API):

- ``ui.py``: the layout only, and which handler each event calls (no torch, no work);
- ``page.py``: the page's event handlers (``ui_*``) and its timer's ``poll``;
- ``api.py``: the named endpoints (``/train``, ``/status``, ``/cancel``, ``/resume``, ``/sample``, ``/download``,
  ``/import_lora``, ``/push_to_hub``) and ``user_errors``, which turns any error into a readable ``gr.Error``.

The work, in plain modules (no Gradio):

- ``service.py``: the job service both of them call: checks inputs, submits train / sample / import jobs, cancel,
  resume, status, the files a job serves, the Hub push;
- ``settings.py``: a job's settings: the model a choice names, its own defaults (``RunConfig.for_model`` ...), and
  what the page or a client sent, converted (the ranges are the config's); one rule for the page and the API;
- ``jobs.py``: what a job is (its record, states, errors, the messages users read);
- ``store.py``: the on-disk job store (folders, records, safe paths, served files, uploads, measured speeds);
- ``runner.py``: the single GPU worker thread (queue, progress, cancel, pause on shutdown);
- ``worker.py``: what each job kind does with ``motion_core`` (train, sample, import a LoRA), the model cache and
  ZeroGPU;
- ``media.py``: the motion-feature pictures, the side-by-side comparison video, the preview;
- ``views.py``: a job's state as the page's Markdown and HTML; ``examples.py``: the bundled example clips;
- ``figures.py``: loss curves and motion-feature pictures (numpy and matplotlib);
- ``hub.py``: pushing a LoRA with a generated model card to the Hugging Face Hub.

``app.py`` at the repository root is the entry point (also the Hugging Face Space's).
"""
