"""Tests for motion_core.eval: metrics with hand-computed answers, the LK tracker on synthetic video."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from motion_core.eval import (
    MetricUnavailable,
    clip_scores,
    clip_t_from_embeddings,
    cotracker_available,
    cotracker_tracks,
    frame_consistency_from_embeddings,
    get_tracker,
    imagereward_score,
    lk_tracks,
    motion_discrepancy,
    trajectory_distance,
    video_motion_discrepancy,
)

# ----------------------------------------------------------------------------------------------------------------
# motion discrepancy
# ----------------------------------------------------------------------------------------------------------------


def _random_tracks(n: int, f: int, seed: int, spread: float = 1000.0) -> np.ndarray:
    """Tracks far apart from each other (start points on a coarse lattice) with small random wiggles."""
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n))
    starts = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * spread
    return starts[:, None, :] + rng.normal(0, 2.0, (n, f, 2)).cumsum(axis=1)


@pytest.mark.parametrize("n", [1, 7])
def test_motion_discrepancy_identical_is_zero(n: int) -> None:
    tracks = _random_tracks(n, 16, seed=n)
    assert motion_discrepancy(tracks, tracks.copy(), 16, 256, 256) == 0.0


@pytest.mark.parametrize("n", [1, 9])
def test_motion_discrepancy_shifted_copy_exact(n: int) -> None:
    f, h, w, dx, dy = 16, 64, 96, 3.0, -4.0
    ref = _random_tracks(n, f, seed=3)
    gen = ref + np.array([dx, dy])
    # Each track's nearest neighbour is its own shifted copy (tracks are ~1000 px apart), at squared Frobenius
    # distance F (dx^2 + dy^2) = 16 * 25 = 400, in both directions:
    # C * (400 + 400) with C = 1 / (2 F H W)  =>  (dx^2 + dy^2) / (H W) = 25 / 6144.
    expected = (2 * f * (dx**2 + dy**2)) / (2 * f * h * w)
    assert expected == pytest.approx(25.0 / 6144.0)
    assert motion_discrepancy(gen, ref, f, h, w) == pytest.approx(expected, rel=1e-12)
    # torch inputs work the same
    assert motion_discrepancy(torch.from_numpy(gen), torch.from_numpy(ref), f, h, w) == pytest.approx(expected)


def test_motion_discrepancy_symmetric_and_unequal_counts() -> None:
    f, h, w = 4, 10, 20
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 20, (5, f, 2))
    b = rng.uniform(0, 20, (3, f, 2))
    assert motion_discrepancy(a, b, f, h, w) == pytest.approx(motion_discrepancy(b, a, f, h, w), rel=1e-12)

    # Hand-computed N != N_hat case, F = 1: gen = {(0,0), (10,0)}, ref = {(1,0)}.
    gen = np.array([[[0.0, 0.0]], [[10.0, 0.0]]])
    ref = np.array([[[1.0, 0.0]]])
    # gen -> ref: min distances 1 and 81, mean 41; ref -> gen: min 1, mean 1; C = 1 / (2 * 1 * 10 * 20) = 1/400
    assert motion_discrepancy(gen, ref, 1, h, w) == pytest.approx((41.0 + 1.0) / 400.0)
    assert motion_discrepancy(ref, gen, 1, h, w) == pytest.approx((41.0 + 1.0) / 400.0)


def test_motion_discrepancy_chunked_matches_bruteforce(monkeypatch: pytest.MonkeyPatch) -> None:
    from motion_core.eval import metrics

    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 64, (40, 6, 2)), rng.uniform(0, 64, (25, 6, 2))
    d2 = ((a[:, None] - b[None]) ** 2).sum(axis=(2, 3))
    expected = (d2.min(1).mean() + d2.min(0).mean()) / (2 * 6 * 64 * 64)
    monkeypatch.setattr(metrics, "_CHAMFER_CHUNK_ELEMS", 100)  # force many small chunks
    assert metrics.motion_discrepancy(a, b, 6, 64, 64) == pytest.approx(expected, rel=1e-12)


def test_motion_discrepancy_rejects_bad_shapes() -> None:
    t = np.zeros((3, 5, 2))
    with pytest.raises(ValueError):
        motion_discrepancy(t, np.zeros((3, 4, 2)), 5, 8, 8)
    with pytest.raises(ValueError):
        motion_discrepancy(t, t, 4, 8, 8)
    with pytest.raises(ValueError):
        motion_discrepancy(np.zeros((0, 5, 2)), t, 5, 8, 8)


# ----------------------------------------------------------------------------------------------------------------
# trajectory distance
# ----------------------------------------------------------------------------------------------------------------


def test_trajectory_distance() -> None:
    a = np.stack([np.arange(5.0) * 4, np.full(5, 10.0)], axis=1)
    assert trajectory_distance(a, a, 64) == 0.0
    # offset (3, 4) px in every frame: 5 px / 100 px
    assert trajectory_distance(a, a + [3.0, 4.0], 100) == pytest.approx(0.05)
    # (height, width) = (40, 30): offset (3, 4) -> (0.1, 0.1) in frame units
    assert trajectory_distance(a, a + [3.0, 4.0], (40, 30)) == pytest.approx(math.sqrt(0.02))
    # relative=True ignores a constant offset
    assert trajectory_distance(a, a + [3.0, 4.0], 100, relative=True) == pytest.approx(0.0)
    # scale term: mean |log ratio|; a 2x zoom mismatch in every frame adds log 2
    s = np.linspace(1.0, 2.0, 5)
    assert trajectory_distance(a, a, 64, scales_a=s, scales_b=2 * s) == pytest.approx(math.log(2.0))
    assert trajectory_distance(a, a, 64, scales_a=2 * s, scales_b=s) == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError):
        trajectory_distance(a, a, 64, scales_a=s)


# ----------------------------------------------------------------------------------------------------------------
# CLIP maths and loading
# ----------------------------------------------------------------------------------------------------------------


def test_clip_t_from_embeddings_known_answer() -> None:
    text = np.array([1.0, 0.0])
    # cosines with the text: 1, 0, cos 60 deg = 0.5, -1 ; norms differ on purpose
    frames = np.array([[3.0, 0.0], [0.0, 2.0], [0.5, math.sqrt(3) / 2], [-7.0, 0.0]])
    assert clip_t_from_embeddings(text, frames) == pytest.approx(100 * (1 + 0 + 0.5 - 1) / 4)
    assert clip_t_from_embeddings(torch.tensor([[2.0, 0.0]]), torch.tensor(frames)) == pytest.approx(12.5)


def test_frame_consistency_from_embeddings_known_answer() -> None:
    angles = np.deg2rad([0.0, 60.0, 150.0])  # consecutive angles 60 and 90 deg -> cos 0.5 and 0
    frames = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1.0], [5.0], [0.2]])
    assert frame_consistency_from_embeddings(frames) == pytest.approx(100 * (0.5 + 0.0) / 2)
    same = np.tile(np.array([[0.3, -1.2, 2.0]]), (6, 1))
    assert frame_consistency_from_embeddings(same) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        frame_consistency_from_embeddings(same[:1])


def test_clip_scores_missing_weights_raise_metric_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_clip_dir"
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(MetricUnavailable, match="no_such_clip_dir"):
        clip_scores(frames, "a dog", model_dir_or_id=str(missing))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(MetricUnavailable, match="not available locally"):
        clip_scores(frames, "a dog", model_dir_or_id=str(empty))
    assert issubclass(MetricUnavailable, RuntimeError)


def _tiny_clip() -> tuple[object, object]:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    common = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    text_cfg = {**common, "vocab_size": 8, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 2}
    vision_cfg = {**common, "image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=16)).eval()
    tokenizer = CLIPTokenizer()
    tokenizer.model_max_length = 16
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def test_clip_scores_end_to_end_tiny_model(tmp_path: Path) -> None:
    model, processor = _tiny_clip()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)

    # reference: embeddings computed by hand, scored with the pure functions
    with torch.no_grad():
        t_in = processor(text=["a dog runs"], return_tensors="pt", padding=True)
        text = model.get_text_features(input_ids=t_in["input_ids"], attention_mask=t_in["attention_mask"])
        pix = processor(images=list(frames), return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pix)
    text = getattr(text, "pooler_output", text)[0].numpy()
    img = getattr(img, "pooler_output", img).numpy()

    direct = clip_scores(frames, "a dog runs", model=model, processor=processor, batch_size=2)
    assert direct["clip_t"] == pytest.approx(clip_t_from_embeddings(text, img), abs=1e-4)
    assert direct["frame_consistency"] == pytest.approx(frame_consistency_from_embeddings(img), abs=1e-4)
    assert -100.0 <= direct["clip_t"] <= 100.0

    # full loading path from a local directory (local_files_only)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = clip_scores(torch.from_numpy(frames), "a dog runs", model_dir_or_id=str(tmp_path))
    assert loaded["clip_t"] == pytest.approx(direct["clip_t"], abs=1e-4)
    assert loaded["frame_consistency"] == pytest.approx(direct["frame_consistency"], abs=1e-4)
    assert loaded["clip_model"] == str(tmp_path)


def test_imagereward_unavailable_is_explained(tmp_path: Path) -> None:
    with pytest.raises(MetricUnavailable, match="ImageReward"):
        imagereward_score(np.zeros((1, 8, 8, 3), dtype=np.uint8), "a dog", download_root=str(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# trackers
# ----------------------------------------------------------------------------------------------------------------


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    t = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 1.5)
    return (t - t.min()) / (t.max() - t.min()) * 255.0


def _to_video(gray_frames: list[np.ndarray]) -> np.ndarray:
    return np.clip(np.rint(np.stack(gray_frames)), 0, 255).astype(np.uint8)[..., None].repeat(3, axis=-1)


def _moving_square_video(
    num_frames: int, dx: int, dy: int, x0: int = 8, y0: int = 10, side: int = 24, size: int = 64, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg, obj = _texture(size, size, rng), _texture(side, side, rng)
    frames = []
    for f in range(num_frames):
        im = bg.copy()
        im[y0 + dy * f : y0 + dy * f + side, x0 + dx * f : x0 + dx * f + side] = obj
        frames.append(im)
    return _to_video(frames)


def test_lk_recovers_known_translation_and_static_background() -> None:
    # 64x64 video, textured 28 px square moving (2, 1) px per frame over a static textured background.
    # Points are judged only when their 17 px LK window lies entirely on the square / entirely on the background.
    num_frames, dx, dy, x0, y0, side, margin = 8, 2, 1, 6, 6, 28, 8
    video = _moving_square_video(num_frames, dx, dy, x0=x0, y0=y0, side=side)
    tracks, valid = lk_tracks(video, grid=32)
    assert tracks.shape == (1024, num_frames, 2) and valid.shape == (1024,) and valid.dtype == bool

    p0 = tracks[:, 0]
    on_square = (
        (p0[:, 0] > x0 + margin) & (p0[:, 0] < x0 + side - margin)
        & (p0[:, 1] > y0 + margin) & (p0[:, 1] < y0 + side - margin)
    )  # fmt: skip
    x_end, y_end = x0 + dx * (num_frames - 1) + side, y0 + dy * (num_frames - 1) + side
    background = (p0[:, 0] > x_end + margin) | (p0[:, 1] > y_end + margin)  # never near the square
    assert on_square.sum() >= 25 and background.sum() >= 100
    assert valid[on_square].all() and valid[background].mean() > 0.85

    step = np.diff(tracks[on_square], axis=1)  # per-frame displacement
    assert np.allclose(step.mean(axis=(0, 1)), [dx, dy], atol=0.5)
    total = tracks[on_square, -1] - tracks[on_square, 0]
    assert np.allclose(total.mean(axis=0), [dx * (num_frames - 1), dy * (num_frames - 1)], atol=0.5)

    still = tracks[background & valid]
    assert np.abs(still - still[:, :1]).max() < 0.5


def test_lk_forward_backward_drops_vanishing_region() -> None:
    rng = np.random.default_rng(3)
    bg = _texture(64, 64, rng)
    frames = []
    for f in range(8):
        im = bg.copy()
        if f >= 2:  # the bottom-right quarter's content vanishes: replaced by unrelated texture every frame
            im[32:, 32:] = _texture(32, 32, rng)
        frames.append(im)
    tracks, valid = lk_tracks(_to_video(frames), grid=16, fb_threshold=1.0)
    p0 = tracks[:, 0]
    region = (p0[:, 0] > 36) & (p0[:, 1] > 36)
    far = (p0[:, 0] < 24) | (p0[:, 1] < 24)
    assert region.sum() >= 40
    assert (~valid[region]).mean() > 0.9
    assert valid[far].mean() > 0.85


def test_lk_single_frame_and_float_input() -> None:
    video = _moving_square_video(1, 0, 0)
    tracks, valid = lk_tracks(video, grid=4)
    assert tracks.shape == (16, 1, 2) and valid.all()
    video = _moving_square_video(3, 1, 0)
    t_uint8, _ = lk_tracks(video, grid=4)
    t_float, _ = lk_tracks(video.astype(np.float32) / 255.0, grid=4)
    assert np.allclose(t_uint8, t_float, atol=1e-3)


def test_video_motion_discrepancy_names_tracker() -> None:
    ref = _moving_square_video(6, 2, 0)
    same = video_motion_discrepancy(ref, ref, tracker="lk", grid=8)
    assert same["tracker"] == "lk" and same["motion_discrepancy"] == 0.0
    other = video_motion_discrepancy(_moving_square_video(6, -2, 1, x0=30), ref, tracker="lk", grid=8)
    assert other["motion_discrepancy"] > 0.0 and other["num_tracks_gen"] > 0


def test_get_tracker_and_cotracker_unavailable(tmp_path: Path) -> None:
    missing = {"repo_dir": str(tmp_path / "co-tracker"), "checkpoint": str(tmp_path / "scaled_offline.pth")}
    assert not cotracker_available(**missing)
    name, fn = get_tracker("auto", fb_threshold=0.5, **missing)
    assert name == "lk" and fn.keywords == {"fb_threshold": 0.5}
    tracks, _ = fn(_moving_square_video(3, 1, 0), grid=4)
    assert tracks.shape == (16, 3, 2)
    assert get_tracker("lk")[0] == "lk"
    with pytest.raises(MetricUnavailable, match="CoTracker3"):
        get_tracker("cotracker3", **missing)
    with pytest.raises(MetricUnavailable, match="scaled_offline.pth"):
        cotracker_tracks(np.zeros((2, 8, 8, 3), dtype=np.uint8), **missing)
    with pytest.raises(ValueError):
        get_tracker("raft")


_FAKE_HUBCONF = """
import torch


class _Predictor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(2, 2)

    def forward(self, video, grid_size=10):
        b, t, _, h, w = video.shape
        ys, xs = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
        pts = torch.stack([xs.flatten(), ys.flatten()], -1).float() + self.model.bias  # (N, 2)
        tracks = pts[None, None].repeat(b, t, 1, 1) + torch.arange(t).view(1, t, 1, 1)
        return tracks, torch.ones(b, t, pts.shape[0], dtype=torch.bool)


def cotracker3_offline(pretrained=True, **kwargs):
    assert not pretrained
    return _Predictor()
"""


def test_cotracker_local_loading_plumbing(tmp_path: Path) -> None:
    """A stand-in hub repo checks the local torch.hub loading, checkpoint loading and output layout."""
    repo = tmp_path / "co-tracker"
    repo.mkdir()
    (repo / "hubconf.py").write_text(_FAKE_HUBCONF)
    ckpt = tmp_path / "scaled_offline.pth"
    torch.save({"weight": torch.eye(2), "bias": torch.tensor([0.5, 0.25])}, ckpt)
    assert cotracker_available(str(repo), str(ckpt))
    name, fn = get_tracker("auto", repo_dir=str(repo), checkpoint=str(ckpt), fb_threshold=2.0, device="cpu")
    assert name == "cotracker3"
    tracks, valid = fn(np.zeros((4, 16, 16, 3), dtype=np.uint8), grid=3)
    assert tracks.shape == (9, 4, 2) and valid.all()
    assert np.allclose(tracks[4, :, 0], 1.5 + np.arange(4)) and np.allclose(tracks[4, :, 1], 1.25 + np.arange(4))


def test_cotracker_checkpoint_is_loaded_as_data_only(tmp_path, monkeypatch):
    """A checkpoint that is a code-running pickle is refused, and its code never runs (weights_only=True)."""
    import pickle
    import types

    from motion_core.eval import trackers

    # torch >= 2.6 defaults to weights_only=True; this setting (or an older torch) turns that default off, so only
    # an explicit weights_only=True at the call keeps the payload from running.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "scaled_offline.pth"
    torch.save({"w": Payload()}, ckpt)
    loaded = []
    fake = types.SimpleNamespace(model=types.SimpleNamespace(load_state_dict=loaded.append))
    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: fake)
    with pytest.raises(pickle.UnpicklingError):
        trackers._load_cotracker.__wrapped__(str(tmp_path), str(ckpt), "cpu")
    assert not marker.exists() and not loaded
