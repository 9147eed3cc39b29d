"""Retrieval check of the motion feature extractor M (MotionMatcher App. C, Table 3) on shapes-world clips.

    python -m shapes_world.retrieval_check --clips 120                     # the embedded shapes-world model
    python -m shapes_world.retrieval_check --clips 120 --model path/to/model --tracks lk --out retrieval.json

N seeded shapes-world clips are rendered at the model's video size, encoded with its VAE and noised once at
t = 500 (``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``, eps from a seed per clip). Each clip is then a query:
its positives are the 10 % of the other clips with the smallest motion discrepancy to it, the others are ranked by
Euclidean distance of a feature, and the mean average precision is reported for

- M: the raw cross-attention and temporal self-attention maps of the frozen UNet at t = 500, flattened and
  concatenated. The lambdas are left out: with lambda_CA = lambda_TSA (the paper's 2000 each) they scale every
  distance alike and cannot change a ranking. M reads each clip with its own caption (as M reads the reference's
  caption in training); ``--text empty`` uses the empty prompt instead;
- latents: the clean VAE latents z0 (the paper's "DDPM" column: "directly using latent videos");
- residual: consecutive-frame differences of z0 (the paper's "VMC" column);
- random: random rankings (and the exact expectation, for reference);
- extra rows: M's CA and TSA halves alone, and latents / residuals of the noisy z_t that M sees.

Motion discrepancy between two clips (which defines the positives) is the paper's symmetric Chamfer distance of
point tracks. Decision: the tracks are the world's *ground truth*, not a tracker's estimate (``--tracks gt``,
the default): a grid of points (``--grid`` per side) on the first frame, each moved exactly as the scene moves it
-- a point on an object follows that object's translation, rotation and scaling about its centre; a background
point follows the camera. This is what a perfect point tracker (CoTracker in the paper) would report, so the
positives are free of tracker error, and it is deterministic. ``--tracks lk`` uses the Lucas-Kanade tracker on the
rendered frames instead (the same tracker the protocol uses without CoTracker).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PAPER_AP", "RetrievalReport", "discrepancy_matrix", "extract_features", "format_report",
           "gt_point_tracks", "lk_point_tracks", "main", "run_check"]

# Paper Table 3 (percent): M ("Ours"), latents ("DDPM"), residual frames ("VMC"), random.
PAPER_AP: dict[str, float] = {"M": 32.78, "latents": 8.20, "residual": 8.85, "random": 10.71}
ROWS: tuple[tuple[str, str], ...] = (  # (key, label), in table order
    ("M", "M (CA + TSA maps)"),
    ("latents", "latents z0 (DDPM)"),
    ("residual", "residual frames of z0 (VMC)"),
    ("random", "random ranking"),
    ("M_ca", "M, CA maps only"),
    ("M_tsa", "M, TSA maps only"),
    ("latents_noisy", "noisy latents z_t"),
    ("residual_noisy", "residual frames of z_t"),
)


# ---------------------------------------------------------------------------------------------------------------
# ground-truth motion
# ---------------------------------------------------------------------------------------------------------------


def _rotate(d: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Rotate offsets (N, 2) by per-frame angles (F,) counter-clockwise on screen (y down) -> (N, F, 2).

    The same convention as ``world.shape_polygon``: x' = x cos + y sin, y' = -x sin + y cos.
    """
    t = np.deg2rad(degrees)[None, :]
    c, s = np.cos(t), np.sin(t)
    x, y = d[:, 0:1], d[:, 1:2]
    return np.stack([x * c + y * s, -x * s + y * c], axis=-1)


def gt_point_tracks(clip: Any, grid: int = 10) -> np.ndarray:
    """Exact tracks (grid*grid, F, 2) of a regular grid of first-frame points in a rendered shapes-world clip.

    A point covered by an object on frame 0 (its visible mask) moves rigidly with it: rotated by the object's
    angle change and scaled by its radius change about its centre. Any other point is background and moves with
    the camera (static unless the clip pans). Occlusion and leaving the frame do not stop a track: the positions
    stay defined, as for a tracker that sees through them.
    """
    from motion_core.eval.trackers import grid_points

    n_obj, f_n, h, w = clip.masks.shape
    pts = grid_points(h, w, grid).astype(np.float64)  # (N, 2) x, y
    tracks = pts[:, None, :] - (clip.camera - clip.camera[0])[None]  # background: shifts opposite to the view
    cols = np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1)
    for k in range(n_obj):
        on = clip.masks[k, 0, rows, cols]
        if not on.any():
            continue
        d = pts[on] - clip.centroids[k, 0]  # offset from the object's centre on frame 0
        rel = _rotate(d, clip.angles[k] - clip.angles[k, 0]) * (clip.scales[k] / clip.scales[k, 0])[None, :, None]
        tracks[on] = clip.centroids[k][None] + rel
    return tracks


def lk_point_tracks(clip: Any, grid: int = 10) -> np.ndarray:
    """Lucas-Kanade tracks of the rendered frames (valid ones; all of them when none is valid)."""
    from motion_core.eval.trackers import lk_tracks

    tracks, valid = lk_tracks(clip.frames, grid=grid)
    return tracks[valid] if valid.any() else tracks


def discrepancy_matrix(tracks: Sequence[np.ndarray], num_frames: int, height: int, width: int,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Symmetric (N, N) motion discrepancy between every pair of clips (zero diagonal)."""
    from motion_core.eval.metrics import motion_discrepancy

    n = len(tracks)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):  # the Chamfer distance is symmetric: half the pairs suffice
            out[i, j] = out[j, i] = motion_discrepancy(tracks[i], tracks[j], num_frames, height, width)
        if progress is not None:
            progress(i + 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------------------


def _noise(shape: Sequence[int], seed: int, index: int) -> Any:
    """Noise for clip ``index``: depends only on (seed, index), so it does not change when N changes."""
    import torch

    state = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(state))


def _residual(z: Any) -> Any:
    return z[:, :, 1:] - z[:, :, :-1]  # consecutive-frame differences along the frame axis of (B, C, F, h, w)


def extract_features(model: Any, clips: Sequence[Any], t: int = 500, seed: int = 0, text: str = "caption",
                     batch: int = 4, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Per clip, flattened float32 features: M, M_ca, M_tsa, latents, residual, latents_noisy, residual_noisy."""
    import torch

    from motion_core.attention import MotionFeatureExtractor
    from motion_core.ddim import add_noise
    from motion_core.models import encode_prompt, encode_video
    from motion_core.video import frames_from_array

    if not 0 <= t < model.num_train_timesteps:
        raise ValueError(f"t must be in [0, {model.num_train_timesteps}), got {t}")
    feats: dict[str, list[np.ndarray]] = {k: [] for k, _ in ROWS if k != "random"}
    with MotionFeatureExtractor(model) as extractor, torch.no_grad():
        for start in range(0, len(clips), batch):
            chunk = clips[start:start + batch]
            z0 = torch.cat([encode_video(model, frames_from_array(c.frames)) for c in chunk])
            eps = torch.cat([_noise(z0.shape[1:], seed, start + i)[None] for i in range(len(chunk))])
            tt = torch.full((len(chunk),), t, dtype=torch.long)
            zt = add_noise(model.scheduler, z0, eps.to(z0.device), tt.to(z0.device))
            prompts = [c.caption if text == "caption" else "" for c in chunk]
            m = extractor(zt, tt.to(z0.device), encode_prompt(model, prompts).float())
            parts = {"M_ca": m.ca, "M_tsa": m.tsa, "latents": z0, "residual": _residual(z0),
                     "latents_noisy": zt, "residual_noisy": _residual(zt)}
            for k, v in parts.items():
                feats[k].append(v.reshape(len(chunk), -1).float().cpu().numpy())
            if progress is not None:
                progress(len(chunk))
    out = {k: np.concatenate(v) for k, v in feats.items() if v}
    out["M"] = np.concatenate([out["M_ca"], out["M_tsa"]], axis=1)  # raw maps, no lambdas (see module docstring)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RetrievalReport:
    ap: dict[str, float]  # mean AP per feature, fraction in [0, 1]
    settings: dict[str, Any] = field(default_factory=dict)
    motions: dict[str, int] = field(default_factory=dict)  # clips per motion label

    def to_dict(self) -> dict[str, Any]:
        return {"ap": self.ap, "settings": self.settings, "motions": self.motions, "paper_ap_percent": PAPER_AP}


def run_check(model: Any, clips: int = 120, seed: int = 0, t: int = 500, tracks: str = "gt", grid: int = 10,
              positive_fraction: float = 0.1, text: str = "caption", batch: int = 4,
              quiet: bool = True) -> RetrievalReport:
    """Render ``clips`` shapes-world clips at the model's size and compute every AP of the retrieval check."""
    from tqdm.auto import tqdm

    from motion_core.config import VideoConfig
    from shapes_world import world
    from shapes_world.retrieval import average_precision_retrieval, expected_random_ap, random_baseline_ap

    if clips < 2:
        raise ValueError("the retrieval check needs at least two clips")
    if tracks not in ("gt", "lk"):
        raise ValueError(f"tracks must be 'gt' or 'lk', got {tracks!r}")
    if text not in ("caption", "empty"):
        raise ValueError(f"text must be 'caption' or 'empty', got {text!r}")
    vd = VideoConfig.for_model(model).to_dict()
    f_n, h, w = int(vd["num_frames"]), int(vd["height"]), int(vd["width"])
    data = world.generate_dataset(clips, seed=seed, frames=f_n, height=h, width=w)
    track_fn = gt_point_tracks if tracks == "gt" else lk_point_tracks
    point_tracks = [track_fn(c, grid) for c in data]
    with tqdm(total=clips, desc="discrepancies", disable=quiet) as bar:
        disc = discrepancy_matrix(point_tracks, f_n, h, w, progress=lambda i: bar.update(1))
    with tqdm(total=clips, desc="features", disable=quiet) as bar:
        feats = extract_features(model, data, t, seed, text, batch, progress=bar.update)
    ap = {k: average_precision_retrieval(v, disc, positive_fraction) for k, v in feats.items()}
    ap["random"] = random_baseline_ap(disc, positive_fraction, seed=seed)
    k = int(min(clips - 1, max(1, round(positive_fraction * (clips - 1)))))
    settings = {"clips": clips, "seed": seed, "t": t, "tracks": tracks, "grid": grid, "text": text,
                "positive_fraction": positive_fraction, "positives_per_query": k,
                "expected_random_ap": expected_random_ap(clips - 1, k), "model": model.fingerprint(),
                "video": [f_n, h, w]}
    motions: dict[str, int] = {}
    for c in data:
        motions[c.motion] = motions.get(c.motion, 0) + 1
    return RetrievalReport({key: ap[key] for key, _ in ROWS if key in ap}, settings, dict(sorted(motions.items())))


def format_report(report: RetrievalReport) -> str:
    """A Markdown table of this run's APs beside the paper's (percent)."""
    s = report.settings
    lines = [f"Retrieval check: {s.get('clips')} shapes-world clips (seed {s.get('seed')}), noised at "
             f"t = {s.get('t')}; positives = {s.get('positives_per_query')} nearest in motion discrepancy "
             f"({s.get('tracks')} tracks, {s.get('grid')}x{s.get('grid')} grid); model {s.get('model')}.", "",
             "| feature | AP, this run (%) | AP, paper (%) |", "|---|---|---|"]
    for key, label in ROWS:
        if key in report.ap:
            paper = PAPER_AP.get(key)
            lines.append(f"| {label} | {100 * report.ap[key]:.2f} | {'-' if paper is None else f'{paper:.2f}'} |")
    exp = s.get("expected_random_ap")
    if exp is not None and math.isfinite(exp):
        lines += ["", f"Expected AP of a random ranking here: {100 * exp:.2f} %. The paper's numbers come from 139 "
                  "SVW javelin clips on Zeroscope, so only the ordering (M well above the rest) is comparable."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m shapes_world.retrieval_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=120, help="number of shapes-world clips (paper: 139; use >= 100)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clips and of the noise")
    ap.add_argument("--t", type=int, default=500, help="noise level fed to M (paper: 500)")
    ap.add_argument("--tracks", default="gt", choices=["gt", "lk"],
                    help="ground-truth point tracks (default) or the Lucas-Kanade tracker")
    ap.add_argument("--grid", type=int, default=10, help="track grid points per side")
    ap.add_argument("--positives", type=float, default=0.1, help="share of clips counted as positives (paper: 0.1)")
    ap.add_argument("--text", default="caption", choices=["caption", "empty"], help="prompt M reads each clip with")
    ap.add_argument("--batch", type=int, default=4, help="clips per extractor pass")
    ap.add_argument("--model", default=None, help="hub id or folder (default: the embedded shapes-world model)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    ap.add_argument("--out", default=None, help="also write the report as JSON here")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from motion_core.models import ModelLoadError, load_model

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.clips < 100:
        print(f"note: {args.clips} clips; the paper's check uses 139 and APs on fewer than 100 are noisy",
              file=sys.stderr)
    try:
        model = load_model(args.model, device=args.device)
        report = run_check(model, args.clips, args.seed, args.t, args.tracks, args.grid, args.positives, args.text,
                           args.batch, quiet=args.quiet)
    except (ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
