"""Diagnosis of the embedded model: how much of a clip's look survives in z_T; what its motion features see.

    python -m shapes_world.diagnose --model assets/shapes-t2v --montage runs/diagnose.png
    python -m shapes_world.diagnose --model assets/shapes-t2v --features     # motion vs look in M

Zeroscope's noise schedule (scaled_linear, 0.00085 to 0.012) ends at alpha_bar = 0.0047, not 0: at t = 999 the
noisy latent still holds sqrt(0.0047) = 7 % of the clean one. Averaged over a whole clip (12 frames x 16 x 16 per
channel here) that residue of the clip's global colour stands well above the noise, so a model can read the
background colour from z_T during training instead of from the caption; at sampling, pure noise then hands it a
random global colour. The script prints that signal-to-noise ratio per latent channel (SNR > 1: readable) and, with
``--montage``, samples four prompts twice from the same noise: as drawn, and with the per-channel mean of z_T set
to what a clip of the prompt would leave there. If the second row follows the prompt's background and the first
does not, the model takes its global colour from the noise.

``--features`` asks whether the motion feature extractor M of this model reads motion or look. For each reference
of the evaluation it noises the reference and two kinds of altered clips with the same (t, eps) and compares M's
maps (the training loss's terms, lambda-weighted MSE, the reference's caption on both sides): clips with the same
look and another reference's motion, and clips with the same motion and placement but the look of the evaluation's
new prompts. Motion feature matching can only transfer motion if the first distance clearly exceeds the second.

``--formation`` asks when, during sampling, the base model settles where its object goes. For the prompt-following
prompts it runs the model's own DDIM sampler (its steps and guidance, pure noise), decodes the clean-clip
estimate ``x0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)`` at every step, tracks its object and prints
the track distance to the finished sample's track per timestep. A LoRA that is switched off below
``lora_cutoff`` (the release's 500) can only steer the path if the path is settled above that timestep.

``--holds LADDER`` asks which change of prompt loses a trained motion LoRA's path. It loads the MotionMatcher
LoRAs a ladder saved (``LADDER/ref<i>/motion``) and samples each with its reference's own caption and with that
caption changed in one attribute only: the object's colour, its shape, the background's colour (the model's
sampling defaults, beta 0, 2 seeds, the base model beside each), then prints the mean track distance to the
reference per kind. A LoRA that keeps its path under every change carries motion; one that keeps it only under
its own caption has learnt the motion of *that look*.

``--shape-survival`` asks at which noise level the base model loses a shape it is given. It renders clips of each
shape, noises each to t0 (fresh noise, one seed each) and lets the model's own DDIM sampler (its steps and
guidance, the clip's caption) finish it from the last sampling step at or below t0, then classifies the drawn
shape. t0 = 0 is the VAE round trip. A shape lost from small t0 is lost in the near-clean steps, below any LoRA's
cut-off; one lost only from large t0 is lost where the layout forms. ``--radii 0.14 0.17 0.21`` does the same per
object size (radius / side, any size up to ``paths.MAX_SIZE``, drawn or not): how big a shape must be to survive
(``--t0s 0 200 400`` picks the noise levels; ``--guidance 1`` finishes without guidance, ``--rescale 0`` with
plain, unrescaled guidance).

``--ceiling`` scores the prompt-following check's own 40 prompts on clips that need no UNet: the world's renders of
those captions, and the same renders after a VAE round trip. What the round trip loses no UNet can draw back, so
its scores bound what the base model can reach with this VAE and detector.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from motion_core.config import SampleConfig, VideoConfig
from motion_core.ddim import add_noise, sampling_timesteps
from motion_core.models import T2VModel, decode_latents, encode_prompt, encode_video, load_model
from motion_core.sample import sample
from motion_core.video import frames_from_array, to_uint8

from . import detector, evaluate, examples, paths, world

CASES = [("circle", "red", "plain", "grey"), ("star", "blue", "plain", "white"),
         ("square", "green", "striped", "black"), ("triangle", "yellow", "dotted", "grey")]


def _size(model: T2VModel) -> dict:
    vd = VideoConfig.for_model(model).to_dict()
    return {"frames": int(vd["num_frames"]), "height": int(vd["height"]), "width": int(vd["width"])}


def clip_latents(model: T2VModel, spec: world.ClipSpec) -> tuple[np.ndarray, torch.Tensor]:
    frames = world.render(spec).frames
    z0 = encode_video(model, frames_from_array(frames))
    return frames, z0


def mean_snr(model: T2VModel, n: int = 64, timesteps: tuple[int, ...] = (999, 900, 800)) -> list[dict]:
    """Per channel: spread over clips of sqrt(alpha_bar_t) * (clip mean of z0) / std of the noise's clip mean."""
    rng = np.random.default_rng(0)
    means = []
    for _ in range(n):
        _, z0 = clip_latents(model, world.sample_spec(rng, **_size(model)))
        means.append(z0.mean(dim=(2, 3, 4))[0])
    spread = torch.stack(means).std(0)
    per_channel = z0[0, 0].numel()
    out = []
    for t in timesteps:
        ab = model.scheduler.alphas_cumprod[t]
        noise = ((1 - ab) / per_channel).sqrt()
        out.append({"t": t, "alpha_bar": float(ab), "snr": (ab.sqrt() * spread / noise).tolist()})
    return out


def montage(model: T2VModel, path: str) -> None:
    from PIL import Image

    ab = model.scheduler.alphas_cumprod[999]
    rows = []
    for i, (shape, colour, bg, bgc) in enumerate(CASES):
        prompt = f"a {colour} {shape} on a {bg} {bgc} background"
        frames, z0 = clip_latents(model, world.make_spec(shape, colour, background=bg, bg_colour=bgc, seed=i,
                                                         **_size(model)))
        eps = torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(i))
        # the same noise with its per-channel clip mean replaced by what z0 leaves at t = 999 (in noise units)
        injected = eps - eps.mean(dim=(2, 3, 4), keepdim=True) + (ab / (1 - ab)).sqrt() * z0.mean(
            dim=(2, 3, 4), keepdim=True)
        for noise in (eps, injected):
            cfg = SampleConfig.for_model(model, {"seed": i, "beta": 0.0, "num_videos": 1})  # its steps, guidance
            video = sample(model, prompt, cfg, latent_shape=tuple(z0.shape[2:]), init_noise=noise)
            arr = (video.frames[0].permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).astype(np.uint8)
            last = len(arr) - 1
            rows.append(np.concatenate([frames[0]] + [arr[j] for j in (0, last // 2, last)], axis=1))
    img = np.concatenate(rows, 0)
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(path)
    print(f"{path}: per prompt two rows (noise as drawn / mean of z_T injected); columns: a frame of a clip of "
          "the prompt, then frames first / middle / last of the sample")


def feature_sensitivity(model: T2VModel, timesteps: tuple[int, ...] = (550, 700, 850, 990),
                        draws: int = 2, blocks: tuple[str, ...] | None = None) -> list[dict]:
    """Per reference: mean lambda-weighted MSE of M's maps against the reference for motion and for look changes."""
    import torch.nn.functional as F

    from motion_core.attention import reference_features
    from motion_core.config import LossConfig

    from . import detector
    from .evaluate import NEW_PROMPTS, REFERENCES, track_distance

    lam = LossConfig()
    size = _size(model)
    rows = []
    for r_i, ref in enumerate(REFERENCES):
        spec = world.make_spec(**ref, seed=r_i, **size)
        frames, z_ref = clip_latents(model, spec)
        text = encode_prompt(model, world.caption(spec)).float()
        motions = [dict(ref, motion=o["motion"]) for o in REFERENCES if o["motion"] != ref["motion"]]
        looks = []
        for p in NEW_PROMPTS[:3]:
            c = world.parse_caption(p)
            looks.append(dict(ref, shape=c["shape"], colour=c["colour"], background=c["background"],
                              bg_colour=c["bg_colour"]))
        ref_track = detector.track(frames)
        # the reference's maps, once per (t, draw): every altered clip is compared with the same noise
        noise, ref_maps = {}, {}
        for t in timesteps:
            for d in range(draws):
                noise[t, d] = torch.randn(z_ref.shape, generator=torch.Generator().manual_seed(1000 * d + t))
                ref_maps[t, d] = reference_features(model, z_ref, text, t, blocks, noise=noise[t, d])
        drift: dict[str, list[float]] = {"motion": [], "look": []}
        dist: dict[str, list[float]] = {"ca_motion": [], "tsa_motion": [], "ca_look": [], "tsa_look": []}
        for kind, variants in (("motion", motions), ("look", looks)):
            for v in variants:
                v_frames, z_v = clip_latents(model, world.make_spec(**v, seed=r_i, **size))
                # look clips keep the motion and placement: their tracks must stay far closer than others'
                drift[kind].append(track_distance(detector.track(v_frames), ref_track, float(size["width"])))
                for (t, d), a in ref_maps.items():
                    b = reference_features(model, z_v, text, t, blocks, noise=noise[t, d])
                    dist[f"ca_{kind}"].append(lam.lambda_ca * float(F.mse_loss(a.ca, b.ca)))
                    dist[f"tsa_{kind}"].append(lam.lambda_tsa * float(F.mse_loss(a.tsa, b.tsa)))
        rows.append({"motion": ref["motion"], **{k: float(np.mean(v)) for k, v in dist.items()},
                     **{f"{k}_track_drift": float(np.nanmean(v)) for k, v in drift.items()}})
    return rows


@torch.no_grad()
def ceiling(model: T2VModel, n: int = 40, seed: int = 20_000, world_name: str = "shapes") -> dict[str, dict]:
    """Prompt-following scores of the prompts' own renders, as rendered and after the VAE (encode, decode): what
    the base model could reach at best with this VAE and judge. ``world_name`` "paths": the second world, with the
    prompts of ``card.prompt_following`` (same seed, same prompts); else the first world's."""
    rows: dict[str, list[dict]] = {"rendered": [], "vae": []}
    if world_name == "paths":
        rng = np.random.default_rng(seed)
        clips = [paths.render(paths.sample_spec(rng)) for _ in range(n)]
    else:
        clips = [world.render(spec) for spec in evaluate.prompt_specs(model, n, seed)]
    for clip in clips:
        frames = clip.frames
        prompt = clip.caption
        rows["rendered"].append(evaluate.judge_clip(frames, prompt))
        recon = decode_latents(model, encode_video(model, frames_from_array(frames)))[0]
        rows["vae"].append(evaluate.judge_clip(to_uint8(recon), prompt))
    return {k: evaluate.following_scores(v) for k, v in rows.items()}


@torch.no_grad()
def clean_estimates(model: T2VModel, prompt: str, noise: torch.Tensor) -> tuple[list[tuple[int, torch.Tensor]],
                                                                            torch.Tensor]:
    """The model's own DDIM sampler (its steps and guidance, beta 0, no LoRA) from ``noise``, keeping each step's
    clean-clip estimate: ``([(t, x0_hat), ...], final latents)``."""
    cfg = SampleConfig.for_model(model, {"beta": 0.0, "seed": 0})
    out: list[tuple[int, torch.Tensor]] = []
    res = sample(model, prompt, cfg, latent_shape=tuple(noise.shape[2:]), use_lora=False, decode=False,
                 init_noise=noise, x0_hook=lambda t, x0: out.append((t, x0)))
    return out, res.latents


def formation(model: T2VModel, n: int = 8, seed: int = 20_000) -> list[dict]:
    """Per sampling step: mean track distance of the decoded ``x0_hat`` to the finished sample's track (``n``
    prompts of the prompt-following check, one seed each), and how often the estimate holds a trackable object."""
    vd = VideoConfig.for_model(model).to_dict()
    side = float(max(int(vd["height"]), int(vd["width"])))
    shape = (1, model.latent_channels, int(vd["num_frames"]), int(vd["height"]) // model.vae_scale,
             int(vd["width"]) // model.vae_scale)
    rng = np.random.default_rng(seed)
    dist: dict[int, list[float]] = {}
    for k in range(n):
        prompt = paths.render(paths.sample_spec(rng)).caption
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            estimates, final = clean_estimates(model, prompt, noise)
            final_track = detector.track(to_uint8(decode_latents(model, final)[0]))
            for t, x0_hat in estimates:
                track = detector.track(to_uint8(decode_latents(model, x0_hat)[0]))
                dist.setdefault(t, []).append(evaluate.track_distance(track, final_track, side))
    rows = []
    for t, d in dist.items():
        d = [v for v in d if v == v]  # NaN: no object in the estimate or the sample
        rows.append({"t": t, "distance": float(np.mean(d)) if d else float("nan"), "tracked": len(d) / n})
    return rows


def one_change(i: int) -> dict[str, str]:
    """The ladder's reference i's own caption, and that caption with one attribute changed (colour, shape, bg)."""
    from .ladder import REFERENCES

    shape, colour, bg, bgc = REFERENCES[i][:4]
    # the next colour that stands out from the background; a plain background the object stands out from
    new_colour = next(c for c in paths.COLOURS[paths.COLOURS.index(colour) + 1:] + paths.COLOURS
                      if c != colour and paths.compatible(c, bgc))
    new_bg = next(b for b in ("white", "black", "grey") if b != bgc and paths.compatible(colour, b))
    out = {"own": (shape, colour, bg, bgc), "colour": (shape, new_colour, bg, bgc),
           "shape": (paths.SHAPES[(paths.SHAPES.index(shape) + 1) % len(paths.SHAPES)], colour, bg, bgc),
           "background": (shape, colour, "plain", new_bg)}
    return {k: f"a {c} {s} on a {b} {bc} background" for k, (s, c, b, bc) in out.items()}


def holds(model: T2VModel, ladder_dir: Path, seeds: int = 2) -> list[dict]:
    """Track distance to the reference of each saved motion LoRA under its own and one-change prompts (beta 0)."""
    from motion_core.config import RunConfig
    from motion_core.lora_io import load_lora, remove_lora
    from motion_core.sample import invert_cached

    from .ladder import reference

    scfg = RunConfig.for_model(model).sample
    vd = VideoConfig.for_model(model)
    side = float(max(vd.height, vd.width))
    rows = []
    for lora in sorted(ladder_dir.glob("ref*/motion/lora.safetensors"), key=lambda p: int(p.parent.parent.name[3:])):
        i = int(lora.parent.parent.name[3:])
        clip = reference(i, model)
        ref_track = detector.track(clip.frames)
        eps_inv = invert_cached(model, encode_video(model, frames_from_array(clip.frames)),
                                scfg.num_inference_steps, lora.parent.parent / "cache")
        load_lora(lora, model)
        try:
            for kind, prompt in one_change(i).items():
                for seed in range(seeds):
                    for use_lora in (True, False):
                        cfg = SampleConfig.from_dict({**scfg.to_dict(), "beta": 0.0, "seed": seed})
                        vid = to_uint8(sample(model, prompt, cfg, eps_inv=eps_inv, use_lora=use_lora).frames[0])
                        rows.append({"ref": i, "kind": kind, "prompt": prompt, "seed": seed, "lora": use_lora,
                                     "distance": evaluate.track_distance(detector.track(vid), ref_track, side)})
        finally:
            remove_lora(model)
    return rows


@torch.no_grad()
def shape_survival(model: T2VModel, per_shape: int = 10, t0s: tuple[int, ...] = (0, 200, 400, 600, 800),
                   seed: int = 77, radii: tuple[float, ...] | None = None, guidance: float | None = None,
                   rescale: float | None = None) -> list[dict]:
    """Per (shape, t0): how often a rendered clip of that shape, noised to t0 and finished by the model's sampler
    under its own caption, still shows that shape (``drawn``: the counts of what the detector read).

    ``radii``: per (shape, radius, t0) instead, ``per_shape`` clips of each radius / side (``paths.size_fraction``;
    sizes the world does not draw are allowed), the row's ``radius`` saying which. Clip ``i`` of a shape is the
    same draw (path, colour, background) at every radius, so the rows differ in size alone. ``guidance``: the
    sampler's scale instead of the model's (1 = the caption's prediction alone, no extrapolation from the empty one);
    ``rescale``: its guidance rescale instead of the model's (``ddim.guide``; 0 = plain guidance).
    """
    cfg = SampleConfig.for_model(model, {"beta": 0.0, "seed": 0, "guidance_scale": guidance,
                                         "guidance_rescale": rescale})
    steps = sampling_timesteps(model.scheduler, cfg.num_inference_steps)
    size = _size(model)
    groups: dict[tuple[str, float | None], list] = {}
    if radii is None:
        rng = np.random.default_rng(seed)
        clips: dict[str, list] = {s: [] for s in paths.SHAPES}
        while any(len(v) < per_shape for v in clips.values()):
            spec = paths.sample_spec(rng, **size)
            shape = spec.objects[0].shape
            if len(clips[shape]) < per_shape:
                clips[shape].append(paths.render(spec))
        groups = {(s, None): v for s, v in clips.items()}
    else:
        for si, shape in enumerate(paths.SHAPES):
            for r in radii:
                groups[(shape, r)] = [paths.render(paths.sample_spec(np.random.default_rng([seed, si, i]),
                                                                     shape=shape, size=float(r), **size))
                                      for i in range(per_shape)]
    rows = []
    for (shape, radius), group in groups.items():
        latents = [encode_video(model, frames_from_array(clip.frames)) for clip in group]
        for t0 in t0s:
            drawn: dict[str, int] = {}
            first = next((t for t, _ in steps if t <= t0), None) if t0 > 0 else None
            for k, (clip, z0) in enumerate(zip(group, latents)):
                if first is None:  # t0 = 0 (or below every step): the VAE's round trip
                    video = decode_latents(model, z0)[0]
                else:
                    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(k))
                    z_t = add_noise(model.scheduler, z0, eps, torch.tensor([first]))
                    video = sample(model, clip.caption, cfg, latent_shape=tuple(z0.shape[2:]), use_lora=False,
                                   init_noise=z_t, start_t=t0).frames[0]
                got = detector.track(to_uint8(video)).shape
                drawn[got] = drawn.get(got, 0) + 1
            row = {"shape": shape, "t0": t0, "kept": drawn.get(shape, 0) / len(group), "drawn": drawn}
            if radius is not None:
                row["radius"] = radius
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--clips", type=int, default=64, help="clips for the SNR estimate")
    ap.add_argument("--montage", default=None, help="also write the injection comparison to this PNG")
    ap.add_argument("--features", action="store_true", help="only compare motion and look changes in M's maps")
    ap.add_argument("--capture", nargs="+", default=None,
                    help="with --features: blocks to read (default: the model's)")
    ap.add_argument("--ceiling", action="store_true",
                    help="only score the prompt-following prompts' renders, as rendered and after the VAE")
    ap.add_argument("--formation", action="store_true",
                    help="only print when, during sampling, the object's path settles (paths-world models)")
    ap.add_argument("--shape-survival", action="store_true",
                    help="only print how often each shape survives being noised to t0 and finished by the model")
    ap.add_argument("--radii", type=float, nargs="+", default=None,
                    help="with --shape-survival: per object radius / side instead (e.g. 0.14 0.17 0.21)")
    ap.add_argument("--t0s", type=int, nargs="+", default=None,
                    help="with --shape-survival: the noise levels to start from (0 = the VAE round trip; default "
                         "0 200 400 600 800)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="with --shape-survival: the guidance scale to finish with (default: the model's)")
    ap.add_argument("--rescale", type=float, default=None,
                    help="with --shape-survival: the guidance rescale to finish with, 0 to 1 (default: the model's)")
    ap.add_argument("--holds", default=None, metavar="LADDER",
                    help="only sample a ladder's motion LoRAs under their own and one-change prompts")
    args = ap.parse_args(argv)
    if (args.radii or args.t0s or args.guidance is not None or args.rescale is not None) and not args.shape_survival:
        ap.error("--radii, --t0s, --guidance and --rescale go with --shape-survival")
    if args.rescale is not None:
        try:
            SampleConfig(guidance_rescale=args.rescale).validate()  # the one range check
        except ValueError as e:
            ap.error(f"--rescale: {e}")
    try:
        radii = tuple(paths.size_fraction(r) for r in args.radii) if args.radii else None
    except ValueError as e:
        ap.error(f"--radii: {e}")
    t0s = tuple(args.t0s or (0, 200, 400, 600, 800))
    if not all(0 <= t < 1000 for t in t0s):
        ap.error(f"--t0s must lie in [0, 1000), got {list(t0s)}")
    model = load_model(args.model, device="cpu")
    if args.holds:
        rows = holds(model, Path(args.holds))
        if not rows:
            raise SystemExit(f"{args.holds}: no motion LoRA found (ref<i>/motion/lora.safetensors)")
        print("| prompt | references | motion LoRA | base model |\n|---|---|---|---|")
        for kind in ("own", "colour", "shape", "background"):
            d = {u: [r["distance"] for r in rows
                     if r["kind"] == kind and r["lora"] == u and r["distance"] == r["distance"]]  # NaN: untracked
                 for u in (True, False)}
            label = "own caption" if kind == "own" else f"{kind} changed"
            print(f"| {label} | {len({r['ref'] for r in rows})} | {np.mean(d[True]):.3f} | {np.mean(d[False]):.3f} |")
        return
    if args.shape_survival:
        rows = shape_survival(model, t0s=t0s, radii=radii, guidance=args.guidance, rescale=args.rescale)
        t0s = sorted({r["t0"] for r in rows})
        sized = radii is not None
        print(("| shape | radius / side | " if sized else "| shape | ") + " | ".join(f"from t0 = {t}" for t in t0s)
              + " |\n|---" + "|---" * (len(t0s) + sized) + "|")
        for key in dict.fromkeys((r["shape"], r.get("radius")) for r in rows):
            cells = [next(r for r in rows if (r["shape"], r.get("radius")) == key and r["t0"] == t) for t in t0s]
            kept = " | ".join(f"{c['kept']:.0%}" for c in cells)
            print(f"| {key[0]} | " + (f"{key[1]:g} | " if sized else "") + kept + " |", flush=True)
        return
    if args.formation:
        print("| t | distance of x0_hat's track to the final track | x0_hat tracked |\n|---|---|---|")
        for r in formation(model):
            print(f"| {r['t']} | {r['distance']:.3f} | {r['tracked']:.0%} |", flush=True)
        return
    if args.ceiling:
        print("| clips | object colour | shape | one coherent object | background colour |\n|---|---|---|---|---|")
        for name, r in ceiling(model, world_name=examples.model_world(Path(model.source))).items():
            print(f"| {name} | {r['colour_acc']:.0%} | {r['shape_acc']:.0%} | {r['coherent']:.0%} | "
                  f"{r['bg_colour_acc']:.0%} |")
        return
    if args.features:
        print("| reference | CA: motion change | CA: look change | TSA: motion change | TSA: look change | "
              "track distance: motion clips | look clips |\n|---|---|---|---|---|---|---|")
        for r in feature_sensitivity(model, blocks=tuple(args.capture) if args.capture else None):
            print(f"| {r['motion']} | {r['ca_motion']:.2e} | {r['ca_look']:.2e} | {r['tsa_motion']:.2e} | "
                  f"{r['tsa_look']:.2e} | {r['motion_track_drift']:.3f} | {r['look_track_drift']:.3f} |", flush=True)
        return
    sch = model.scheduler.config
    print(f"schedule {sch.beta_schedule} {sch.beta_start} to {sch.beta_end}, prediction {sch.prediction_type}")
    print("| t | alpha_bar | SNR of the clip mean in z_t, per latent channel |\n|---|---|---|")
    for row in mean_snr(model, args.clips):
        print(f"| {row['t']} | {row['alpha_bar']:.5f} | {', '.join(f'{s:.2f}' for s in row['snr'])} |")
    if args.montage:
        montage(model, args.montage)


if __name__ == "__main__":
    main()
