"""Command line over motion_core: train a motion LoRA, invert a reference, sample new videos, check memory.

    motion-matcher train clip.mp4 --caption "a red circle on a blue background" --out runs/circle
    motion-matcher sample --run runs/circle --prompt "a green star on a striped grey background" --beta 0.3
    motion-matcher invert clip.mp4 --out runs/circle/inverted.pt

(``python -m motion_core ...`` is the same.) Without ``--model`` the embedded shapes-world model is used; give a
hub id (``cerspense/zeroscope_v2_576w``) or a folder to switch. Defaults follow docs/method.md; the model's own
sidecar can set its video size and sampling steps. A run folder holds ``lora.safetensors``, ``config.json``,
``train_log.jsonl``, ``reference.mp4`` (the clip as the model sees it), the reference latents, and samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# No torch (nor diffusers) at module level: `motion-matcher --help` and a refused input answer in a fraction of a
# second; each command imports what it needs (torch alone takes seconds to import).
from .config import (
    ConfigError,
    RunConfig,
    SampleConfig,
    VideoConfig,
    check_seed,
    check_text,
    draw_seed,
    resolve_seed,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and appends "(default: ...)" to every flag's help, except where the help
    already names its default in words or there is nothing to show (None: the model's own value; off flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "default" in text or nothing or not action.option_strings:  # `is`: 0 and 0.0 are defaults to show
            return text
        return text + " (default: %(default)s)"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="hub id or folder of a text-to-video model (default: the embedded "
                   "shapes-world model, or $MOTION_MATCHER_MODEL)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="weight dtype for sampling (training keeps fp32 master weights)")


def _add_video_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reference clip (defaults: the model's own size, else 16 frames at 8 fps, 384x384)")
    g.add_argument("--frames", type=int, default=None, help="number of frames to take")
    g.add_argument("--fps", type=float, default=None, help="frames per second to resample the clip to")
    g.add_argument("--height", type=int, default=None, help="height in pixels (multiple of 8)")
    g.add_argument("--width", type=int, default=None, help="width in pixels (multiple of 8)")
    g.add_argument("--start", type=float, default=0.0, help="offset into the clip in seconds")
    g.add_argument("--loop", action="store_true", help="loop a clip that is too short instead of refusing it")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="motion-matcher", description=__doc__, formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": HelpFormatter}

    d = RunConfig()
    t = sub.add_parser("train", help="learn a reference video's motion as a LoRA",
                       description="Learn the motion of VIDEO as a LoRA (MotionMatcher's motion feature matching).",
                       **fmt)
    t.add_argument("video", help="reference clip (mp4, mov, webm, mkv, avi, gif)")
    t.add_argument("--caption", required=True, help="what the reference shows, e.g. 'a red circle'")
    t.add_argument("--out", default=None, help="run folder (default: runs/<video name>)")
    _add_model_args(t)
    _add_video_args(t)
    g = t.add_argument_group("training (defaults: the model's own, else docs/method.md's)")
    g.add_argument("--steps", type=int, default=None,
                   help=f"optimisation steps (default: the model's own, else {d.train.steps})")
    g.add_argument("--lr", type=float, default=None,
                   help=f"AdamW learning rate (default: the model's own, else {d.train.learning_rate})")
    g.add_argument("--adam-eps", type=float, default=None,
                   help="Adam's eps (default: the model's own; Zeroscope: the release's 1e-8, else 1e-12)")
    g.add_argument("--rank", type=int, default=None, help=f"LoRA rank (default: the model's own, else {d.lora.rank})")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"(t, noise) draws per step (default: the model's own, else {d.train.batch_size})")
    g.add_argument("--recolour", type=float, default=None,
                   help="share of draws from recoloured copies of the clip, against a LoRA that ties the motion to "
                        f"its colours (default: the model's own, else {d.train.recolour:g})")
    g.add_argument("--recolour-names", default=None, metavar="JSON",
                   help='colour names for the recoloured copies\' captions, a JSON file ({"": {"red": [220, 30, 30]}, '
                        '"background": {...}}; docs/method.md section 6): each copy is trained under its caption with '
                        "the colours renamed (default: the model's own, else none: the reference's caption)")
    g.add_argument("--blur", type=float, default=None, metavar="PIXELS",
                   help="Gaussian blur (standard deviation in pixels) of the clip the LoRA trains on, against a LoRA "
                        f"that carries the reference's outline with its path (default: the model's own, else "
                        f"{d.train.blur:g})")
    g.add_argument("--objective", default=d.loss.objective, choices=["motion", "ddpm", "frame-diff", "residual"],
                   help="motion = MotionMatcher; the others are the baselines")
    g.add_argument("--lambda-ca", type=float, default=d.loss.lambda_ca, help="weight of the cross-attention maps")
    g.add_argument("--lambda-tsa", type=float, default=d.loss.lambda_tsa,
                   help="weight of the temporal self-attention maps")
    g.add_argument("--seed", type=int, default=d.train.seed,
                   help="seed of LoRA init, timesteps and noise (-1: a random one, printed)")
    g.add_argument("--checkpoint-every", type=int, default=d.train.checkpoint_every, help="steps between checkpoints")
    g.add_argument("--precision", default=d.train.precision, choices=["auto", "fp32", "bf16", "fp16"],
                   help="denoiser precision (the extractor always runs in fp32); auto = bf16 on a GPU that has "
                   "it, else fp16 on a GPU, fp32 on the CPU")
    g.add_argument("--grad-checkpointing", default=d.train.grad_checkpointing, choices=["auto", "on", "off"],
                   help="recompute UNet blocks in backward to save memory (auto = on for CUDA)")
    g.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")

    i = sub.add_parser("invert", help="DDIM-invert a reference clip with the base model",
                       description="DDIM-invert VIDEO (base model, empty prompt, no guidance) and save the noise.",
                       **fmt)
    i.add_argument("video", help="reference clip")
    i.add_argument("--out", required=True, help="file to write (.pt)")
    i.add_argument("--steps", type=int, default=None, help="inversion steps (default: the sampling steps)")
    _add_inversion_arg(i)
    _add_model_args(i)
    _add_video_args(i)

    s = sub.add_parser("sample", help="generate videos with a motion LoRA",
                       description="Generate videos for PROMPT that move like the reference.", **fmt)
    s.add_argument("--prompt", required=True, help="what to generate")
    s.add_argument("--run", default=None, help="a run folder from `train` (its LoRA and reference)")
    s.add_argument("--lora", default=None, help="a LoRA file (default: <run>/lora.safetensors)")
    s.add_argument("--video", default=None, help="reference clip to invert (default: the run's reference)")
    s.add_argument("--inverted", default=None, help="inverted noise from `invert` (skips inversion)")
    s.add_argument("--out", default=None, help="output folder (default: <run>/samples or ./samples)")
    sd = SampleConfig()
    s.add_argument("--negative-prompt", default=sd.negative_prompt, help="what to steer away from")
    s.add_argument("--beta", type=float, default=None,
                   help=f"share of inverted noise: higher = closer motion, more of the reference's look leaks "
                        f"(default: the model's, else {sd.beta})")
    s.add_argument("--seed", type=int, default=None, help="seed (default or -1: a random one, printed)")
    s.add_argument("--steps", type=int, default=None,
                   help=f"DDIM steps, 1 to 1000 (default: the model's, else {sd.num_inference_steps})")
    s.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance (default: the model's, else {sd.guidance_scale:g})")
    s.add_argument("--guidance-rescale", type=float, default=None,
                   help=f"rescale guided noise to the conditional one's spread, 0 to 1 (default: the model's, else "
                        f"{sd.guidance_rescale:g})")
    s.add_argument("--lora-scale", type=float, default=None, help=f"LoRA strength (default: {sd.lora_scale})")
    s.add_argument("--lora-cutoff", type=int, default=None,
                   help=f"LoRA only while t >= this (default: the model's, else the release's {sd.lora_cutoff}; "
                        "0 = throughout)")
    s.add_argument("--num-videos", type=int, default=1, help="videos to make (seeds seed, seed+1, ...)")
    s.add_argument("--base", action="store_true", help="also render the base model for the same seeds and beta")
    s.add_argument("--gif", action="store_true", help="also write GIFs")
    s.add_argument("--report", action="store_true",
                   help="measure each video's motion against the reference and print the motion report (motion "
                        "discrepancy of the LoRA and base videos, a sentence, CLIP scores where a CLIP model is on "
                        "disk); also renders the base model (as --base) and writes report.json and report_*.png")
    _add_inversion_arg(s)
    _add_model_args(s)
    _add_video_args(s)

    pf = sub.add_parser("preflight", help="predict the peak memory of training and sampling before a run",
                        description="Print a JSON line with train_peak_gb and sample_peak_gb, then a sentence. "
                        "Reads only the model's configs (a model not on disk is predicted from Zeroscope's).")
    pf.add_argument("--model", default="zeroscope-config",
                    help="hub id or folder (default: Zeroscope's architecture, built from its config)")
    pf.add_argument("--frames", type=int, default=16, help="frames of the reference clip")
    pf.add_argument("--size", type=int, default=384, help="height = width in pixels")
    pf.add_argument("--device", default="cuda", help="the device the run will use (cuda, cpu)")
    pf.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="training precision, as for train")
    pf.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                    help="weight dtype the model is loaded with (auto: fp16 on a GPU)")
    pf.add_argument("--grad-checkpointing", default="auto", choices=["auto", "on", "off"], help="as for train")
    pf.add_argument("--memory-gb", type=float, default=None,
                    help="the device's memory (default: read from the GPU if one is visible)")
    pf.add_argument("--objective", default="motion", choices=["motion", "ddpm"], help="training objective")
    return ap


def _add_inversion_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--invert-with-lora", default=None, action=argparse.BooleanOptionalAction,
                   help="DDIM-invert with the LoRA on (release) or off (default: the model's own choice; on for "
                   "Zeroscope)")


def _video_cfg(args: argparse.Namespace, model) -> VideoConfig:
    return VideoConfig.for_model(model, {"num_frames": args.frames, "fps": args.fps, "height": args.height,
                                         "width": args.width, "start_sec": args.start, "loop": args.loop})


def _check_video_args(args: argparse.Namespace, video: str | None) -> None:
    """What can be checked without the model, checked before it loads (seconds): the clip and the size flags."""
    from .video import probe_video

    given = {k: getattr(args, a) for k, a in (("num_frames", "frames"), ("fps", "fps"), ("height", "height"),
                                              ("width", "width")) if getattr(args, a) is not None}
    VideoConfig.from_dict({**given, "start_sec": args.start, "loop": args.loop})
    if video is not None:
        probe_video(video)  # NotAVideoError etc. with the file's name


def _load(args: argparse.Namespace):
    from .models import load_model

    t0 = time.perf_counter()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"model: {model.name} on {model.device} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return model


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)


@contextlib.contextmanager
def _progress(total: int, desc: str) -> Iterator[Any]:
    """A progress bar that is ended before anything else is printed, errors included (else they share its line)."""
    bar = _bar(total, desc)
    try:
        yield bar
    finally:
        bar.close()


def _warn_base_model(meta: dict[str, Any], model: Any, lora: str) -> None:
    from .lora_io import base_model_warning

    warning = base_model_warning(meta, model)
    if warning:
        print(f"warning: {Path(lora).name}: {warning}", file=sys.stderr)


def _read_names(path: str | None) -> dict[str, Any] | None:
    """The ``--recolour-names`` file's JSON (checked by TrainConfig), or a ValueError naming what is wrong."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--recolour-names: no such file: {path}")
    if p.stat().st_size > 100_000:
        raise ValueError(f"--recolour-names: {path} is over 100 kB; a colour table is a few hundred bytes")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--recolour-names: {path} is not JSON ({err})") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .rundir import RunDir
    from .train import CheckpointError, train_lora
    from .video import read_video

    # 1. Everything that needs no model, first: a bad clip or setting is refused in well under a second.
    caption = check_text(args.caption, "caption")
    seed = resolve_seed(args.seed)
    if seed != args.seed:
        print(f"seed: {seed} (drawn at random)", file=sys.stderr)
    given = {"train": {"steps": args.steps, "learning_rate": args.lr, "adam_eps": args.adam_eps,
                       "batch_size": args.batch_size, "recolour": args.recolour, "blur": args.blur,
                       "recolour_names": _read_names(args.recolour_names)},
             "lora": {"rank": args.rank}}
    overrides = {sec: {k: v for k, v in kv.items() if v is not None} for sec, kv in given.items()}
    overrides["train"].update(seed=seed, checkpoint_every=args.checkpoint_every, precision=args.precision,
                              grad_checkpointing=args.grad_checkpointing)
    overrides["loss"] = {"objective": args.objective, "lambda_ca": args.lambda_ca, "lambda_tsa": args.lambda_tsa}
    RunConfig.for_model(None, overrides)  # range checks of what was given, before any model is loaded
    _check_video_args(args, args.video)
    # 2. The model, then the clip at the model's size.
    model = _load(args)
    vcfg = _video_cfg(args, model)
    frames = read_video(args.video, vcfg)
    overrides["video"] = vcfg.to_dict()
    cfg = RunConfig.for_model(model, overrides)  # the model's own defaults, then what was given here
    run = RunDir(args.out or Path("runs") / Path(args.video).stem)
    out = run.path
    z0 = run.prepare_reference(model, frames, fps=vcfg.fps)

    with _progress(cfg.train.steps, "training") as bar:
        def progress(p) -> None:
            if p.phase == "resuming":
                bar.clear()
                print(f"resuming from step {p.step} of {p.total} (checkpoint in {out})", file=sys.stderr)
                bar.reset(total=p.total)  # the rate counts only the steps run now, not the ones skipped
                bar.initial = bar.n = bar.last_print_n = p.step
                bar.refresh()
                return
            bar.n = p.step
            bar.set_postfix(loss=f"{p.loss:.4g}", **{k: f"{v:.3g}" for k, v in p.parts.items()}, refresh=False)
            bar.refresh()

        try:
            res = train_lora(model, z0, caption, out, cfg, callback=progress, resume=not args.no_resume)
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted; run again with the same --out to resume from the last checkpoint in {out}")
            return 130
        except CheckpointError as err:
            bar.close()
            raise ValueError(f"{err}. Run again with --no-resume to start over (the run's other files are kept), "
                             "or move the file away.") from err
    if cfg.train.recolour > 0 and cfg.train.recolour_names is not None:
        named = sorted(set(res.recolour_captions))
        print(f"recoloured copies: {len(res.recolour_captions)}, under " + ("; ".join(named) if named else
              "none: the caption names no colour the table knows, so the clip was trained alone"))
    print(f"LoRA: {res.lora_path}  ({res.steps_done} steps, {res.seconds:.0f} s)")
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    import torch

    from .models import encode_video
    from .sample import invert
    from .video import read_video

    SampleConfig.for_model(None, {"num_inference_steps": args.steps})  # range check before the model loads
    _check_video_args(args, args.video)
    model = _load(args)
    steps = SampleConfig.for_model(model, {"num_inference_steps": args.steps}).num_inference_steps
    z0 = encode_video(model, read_video(args.video, _video_cfg(args, model)))
    with _progress(steps, "inverting") as bar:
        eps_inv = invert(model, z0, steps, callback=lambda i, n, t: bar.update(1),
                         with_lora=args.invert_with_lora)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"eps_inv": eps_inv.cpu(), "steps": steps, "model": model.name}, out)
    print(f"inverted noise: {out} ({steps} steps)")
    return 0


def _sample_cfg(args: argparse.Namespace, model) -> SampleConfig:
    """The model's sampling defaults (``model`` None: the method's, for checks before the model loads), then the
    flags given."""
    return SampleConfig.for_model(model, {
        "num_inference_steps": args.steps, "guidance_scale": args.guidance,
        "guidance_rescale": args.guidance_rescale, "beta": args.beta,
        "lora_scale": args.lora_scale, "lora_cutoff": args.lora_cutoff,
        "negative_prompt": check_text(args.negative_prompt, "negative prompt", required=False),
        "seed": check_seed(args.seed), "num_videos": args.num_videos})


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .lora_io import load_lora, read_lora
    from .models import encode_video
    from .rundir import RunDir
    from .sample import invert_cached, sample
    from .video import read_video, write_gif, write_mp4

    # 1. Inputs first, before the model loads: prompt, settings, the LoRA file, the reference.
    prompt = check_text(args.prompt, "prompt")
    run = RunDir(args.run) if args.run else None
    if run is not None and not run.path.is_dir():
        raise ValueError(f"--run {run.path} is not a folder (give the --out folder of `train`)")
    lora = args.lora or (str(run.lora) if run else None)
    _sample_cfg(args, None)
    if lora:
        read_lora(lora)  # LoraFileError: missing, damaged, NaN, oversized, not ours
    if args.inverted and not Path(args.inverted).is_file():
        raise ValueError(f"--inverted {args.inverted} does not exist")
    has_ref = bool(args.inverted or args.video or (run and run.reference_latents.is_file()))
    if not has_ref:
        raise ValueError("sample needs a reference: --run with a reference, --video, or --inverted")
    _check_video_args(args, args.video)
    # 2. The model, the LoRA, the settings with the model's own defaults.
    model = _load(args)
    if lora:
        meta = load_lora(lora, model)
        print(f"LoRA: {lora} (objective {meta.get('objective')}, {meta.get('steps')} steps, "
              f"reference: {str(meta.get('caption'))[:80]!r})", file=sys.stderr)
        _warn_base_model(meta, model, lora)
    cfg = _sample_cfg(args, model)
    if cfg.seed is None:
        cfg.seed = draw_seed()
        print(f"seed: {cfg.seed} (drawn at random)", file=sys.stderr)
    eps_inv = None
    if args.inverted:
        try:
            saved = torch.load(args.inverted, map_location="cpu", weights_only=True)
            eps_inv = saved["eps_inv"]
        except Exception as err:
            raise ValueError(f"--inverted {Path(args.inverted).name} is not a file written by `invert` "
                             f"({type(err).__name__})") from err
        if saved.get("steps") != cfg.num_inference_steps:
            print(f"note: the noise was inverted with {saved.get('steps')} steps, sampling uses "
                  f"{cfg.num_inference_steps}", file=sys.stderr)
    reference = None  # the clip as the model sees it, for --report
    if args.report and args.video:
        reference = read_video(args.video, _video_cfg(args, model))
    elif args.report and run is not None and run.reference_video.is_file():
        reference = read_video(run.reference_video, _video_cfg(args, model))
    elif args.report:
        print("note: --report needs the reference clip (--video, or a --run from `train`): no report",
              file=sys.stderr)
    if not args.inverted:
        if args.video:
            z0 = encode_video(model, reference if reference is not None else
                              read_video(args.video, _video_cfg(args, model)))
        else:
            z0 = run.load_latents()
        cache = run.inversion_cache if run else None
        with _progress(cfg.num_inference_steps, "inverting") as bar:
            eps_inv = invert_cached(model, z0.to(model.device), cfg.num_inference_steps, cache,
                                    callback=lambda i, n, t: bar.update(1),
                                    with_lora=args.invert_with_lora)
    if eps_inv is None:
        raise SystemExit("sample needs a reference: --run with a reference, --video, or --inverted")
    out = Path(args.out or (run.samples if run else "samples"))
    fps = VideoConfig.for_model(model).fps
    variants = [("lora", True)] + ([("base", False)] if args.base or args.report else [])
    made: dict[str, Any] = {}
    for name, use_lora in variants:
        with _progress(cfg.num_inference_steps * cfg.num_videos, f"sampling ({name})") as bar:
            res = sample(model, prompt, cfg, eps_inv=eps_inv, use_lora=use_lora and bool(lora),
                         callback=lambda i, n, t, bar=bar: bar.update(1))
        made[name] = res
        for seed, frames in zip(res.seeds, res.frames):
            stem = f"{name}_seed{seed}_beta{cfg.beta:g}"
            path = write_mp4(frames, out / f"{stem}.mp4", fps=fps)
            if args.gif:
                write_gif(frames, out / f"{stem}.gif", fps=fps)
            print(path)
    (out / "sample_config.json").write_text(json.dumps({"prompt": prompt, "lora": lora, **cfg.to_dict()},
                                                       indent=2))
    if reference is not None:
        _print_reports(reference, made, prompt, out)
    return 0


def _print_reports(reference: Any, made: dict[str, Any], prompt: str, out: Path) -> None:
    """The motion report of each LoRA video against the reference, beside the base model's video for the same seed
    (``motion_core.report``, the app's own numbers); printed, and kept as report.json and report_<seed>.png."""
    from .report import motion_report, report_lines, save_figure, tracks_figure

    reports = []
    for i, seed in enumerate(made["lora"].seeds):
        rep = motion_report(reference, made["lora"].frames[i], made["base"].frames[i], prompt=prompt)
        save_figure(tracks_figure(rep), out / f"report_seed{seed}.png")
        reports.append({"seed": seed, **rep.to_dict()})
        print(f"\nmotion report, seed {seed}:")
        print("\n".join(f"  {line}" for line in report_lines(rep.to_dict())))
    (out / "report.json").write_text(json.dumps(reports, indent=2))


def cmd_preflight(args: argparse.Namespace) -> int:
    from .preflight import predict

    p = predict(args.model, args.frames, args.size, args.device, args.precision, args.grad_checkpointing,
                args.dtype, args.memory_gb, args.objective)
    print(p.to_json())
    print(p.advice)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from .models import ModelLoadError
    from .video import VideoError

    try:
        return {"train": cmd_train, "invert": cmd_invert, "sample": cmd_sample, "preflight": cmd_preflight}[
            args.command](args)
    except (ConfigError, VideoError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
