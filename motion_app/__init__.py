"""The MotionMatcher web app: learn a reference video's motion in the browser, generate, download the LoRA.

- ``ui.py``: the Gradio layout only (no torch);
- ``handlers.py``: the functions behind the page's events and the named API endpoints;
- ``jobs.py``: the on-disk job store and the single GPU worker (queue, progress, cancel, resume, cleanup);
- ``work.py``: what each job kind does with ``motion_core`` (train, sample, import a LoRA), and the model cache;
- ``figures.py``: loss curves and motion-feature pictures;
- ``hub.py``: pushing a LoRA with a generated model card to the Hugging Face Hub.

``app.py`` at the repository root is the entry point.
"""
