"""Tests of the procedural shapes world: determinism, ground truth, trajectories, captions, backgrounds, speed."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from shapes_world import world as W
from shapes_world import world_specs


def _single(motion: str, seed: int = 0, **kw: object) -> W.Clip:
    return W.render(W.sample_spec(np.random.default_rng([101, seed]), motion=motion, n_objects=1, **kw))


def test_tables() -> None:
    assert len(W.SHAPES) >= 5 and {"circle", "square", "triangle", "star"} <= set(W.SHAPES)
    assert len(W.COLOURS) >= 6 and len(W.BG_COLOURS) >= 5
    assert {"plain", "gradient", "striped", "dotted", "checkered", "mottled"} == set(W.BACKGROUNDS)
    names = list(W.COLOURS)
    rgb = np.asarray([W.COLOURS[c] for c in names], dtype=float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(names)) * 1e9
    assert d.min() > 90, "object colours must be distinguishable"
    for b in W.BG_COLOURS:
        assert sum(W.compatible(c, b) for c in W.COLOURS) >= 5
    assert not W.compatible("blue", "blue") and not W.compatible("white", "white")
    expected = ("static", "left", "up_right", "orbit_cw", "zigzag_left", "bounce", "zoom_in", "rotate_cw", "pan_up")
    assert set(expected) <= set(W.MOTIONS)


def test_clip_shapes_and_dtypes() -> None:
    clip = W.render(W.make_spec("star", "red", "striped", "grey", "orbit_cw", frames=12, height=48, width=80))
    assert clip.frames.shape == (12, 48, 80, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (1, 12, 48, 80) and clip.masks.dtype == bool
    assert clip.centroids.shape == (1, 12, 2) and clip.scales.shape == (1, 12) and clip.angles.shape == (1, 12)
    assert clip.camera.shape == (12, 2)
    assert clip.caption == "a red star on a striped grey background"
    assert clip.motion_caption == "a red star circling clockwise on a striped grey background"
    assert clip.masks.sum(axis=(2, 3)).min() > 50


def test_deterministic_and_independent_of_n() -> None:
    a = W.generate_dataset(6, seed=3)
    b = W.generate_dataset(6, seed=3)
    c = W.generate_dataset(3, seed=3)
    d = W.generate_dataset(6, seed=4)
    for x, y in zip(a, b):
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.masks, y.masks) and x.caption == y.caption
    for x, y in zip(a[:3], c):
        assert np.array_equal(x.frames, y.frames)
    assert not all(np.array_equal(x.frames, y.frames) for x, y in zip(a, d))
    s1 = W.make_spec("square", "green", "dotted", "black", "right", seed=9)
    s2 = W.make_spec("square", "green", "dotted", "black", "right", seed=9)
    assert np.array_equal(W.render(s1).frames, W.render(s2).frames)


def test_ground_truth_centroid_is_mask_centroid() -> None:
    for i, motion in enumerate(W.MOTIONS):
        for seed in range(3):
            clip = _single(motion, seed=10 * i + seed)
            for f in range(clip.spec.frames):
                ys, xs = np.nonzero(clip.masks[0, f])
                err = np.hypot(xs.mean() - clip.centroids[0, f, 0], ys.mean() - clip.centroids[0, f, 1])
                assert err < 0.8, (motion, f, err)  # binary-mask quantisation (a whole edge row at alpha 0.49)
                # the anti-aliased coverage has exactly the ground-truth centroid
                o = clip.spec.objects[0]
                a = W.rasterize(o.shape, *clip.centroids[0, f], clip.scales[0, f], clip.angles[0, f], 64, 64)
                gy, gx = np.mgrid[:64, :64]
                soft = np.array([(a * gx).sum(), (a * gy).sum()]) / a.sum()
                assert np.hypot(*(soft - clip.centroids[0, f])) < 0.15  # 4x4 supersampling
                # the mask area matches the shape's scale (circumradius) roughly
                area = clip.masks[0, f].sum()
                r = clip.scales[0, f]
                assert 0.3 * r**2 < area < np.pi * (r + 0.5) ** 2


def test_objects_stay_inside_and_are_big_enough() -> None:
    for i, clip in enumerate(W.generate_dataset(150, seed=11)):
        m = clip.masks
        assert not (m[..., 0, :].any() or m[..., -1, :].any() or m[..., :, 0].any() or m[..., :, -1].any()), i
        assert clip.scales.min() >= 6.0
        for obj in clip.spec.objects:
            assert W.compatible(obj.colour, clip.spec.bg_colour)


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask plus its anti-aliased rim."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _shoelace(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


@pytest.mark.parametrize("motion", W.MOTIONS)
def test_trajectory_kind(motion: str) -> None:
    for seed in range(4):
        clip = _single(motion, seed=seed)
        c, s, a = clip.centroids[0], clip.scales[0], clip.angles[0]
        dx, dy = np.diff(c[:, 0]), np.diff(c[:, 1])
        if motion in W.DIRECTIONS or motion in W.PANS:
            ux, uy = W.DIRECTIONS[motion.split("_", 1)[1] if motion in W.PANS else motion]
            if motion in W.PANS:  # the content moves opposite to the camera
                ux, uy = -ux, -uy
                cam = np.diff(clip.camera, axis=0)
                assert np.all(np.abs(cam).sum(1) > 0.5)
            for d, u in ((dx, ux), (dy, uy)):
                if u == 0:
                    assert np.allclose(d, 0)
                else:
                    assert np.all(np.sign(d) == np.sign(u)) and abs(d.sum()) > 8
            assert np.allclose(s, s[0]) and np.allclose(a, a[0])
        elif motion.startswith("orbit"):
            assert np.hypot(*(c[-1] - c[0])) < 1e-6  # returns to its start
            assert np.ptp(c[:, 0]) > 10 and np.ptp(c[:, 1]) > 10
            area = _shoelace(c[:-1])  # y points down: screen-clockwise gives a positive sum
            assert (area > 0) == (motion == "orbit_cw")
        elif motion.startswith("zigzag"):
            sign = -1 if motion == "zigzag_left" else 1
            assert np.all(np.sign(dx) == sign) and abs(dx.sum()) > 8
            assert np.sum(np.diff(np.sign(dy[np.abs(dy) > 1e-9])) != 0) >= 2  # y goes up and down repeatedly
        elif motion == "bounce":
            flips_x = np.sum(np.diff(np.sign(dx)) != 0)
            flips_y = np.sum(np.diff(np.sign(dy)) != 0)
            assert flips_x + flips_y >= 1  # hits a wall at least once
            assert np.all(np.hypot(dx, dy) > 0.5)
        elif motion == "zoom_in":
            assert np.all(np.diff(s) > 0) and s[-1] / s[0] > 1.4
            assert np.allclose(c, c[0])
            assert clip.masks[0, -1].sum() > 1.8 * clip.masks[0, 0].sum()
        elif motion == "zoom_out":
            assert np.all(np.diff(s) < 0) and s[0] / s[-1] > 1.4
        elif motion.startswith("rotate"):
            assert clip.spec.objects[0].shape in W.ROTATABLE
            da = np.diff(a)
            assert np.all(da < 0) if motion == "rotate_cw" else np.all(da > 0)
            assert abs(a[-1] - a[0]) >= 90 and np.allclose(c, c[0])
            assert not np.array_equal(clip.masks[0, 0], clip.masks[0, -1])
        else:
            assert motion == "static" and np.allclose(c, c[0]) and np.allclose(s, s[0])
            assert np.array_equal(clip.frames[0], clip.frames[-1])


def test_rotation_refused_for_circle() -> None:
    with pytest.raises(ValueError):
        W.make_spec("circle", "red", motion="rotate_cw")
    with pytest.raises(ValueError):
        W.make_spec("square", "blue", bg_colour="blue")
    with pytest.raises(ValueError):
        W.make_spec("square", "red", motion="teleport")


def test_pan_moves_background_and_object_together() -> None:
    spec = W.make_spec("circle", "red", "mottled", "grey", "pan_left", speed="fast", seed=2)
    clip = W.render(spec)
    assert clip.spec.camera == "pan_left"
    shift = clip.camera[-1] - clip.camera[0]
    assert shift[0] < -20 and shift[1] == 0
    # the object appears to move right by the camera shift
    assert np.allclose(clip.centroids[0, -1] - clip.centroids[0, 0], -shift)
    # the background moves too: phase correlation of the first and last frames finds the same shift
    a = cv2.cvtColor(clip.frames[0], cv2.COLOR_RGB2GRAY).astype(np.float64)
    b = cv2.cvtColor(clip.frames[-1], cv2.COLOR_RGB2GRAY).astype(np.float64)
    (sx, sy), _ = cv2.phaseCorrelate(a, b)
    assert abs(sx - (-shift[0])) < 1.5 and abs(sy) < 1.5, (sx, sy, shift)
    # and a static camera keeps the background still
    still = W.render(W.make_spec("circle", "red", "mottled", "grey", "right", seed=2))
    outside = ~(_grow(still.masks[0, 0]) | _grow(still.masks[0, -1]))
    assert np.array_equal(still.frames[0][outside], still.frames[-1][outside])


def test_backgrounds_render_patterns() -> None:
    for bg in W.BACKGROUNDS:
        clip = W.render(W.make_spec("triangle", "yellow", bg, "blue", "static", seed=5))
        outside = ~_grow(clip.masks[0, 0])
        std = clip.frames[0][outside].astype(float).std(axis=0).max()
        assert (std < 1e-6) if bg == "plain" else (std > 5), (bg, std)


def test_pairs_move_differently() -> None:
    n = 0
    for i in range(20):
        spec = W.sample_spec(np.random.default_rng([7, i]), n_objects=2)
        assert len(spec.objects) == 2
        a, b = spec.objects
        assert a.colour != b.colour and a.shape != b.shape
        if spec.camera == "static":
            assert a.motion != b.motion
        n += not world_specs._overlaps(a, b, spec.frames)
    assert n >= 16  # placement avoids collisions almost always
    clip = W.render(W.make_spec("star", "red", "plain", "grey", "left", pair_with=("circle", "blue", "down")))
    assert clip.masks.shape[0] == 2 and "and a blue circle moving down" in clip.motion_caption


def test_captions_roundtrip_and_vocabulary() -> None:
    assert len(W.VOCABULARY) < 100
    vocab = set(W.VOCABULARY)
    rng = np.random.default_rng(0)
    for _ in range(300):
        spec = W.sample_spec(rng)
        for with_motion in (False, True):
            text = W.caption(spec, with_motion)
            assert set(text.split()) <= vocab, text
            p = W.parse_caption(text)
            assert p["shape"] == spec.objects[0].shape and p["colour"] == spec.objects[0].colour, text
            assert p["background"] == spec.background and p["bg_colour"] == spec.bg_colour, text
            assert len(p["objects"]) == len(spec.objects)
            assert p["motion"] == (spec.motion if with_motion else None), text
    p = W.parse_caption("A green star on a dotted grey background.")
    assert (p["shape"], p["colour"], p["background"], p["bg_colour"]) == ("star", "green", "dotted", "grey")
    p = W.parse_caption("an orange cross quickly moving up and left on a checkered dark green background")
    assert p["bg_colour"] == "dark green" and p["motion"] == "up_left" and p["colour"] == "orange"
    assert W.caption(W.make_spec("cross", "orange")) == "an orange cross on a plain grey background"


def test_generation_speed() -> None:
    t0 = time.perf_counter()
    clips = W.generate_dataset(100, seed=1)
    dt = time.perf_counter() - t0
    assert len(clips) == 100 and dt < 15.0, dt  # ~1000 clips in well under a minute
