"""Entry point of the MotionMatcher web app (also the Hugging Face Space's ``app_file``).

    python app.py                                   # the embedded CPU model, http://127.0.0.1:7860
    python app.py --model cerspense/zeroscope_v2_576w --host 0.0.0.0
    python app.py --help

Starts the job runner (one worker thread; jobs left running by a previous app resume), builds the page and
serves it. The default model loads in the background, so the page is up before torch has finished loading.
Listens on 127.0.0.1 unless ``--host`` says otherwise or it runs in a Space or a container (``SPACE_ID`` or
``MOTION_MATCHER_PUBLIC`` set), where it must listen on 0.0.0.0. In a Space the model is locked (``--lock-model``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from motion_core.locations import EXAMPLES_DIR

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parent
# No usage analytics from a tool that handles people's videos (and no waiting on a network that may be absent).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def default_job_store() -> str:
    """``$MOTION_MATCHER_JOBS``, else ``/data/motion-matcher-jobs`` where a persistent ``/data`` exists (Spaces
    with persistent storage, our Docker image), else ``./jobs``."""
    if os.environ.get("MOTION_MATCHER_JOBS"):
        return os.environ["MOTION_MATCHER_JOBS"]
    data = Path("/data")
    if data.is_dir() and os.access(data, os.W_OK):
        return str(data / "motion-matcher-jobs")
    return str(ROOT / "jobs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    public = bool(os.environ.get("SPACE_ID") or os.environ.get("MOTION_MATCHER_PUBLIC"))
    p = argparse.ArgumentParser(
        prog="app.py", description="MotionMatcher web app: learn a reference video's motion as a LoRA, then generate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if public else "127.0.0.1"),
                   help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                   help="port to listen on ($GRADIO_SERVER_PORT sets the default)")
    p.add_argument("--model", default=os.environ.get("MOTION_MATCHER_MODEL") or "default",
                   help="model preselected on the page: 'default' (the embedded model), a Hugging Face id such as "
                        "cerspense/zeroscope_v2_576w, or a model folder")
    p.add_argument("--lock-model", action="store_true", default=bool(os.environ.get("SPACE_ID")),
                   help="users cannot choose another model or type a folder (on by default in a Space: no arbitrary "
                        "downloads or server folders); use it for any shared deployment")
    p.add_argument("--job-store", default=default_job_store(),
                   help="folder for jobs, checkpoints and results (keep it on persistent storage)")
    p.add_argument("--job-ttl-hours", type=float, default=72.0, help="finished jobs are removed after this long")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest accepted upload")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on a GPU, fp32 on a CPU), fp32, fp16 or bf16")
    p.add_argument("--no-preload", action="store_true", help="load the model at the first job, not at start-up")
    p.add_argument("--max-queue", type=int, default=64, help="most requests waiting in Gradio's queue")
    p.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    p.add_argument("--log-level", default="INFO", help="server log detail: DEBUG, INFO, WARNING or ERROR")
    return p


def served_files(store: Any, max_upload_mb: float) -> dict[str, Any]:
    """What the web server may hand out and take in. Only the store's ``served/`` folder (allow-listed result
    files, linked there by ``JobStore.serve``) and the bundled examples: never the store itself, which holds
    ``browser_secret``, ``speeds.json``, job records, checkpoints and uploads. Uploads up to the limit in bytes
    (``--max-upload-mb 0.5`` is 512 KiB, not 0)."""
    from motion_core.config import upload_limit_bytes

    return {"allowed_paths": [str(store.served_root), str(EXAMPLES_DIR)],
            "blocked_paths": [str(store.jobs_root), str(store.uploads_root)],
            "max_file_size": upload_limit_bytes(max_upload_mb)}


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from motion_core.config import ConfigError, check_upload_mb

    try:
        check_upload_mb(args.max_upload_mb)
    except ConfigError as err:
        sys.exit(f"error: --max-upload-mb: {err}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("motion_matcher.app")

    from motion_app.jobs import JobError
    from motion_app.service import AppOptions, MotionService
    from motion_app.ui import CSS, THEME, build_ui

    opts = AppOptions(job_store=Path(args.job_store), model=args.model, lock_model=args.lock_model,
                      max_upload_mb=args.max_upload_mb, ttl_hours=args.job_ttl_hours, device=args.device,
                      dtype=args.dtype, preload=not args.no_preload)
    try:
        motion = MotionService(opts).start()
    except JobError as err:
        sys.exit(f"error: {err}")
    demo = build_ui(motion)
    demo.queue(max_size=args.max_queue, default_concurrency_limit=4)

    # `docker stop` and Spaces send SIGTERM: turn it into the KeyboardInterrupt that makes launch() return, so
    # the running job is paused cleanly (checkpoint, back to the queue) instead of found "running" next time.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=THEME, css=CSS,
                    show_error=True, prevent_thread_lock=True, footer_links=["api", "gradio"],
                    **served_files(motion.store, args.max_upload_mb))
        log.info("serving on http://%s:%d (job store %s), ready %.1f s after start", args.host, args.port,
                 motion.store.root, time.perf_counter() - T0)
        print(f"MOTION_MATCHER_READY {time.perf_counter() - T0:.2f}s", flush=True)
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        motion.stop()
        demo.close()


if __name__ == "__main__":
    main()
