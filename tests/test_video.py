"""Tests for motion_core.video on real files made here with the ffmpeg that imageio-ffmpeg ships."""

from __future__ import annotations

import re
import stat
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from motion_core.config import VideoConfig
from motion_core.video import (
    CorruptVideoError,
    EmptyVideoError,
    NotAVideoError,
    VideoError,
    VideoTooLargeError,
    VideoTooShortError,
    VideoWriteError,
    frames_from_array,
    probe_video,
    read_video,
    to_uint8,
    write_gif,
    write_mp4,
)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
STEP = 4  # grey level per source frame in the index clips; big enough to survive lossy coding


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", *args], input=stdin, check=True)


def encode(path: Path, frames: np.ndarray, fps: float, *codec: str) -> Path:
    """Encode uint8 frames (F, H, W, 3) at a constant fps."""
    _, h, w, _ = frames.shape
    ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", str(fps), "-i", "pipe:0",
           *codec, str(path), stdin=np.ascontiguousarray(frames).tobytes())
    return path


H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
H264_LOSSLESS = ("-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv444p")


def index_clip(path: Path, n: int, fps: float, w: int = 64, h: int = 48,
               codec: tuple[str, ...] = H264_LOSSLESS) -> Path:
    """Frame i is flat grey STEP * i, so the frame index can be read back from the brightness."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[:] = (np.arange(n) * STEP).astype(np.uint8)[:, None, None, None]
    return encode(path, frames, fps, *codec)


def indices(video: torch.Tensor) -> list[int]:
    return [round(v * 255 / STEP) for v in video.mean(dim=(1, 2, 3)).tolist()]


def small(**kw: object) -> VideoConfig:
    """Small output frames keep the tests fast; the reading logic does not depend on the size."""
    base: dict[str, object] = {"height": 16, "width": 16}
    base.update(kw)
    cfg = VideoConfig(**base)  # type: ignore[arg-type]
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    index_clip(d / "idx24.mp4", 60, 24)  # 2.5 s
    # Other containers store time differently (WebM/MKV in milliseconds, AVI in frame counts).
    index_clip(d / "idx24.webm", 60, 24, codec=("-c:v", "libvpx-vp9", "-lossless", "1", "-deadline", "realtime",
                                               "-cpu-used", "8"))
    index_clip(d / "idx24.mkv", 60, 24)
    index_clip(d / "idx24.avi", 60, 24, codec=("-c:v", "ffv1"))
    # GIF stores delays in centiseconds, so 8 fps becomes frames at 0, 0.13, 0.25, 0.38 ... s.
    index_clip(d / "idx8.gif", 24, 8, codec=("-vf", "split[a][b];[a]palettegen[p];[b][p]paletteuse"))
    # Variable frame rate: a 0.25 s hold after frame 9 (frame i >= 10 is shown at (i + 6) / 24 s).
    index_clip(d / "vfr.mp4", 48, 24, codec=("-vf", "setpts='N+6*gte(N,10)'", "-fps_mode", "passthrough",
                                            *H264_LOSSLESS))
    index_clip(d / "idx30.mp4", 60, 30)  # 2.0 s
    index_clip(d / "short.mp4", 24, 24)  # 1.0 s
    return d


# ------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "ext, codec",
    [
        ("mp4", H264),
        ("mov", H264),
        ("webm", ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k")),
        ("mkv", H264),
        ("avi", ("-c:v", "mpeg4", "-q:v", "3")),
        ("gif", ()),
    ],
)
def test_reads_every_container(tmp_path: Path, ext: str, codec: tuple[str, ...]) -> None:
    path = tmp_path / f"clip.{ext}"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=24:duration=2.5", *codec, str(path))
    video = read_video(path, small(height=32, width=48))
    assert video.shape == (16, 3, 32, 48)
    assert video.dtype == torch.float32
    assert 0.0 <= float(video.min()) and float(video.max()) <= 1.0
    assert float(video.std()) > 0.1  # real picture content, not a blank
    assert not torch.equal(video[0], video[-1])  # testsrc moves, so time advanced

    info = probe_video(path)
    assert (info.width, info.height) == (160, 120)
    assert info.duration_sec == pytest.approx(2.5, abs=0.1)


def test_odd_file_names(clips: Path, tmp_path: Path) -> None:
    # ffmpeg would read "name:..." as a protocol; the module must treat every path as a plain file.
    odd = tmp_path / "my clip: take 1 (final).mp4"
    odd.write_bytes((clips / "idx24.mp4").read_bytes())
    assert indices(read_video(odd, small(num_frames=4))) == [0, 3, 6, 9]
    out = write_gif(read_video(odd, small(num_frames=4)), tmp_path / "out: 1.gif")
    assert probe_video(out).codec == "gif"


def test_too_short_video_with_longer_audio(tmp_path: Path) -> None:
    # The container's duration covers the 3 s audio; the message must report the 1 s of video.
    path = tmp_path / "av.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=24:duration=1", "-f", "lavfi", "-i", "sine=duration=3",
           *H264, "-c:a", "aac", str(path))
    assert probe_video(path).duration_sec == pytest.approx(3.0, abs=0.1)
    with pytest.raises(VideoTooShortError, match=r"only 1.00 s long") as exc:
        read_video(path, small())
    assert "loop" in str(exc.value)


def test_default_config_shape(clips: Path) -> None:
    video = read_video(clips / "idx24.mp4")
    assert video.shape == (16, 3, 384, 384)


def test_probe(clips: Path) -> None:
    info = probe_video(clips / "idx24.mp4")
    assert (info.width, info.height, info.codec) == (64, 48, "h264")
    assert info.fps == pytest.approx(24)
    assert info.duration_sec == pytest.approx(2.5, abs=0.01)
    assert info.n_frames == 60
    exact = probe_video(clips / "idx24.mp4", count_frames=True)
    assert exact.n_frames == 60 and exact.n_frames_exact


def test_probe_without_duration_counts_frames(tmp_path: Path) -> None:
    # A WebM written to a pipe (like a browser's MediaRecorder) has no duration in its header.
    path = tmp_path / "recorded.webm"
    with path.open("wb") as f:
        subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30:duration=2.2",
                        "-c:v", "libvpx", "-deadline", "realtime", "-f", "webm", "pipe:1"], stdout=f, check=True)
    info = probe_video(path)
    assert info.n_frames == 66 and info.n_frames_exact
    assert info.fps == pytest.approx(30)
    assert info.duration_sec == pytest.approx(2.2, abs=0.05)
    assert read_video(path, small()).shape == (16, 3, 16, 16)


def test_probe_applies_rotation(clips: Path, tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation:v:0", "90", "-i", str(clips / "idx24.mp4"), "-c", "copy", str(rotated))
    info = probe_video(rotated)
    assert (info.width, info.height) == (48, 64)


@pytest.mark.parametrize(
    "clip, fps, expected",
    [
        # frame k is the source frame on screen at k / fps: index floor(src_fps * k / fps)
        ("idx24.mp4", 8, [3 * k for k in range(16)]),
        ("idx24.webm", 8, [3 * k for k in range(16)]),
        ("idx24.mkv", 8, [3 * k for k in range(16)]),
        ("idx24.avi", 8, [3 * k for k in range(16)]),
        ("idx24.webm", 24, list(range(16))),
        ("idx24.avi", 24, list(range(16))),
        ("idx24.mp4", 7, [24 * k // 7 for k in range(16)]),
        ("idx30.mp4", 8, [30 * k // 8 for k in range(16)]),
        ("idx24.mp4", 24, list(range(16))),
        ("idx24.mp4", 48, [k // 2 for k in range(16)]),  # upsampling in time repeats frames
        ("idx8.gif", 8, list(range(16))),
        ("idx8.gif", 6, [8 * k // 6 for k in range(16)]),
        # VFR: the latest frame whose own time is <= k / 8, i.e. max i with (i + 6 * (i >= 10)) / 24 <= k / 8
        ("vfr.mp4", 8, [max(i for i in range(48) if i + 6 * (i >= 10) <= 3 * k) for k in range(16)]),
    ],
)
def test_temporal_resampling_picks_frame_on_screen(clips: Path, clip: str, fps: float, expected: list[int]) -> None:
    assert indices(read_video(clips / clip, small(fps=fps))) == expected


@pytest.mark.parametrize(
    "start, n, expected",
    [
        (0.5, 16, [12 + 3 * k for k in range(16)]),
        (0.1, 8, [2 + 3 * k for k in range(8)]),  # 0.1 s falls inside source frame 2 (0.083 s .. 0.125 s)
        (1.3, 8, [31 + 3 * k for k in range(8)]),  # far enough in that ffmpeg seeks
        (1.25, 8, [30 + 3 * k for k in range(8)]),  # exactly on source frame 30
    ],
)
@pytest.mark.parametrize("ext", ["mp4", "webm", "avi"])
def test_start_offset(clips: Path, ext: str, start: float, n: int, expected: list[int]) -> None:
    assert indices(read_video(clips / f"idx24.{ext}", small(num_frames=n, start_sec=start))) == expected


@pytest.mark.parametrize("w, h", [(256, 64), (48, 192)])
def test_centre_crop_keeps_centre(tmp_path: Path, w: int, h: int) -> None:
    # Black frame, white 16x16 square in the centre, red strips along the ends that a centre crop must cut away.
    frame = np.zeros((h, w, 3), np.uint8)
    frame[h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8] = 255
    if w > h:
        frame[:, :8, 0] = frame[:, -8:, 0] = 255
    else:
        frame[:8, :, 0] = frame[-8:, :, 0] = 255
    path = encode(tmp_path / "wide.mp4", np.repeat(frame[None], 24, axis=0), 8, *H264_LOSSLESS)
    video = read_video(path, small(num_frames=2, height=32, width=32))
    assert video.shape == (2, 3, 32, 32)
    side = min(w, h)  # the crop is side x side, scaled to 32: the 16 px square becomes 16 * 32 / side
    half = round(8 * 32 / side)
    centre = video[:, :, 16 - half + 1 : 16 + half - 1, 16 - half + 1 : 16 + half - 1]
    assert float(centre.min()) > 0.9
    assert float(video[:, 0, :, :2].max()) < 0.1 and float(video[:, 0, :, -2:].max()) < 0.1  # no red strip left
    assert float(video[:, 0, :2, :].max()) < 0.1 and float(video[:, 0, -2:, :].max()) < 0.1


def test_too_short_says_how_long_and_mentions_loop(clips: Path) -> None:
    with pytest.raises(VideoTooShortError) as exc:
        read_video(clips / "short.mp4", small())  # 16 frames at 8 fps need 2 s; the clip is 1 s
    msg = str(exc.value)
    assert "short.mp4" in msg and "2.00 s" in msg and "1.00 s" in msg and "loop" in msg
    assert exc.value.required_sec == pytest.approx(2.0)

    with pytest.raises(VideoTooShortError, match=r"2\.50 s"):
        read_video(clips / "short.mp4", small(start_sec=0.5))


def test_loop_repeats_short_clip(clips: Path) -> None:
    video = read_video(clips / "short.mp4", small(loop=True))
    assert video.shape == (16, 3, 16, 16)
    assert indices(video) == [3 * (k % 8) for k in range(16)]  # 1 s at 8 fps = 8 frames, then again


def test_start_past_end_refused_even_with_loop(clips: Path) -> None:
    with pytest.raises(VideoTooShortError, match="start time 5 s"):
        read_video(clips / "short.mp4", small(start_sec=5.0, loop=True))


def test_exact_length_is_enough(clips: Path) -> None:
    # 60 frames at 24 fps = 2.5 s; 20 frames at 8 fps = 2.5 s: the last one (t = 2.375 s) is source frame 57
    assert indices(read_video(clips / "idx24.mp4", small(num_frames=20)))[-1] == 57
    with pytest.raises(VideoTooShortError):
        read_video(clips / "idx24.mp4", small(num_frames=21))


# -------------------------------------------------------------------------------------------------- errors


def test_text_file_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(NotAVideoError, match="notes.mp4.*not a video"):
        read_video(path)
    with pytest.raises(NotAVideoError):
        probe_video(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(NotAVideoError, match="does not exist"):
        read_video(tmp_path / "nope.mp4")
    with pytest.raises(NotAVideoError, match="folder"):
        read_video(tmp_path)


def test_still_image_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", "1", str(path))
    with pytest.raises(NotAVideoError, match="still image"):
        read_video(path)


def test_audio_only_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "sound.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(path))
    with pytest.raises(NotAVideoError, match="no video stream"):
        read_video(path)


def test_errors_are_value_errors() -> None:
    for cls in (NotAVideoError, CorruptVideoError, EmptyVideoError, VideoTooShortError, VideoTooLargeError):
        assert issubclass(cls, VideoError) and issubclass(cls, ValueError)


def _testsrc_mp4(path: Path, *extra: str) -> Path:
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=24:duration=3", *H264, *extra, str(path))
    return path


def test_truncated_mp4_without_header_is_corrupt(tmp_path: Path) -> None:
    # ffmpeg writes the index (moov) at the end by default, so the first half of the file has none.
    data = _testsrc_mp4(tmp_path / "full.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptVideoError, match="cut.mp4.*damaged or incomplete") as exc:
        read_video(cut)
    assert "moov atom not found" in str(exc.value)


def test_truncated_mp4_that_fails_part_way_is_corrupt(tmp_path: Path) -> None:
    # With +faststart the index comes first: the header says 3 s, but the frame data stops early.
    data = _testsrc_mp4(tmp_path / "full.mp4", "-movflags", "+faststart").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    assert probe_video(cut).duration_sec == pytest.approx(3.0, abs=0.05)
    with pytest.raises(CorruptVideoError, match=r"cut.mp4.* is damaged: decoding fails at about .* 3.00 s"):
        read_video(cut, small())


def test_garbled_mp4_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(_testsrc_mp4(tmp_path / "full.mp4", "-movflags", "+faststart").read_bytes())
    rng = np.random.default_rng(0)
    data[len(data) // 3 :] = rng.integers(0, 256, len(data) - len(data) // 3, dtype=np.uint8).tobytes()
    garbled = tmp_path / "garbled.mp4"
    garbled.write_bytes(bytes(data))
    with pytest.raises(CorruptVideoError, match="garbled.mp4"):
        read_video(garbled, small())


def test_zero_frame_videos_are_empty(tmp_path: Path) -> None:
    empty = tmp_path / "zero_bytes.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptyVideoError, match="empty file"):
        read_video(empty)
    # ffmpeg writes a valid MP4 without any track, and an AVI whose video track has no frames.
    for ext in ("mp4", "avi"):
        path = tmp_path / f"no_frames.{ext}"
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", "0", *H264, str(path))
        with pytest.raises(EmptyVideoError, match=f"no_frames.{ext}.*no frames"):
            read_video(path)


def test_limits(clips: Path) -> None:
    path = clips / "idx24.mp4"
    with pytest.raises(VideoTooLargeError, match=r"idx24.mp4' is 0.0\d\d MB; files over 0.001 MB"):
        read_video(path, small(max_file_mb=0.001))
    with pytest.raises(VideoTooLargeError, match="64x48 frames"):
        read_video(path, small(max_source_pixels=64 * 47))
    with pytest.raises(VideoTooLargeError, match="2.5 s long"):
        read_video(path, small(max_duration_sec=2.0))
    read_video(path, small(max_file_mb=1, max_source_pixels=64 * 48, max_duration_sec=3))  # at the limit: fine


def test_reading_is_fast(clips: Path) -> None:
    read_video(clips / "idx24.mp4", VideoConfig())  # warm the OS caches
    t0 = time.perf_counter()
    read_video(clips / "idx24.mp4", VideoConfig())
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------------------- writing


def smooth_frames(n: int = 8, h: int = 64, w: int = 80) -> torch.Tensor:
    """Smooth moving gradients: representative content that a good encoder reproduces closely."""
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    t = torch.arange(n, dtype=torch.float32)[:, None, None]
    r = 0.5 + 0.4 * torch.sin(2 * torch.pi * (x + t / n))
    g = 0.5 + 0.4 * torch.cos(2 * torch.pi * (y - t / n))
    b = (x + y).expand(n, h, w) / 2
    return torch.stack([r.expand(n, h, w), g.expand(n, h, w), b], dim=1)


def stream_line(path: Path) -> str:
    err = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return next(ln for ln in err.splitlines() if "Video:" in ln)


def test_write_mp4_is_h264_yuv420p_and_round_trips(tmp_path: Path) -> None:
    frames = smooth_frames()
    out = write_mp4(frames, tmp_path / "sub" / "out.mp4", fps=8)
    assert out == tmp_path / "sub" / "out.mp4" and out.exists()
    line = stream_line(out)
    assert "Video: h264" in line and "yuv420p" in line and "80x64" in line and "8 fps" in line
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while downloading
    back = read_video(out, VideoConfig(num_frames=8, fps=8, height=64, width=80))
    assert float((back - frames).abs().mean()) < 0.02

    # numpy uint8 input gives the same file content (up to encoder determinism we only check it reads back)
    out2 = write_mp4(to_uint8(frames), tmp_path / "np.mp4", fps=8)
    assert probe_video(out2).n_frames == 8


def test_write_mp4_odd_size(tmp_path: Path) -> None:
    frames = smooth_frames(n=4, h=33, w=47)
    out = write_mp4(frames, tmp_path / "odd.mp4", fps=4)
    info = probe_video(out)
    assert (info.width, info.height) == (48, 34)
    back = read_video(out, VideoConfig(num_frames=4, fps=4, height=32, width=48))  # crops the padded row
    assert back.shape == (4, 3, 32, 48)


def test_write_gif_reads_back(tmp_path: Path) -> None:
    frames = smooth_frames()
    out = write_gif(frames, tmp_path / "out.gif", fps=8)
    assert out.read_bytes()[:6] == b"GIF89a"
    info = probe_video(out)
    assert (info.width, info.height, info.codec) == (80, 64, "gif")
    back = read_video(out, VideoConfig(num_frames=8, fps=8, height=64, width=80))
    assert float((back - frames).abs().mean()) < 0.05  # 256-colour palette + dithering


def test_failed_write_leaves_destination_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake ffmpeg that writes half a file and fails, like an encoder crash or a full disk.
    fake = tmp_path / "fake_ffmpeg.sh"
    fake.write_text('#!/bin/sh\nfor a; do last="$a"; done\nprintf partial > "$last"\necho "disk full" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    dest = tmp_path / "out" / "result.mp4"
    dest.parent.mkdir()
    dest.write_bytes(b"previous result")
    monkeypatch.setattr("motion_core.video._ffmpeg", lambda: str(fake))
    for write in (write_mp4, write_gif):
        with pytest.raises(VideoWriteError, match="result.mp4.*disk full"):
            write(smooth_frames(n=2), dest)
    assert dest.read_bytes() == b"previous result"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["result.mp4"]  # no temp files left behind


def test_write_replaces_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.mp4"
    dest.write_bytes(b"old")
    write_mp4(smooth_frames(n=2), dest)
    assert re.search(rb"ftyp", dest.read_bytes()[:16])
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


# ---------------------------------------------------------------------------------------------- conversion


def test_to_uint8_and_back() -> None:
    frames = smooth_frames(n=3, h=8, w=10)
    arr = to_uint8(frames)
    assert arr.shape == (3, 8, 10, 3) and arr.dtype == np.uint8 and arr.flags.c_contiguous
    back = frames_from_array(arr)
    assert back.shape == frames.shape and back.dtype == torch.float32
    assert float((back - frames).abs().max()) <= 0.5 / 255 + 1e-6  # rounding, not truncation

    wild = torch.tensor([-1.0, 2.0, float("nan")]).view(1, 3, 1, 1)
    assert to_uint8(wild).tolist() == [[[[0, 255, 0]]]]
    assert np.array_equal(to_uint8(arr), arr)
    assert np.array_equal(to_uint8(arr.astype(np.float32) / 255), arr)
    assert np.array_equal(to_uint8(torch.from_numpy(arr).permute(0, 3, 1, 2)), arr)  # uint8 tensors: no scaling


def test_to_uint8_rejects_wrong_layouts() -> None:
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        to_uint8(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        to_uint8(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        to_uint8(np.zeros((2, 8, 8, 3), np.int64))
