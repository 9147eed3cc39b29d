"""Tests of the shapes-world detector: centroids, colours, shapes (clean and degraded) and tracking."""

from __future__ import annotations

from collections import defaultdict

import cv2
import numpy as np
import pytest

from shapes_world import detector as D
from shapes_world import world as W


def _degrade(frame: np.ndarray, rng: np.random.Generator, blur: float = 0.8, noise: float = 8.0) -> np.ndarray:
    out = cv2.GaussianBlur(frame, (0, 0), blur).astype(np.float32)
    out += rng.normal(0.0, noise, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _accuracy(n: int, seed: int, degrade: bool) -> tuple[dict[str, float], float, float, float]:
    """Per-shape accuracy, overall shape accuracy, colour accuracy and mean centroid error on single-object frames."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = defaultdict(list)
    colour_ok: list[bool] = []
    errs: list[float] = []
    for i in range(n):
        clip = W.render(W.sample_spec(np.random.default_rng([seed, i]), n_objects=1))
        f = int(rng.integers(clip.spec.frames))
        frame = _degrade(clip.frames[f], rng) if degrade else clip.frames[f]
        dets = D.detect_objects(frame)
        obj = clip.spec.objects[0]
        if not dets:
            hits[obj.shape].append(False)
            colour_ok.append(False)
            continue
        hits[obj.shape].append(dets[0].shape == obj.shape)
        colour_ok.append(dets[0].colour == obj.colour)
        errs.append(float(np.hypot(*(np.asarray(dets[0].centroid) - clip.centroids[0, f]))))
    per_shape = {s: float(np.mean(v)) for s, v in sorted(hits.items())}
    overall = float(np.mean([h for v in hits.values() for h in v]))
    return per_shape, overall, float(np.mean(colour_ok)), float(np.mean(errs))


def test_accuracy_clean_renders() -> None:
    per_shape, overall, colour, err = _accuracy(300, seed=7, degrade=False)
    print(f"\nclean: shape {overall:.3f} per shape {per_shape}; colour {colour:.3f}; centroid err {err:.3f}px")
    assert overall >= 0.9 and min(per_shape.values()) >= 0.85
    assert colour >= 0.95
    assert err < 0.5


def test_accuracy_blur_and_noise() -> None:
    per_shape, overall, colour, err = _accuracy(200, seed=8, degrade=True)
    print(f"\nblur+noise: shape {overall:.3f} per shape {per_shape}; colour {colour:.3f}; centroid err {err:.3f}px")
    assert overall >= 0.85 and colour >= 0.9 and err < 1.0


@pytest.mark.parametrize("motion", W.MOTIONS)
def test_track_matches_ground_truth(motion: str) -> None:
    for seed in range(2):
        clip = W.render(W.sample_spec(np.random.default_rng([55, seed]), motion=motion, n_objects=1))
        tr = D.track(clip.frames)
        obj = clip.spec.objects[0]
        assert tr.coherent and tr.found.all()
        assert tr.colour == obj.colour and tr.shape == obj.shape
        err = np.hypot(*(tr.centroids - clip.centroids[0]).T)
        assert err.max() < 1.0, (motion, err.max())
        if motion == "zoom_in":
            assert tr.scales[-1] > 1.4 * tr.scales[0]
        if motion == "zoom_out":
            assert tr.scales[0] > 1.4 * tr.scales[-1]


def test_pan_track_is_nonzero() -> None:
    clip = W.render(W.make_spec("star", "yellow", "striped", "blue", "pan_right", speed="fast", seed=3))
    tr = D.track(clip.frames)
    assert tr.coherent
    moved = tr.centroids[-1] - tr.centroids[0]
    assert moved[0] < -20 and abs(moved[1]) < 1.0  # camera right -> content left
    assert np.abs(clip.camera[-1]).sum() > 20


def test_pairs_detect_both_objects() -> None:
    ok = 0
    for i in range(40):
        clip = W.render(W.sample_spec(np.random.default_rng([11, i]), n_objects=2))
        f = 0
        want = sorted((o.colour, o.shape) for o in clip.spec.objects)
        got = sorted((d.colour, d.shape) for d in D.detect_objects(clip.frames[f]))
        ok += got == want
        tr = D.track(clip.frames, colour=clip.spec.objects[1].colour, classify=False)
        visible = clip.masks[1].sum(axis=(1, 2)) > 0.8 * clip.masks[1].sum(axis=(1, 2)).max()
        err = np.hypot(*(tr.centroids - clip.centroids[1]).T)[visible]
        assert np.nanmax(err) < 1.5
    assert ok >= 36


def test_dominant_colour_and_hint() -> None:
    clip = W.render(W.make_spec("cross", "purple", "dotted", "white", "bounce", seed=4))
    assert D.dominant_colour(clip.frames) == "purple"
    assert D.dominant_colour(clip.frames, mask=clip.masks[0]) == "purple"
    assert D.dominant_colour(clip.frames[0]) == "purple"
    dets = D.detect_objects(clip.frames[5], bg_hint="white")
    assert len(dets) == 1 and dets[0].colour == "purple" and dets[0].shape == "cross"
    blank = np.full((16, 64, 64, 3), 115, dtype=np.uint8)
    assert D.dominant_colour(blank) == "none"
    tr = D.track(blank)
    assert not tr.coherent and not tr.found.any() and np.isnan(tr.centroids).all()


def test_incoherent_clip_is_flagged() -> None:
    clip = W.render(W.make_spec("circle", "red", "plain", "grey", "right", seed=1))
    frames = clip.frames.copy()
    frames[8] = frames[0]  # the object jumps back: still one object per frame, so coherent
    assert D.track(frames).coherent
    frames[5] = np.full_like(frames[5], frames[5][0, 0])  # the object disappears in one frame
    tr = D.track(frames)
    assert not tr.coherent and tr.found.sum() == 15
    frames = clip.frames.copy()
    mask = clip.masks[0, 3]
    frames[3][np.roll(mask, 30, axis=1)] = frames[3][mask]  # a second red object in one frame
    tr = D.track(frames)
    assert not tr.coherent and tr.counts[3] == 2


def test_classify_shape_on_ideal_masks() -> None:
    for shape in W.SHAPES:
        for radius in (7.0, 12.0, 20.0):
            alpha = W.rasterize(shape, 31.3, 30.8, radius, 17.0, 64, 64)
            assert D.classify_shape(alpha) == shape, (shape, radius)
    assert D.classify_shape(np.zeros((10, 10), np.float32)) == "unknown"


def test_background_colour_on_ground_truth_clips() -> None:
    """Every background kind and colour, one or two objects, clean and blurred + noisy: the caption's colour wins."""
    rng = np.random.default_rng(11)
    ok, n = {False: 0, True: 0}, 120
    for i in range(n):
        clip = W.render(W.sample_spec(np.random.default_rng([11, i]), frames=4))
        for degrade in (False, True):
            frames = np.stack([_degrade(f, rng) for f in clip.frames]) if degrade else clip.frames
            ok[degrade] += D.background_colour(frames) == clip.spec.bg_colour
    assert ok[False] == n  # clean renders: always right
    assert ok[True] >= 0.97 * n
    assert D.background_colour(np.full((8, 8, 3), W.BG_COLOURS["brown"], np.uint8)) == "brown"  # one frame works too
