"""Reading reference clips and writing results: the only place that talks to ffmpeg.

``read_video`` turns any file ffmpeg decodes (mp4, mov, webm, mkv, avi, gif, ...) into the float tensor the
training code wants: exactly ``cfg.num_frames`` frames sampled at ``cfg.fps`` from ``cfg.start_sec`` on,
centre-cropped to the target aspect and resized to ``cfg.height`` x ``cfg.width``. Frame ``k`` is the source
frame on screen at time ``start_sec + k / fps`` (the latest frame whose timestamp is <= that time), which is
what a viewer of the clip would see at that moment, also for variable-frame-rate sources.

``write_mp4`` / ``write_gif`` write browser-playable results atomically.

Everything goes through the ffmpeg binary shipped with ``imageio-ffmpeg`` (one subprocess per call, frames over
a pipe), so there is no native build to break. ffmpeg's failures are turned into the ``VideoError`` family with
messages a user can act on.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from motion_core.config import VideoConfig

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
FramesLike = torch.Tensor | np.ndarray

# A stuck ffmpeg (odd network mount, pathological file) must not hang a training job or the app forever.
_TIMEOUT_SEC = 300.0
# Seeking makes ffmpeg drop frames that start before the seek point, but frame 0 we want is the one *on screen*
# at start_sec, which may start a little earlier. Seeking this far before start_sec keeps that frame.
_SEEK_MARGIN_SEC = 1.0

__all__ = [
    "CorruptVideoError",
    "EmptyVideoError",
    "NotAVideoError",
    "VideoError",
    "VideoInfo",
    "VideoTooLargeError",
    "VideoTooShortError",
    "VideoWriteError",
    "frames_from_array",
    "probe_video",
    "read_video",
    "to_uint8",
    "write_gif",
    "write_mp4",
]


# --------------------------------------------------------------------------------------------------- errors


class VideoError(ValueError):
    """A video could not be used; the message says which file and why, in words meant for the user."""

    def __init__(self, message: str, path: PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


class NotAVideoError(VideoError):
    """The file is missing, not a video at all, or in a format ffmpeg does not know."""


class CorruptVideoError(VideoError):
    """The file looks like a video but is damaged: its header is broken or decoding fails part way."""


class EmptyVideoError(VideoError):
    """The file is a valid container with no video frames in it."""


class VideoTooShortError(VideoError):
    """The clip ends before the requested frames; ``required_sec`` / ``actual_sec`` say by how much."""

    def __init__(self, message: str, path: PathLike | None = None, required_sec: float = 0.0,
                 actual_sec: float | None = None) -> None:
        super().__init__(message, path)
        self.required_sec = required_sec
        self.actual_sec = actual_sec


class VideoTooLargeError(VideoError):
    """The file, its frames or its duration exceed the limits in ``VideoConfig``."""


class VideoWriteError(VideoError):
    """ffmpeg could not write the output file (nothing is left at the destination)."""


# ----------------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the first video stream.

    ``width`` / ``height`` are the stored frame size with rotation metadata applied (ffmpeg rotates when
    decoding); pixels may be non-square, see ``sample_aspect``. ``duration_sec`` and ``fps`` come from the header;
    ``n_frames`` is ``duration * fps`` rounded unless ``n_frames_exact`` is set (``probe_video(...,
    count_frames=True)`` or a header without a duration).
    ``None`` means ffmpeg could not tell.
    """

    width: int
    height: int
    fps: float | None
    duration_sec: float | None
    n_frames: int | None
    codec: str | None = None
    container: str | None = None
    n_frames_exact: bool = False
    sample_aspect: float = 1.0  # pixel aspect ratio; != 1 for anamorphic sources
    time_base_hz: float | None = None  # timestamp ticks per second (GIF: 100, WebM: 1000, MP4: often 12288)


def _ffmpeg() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(cmd: list[str], path: PathLike, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, timeout=_TIMEOUT_SEC,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise VideoError(f"{_name(path)}: ffmpeg took longer than {_TIMEOUT_SEC:.0f} s and was stopped", path) from e


def _ff(path: PathLike) -> str:
    # "file:" makes ffmpeg treat the argument as a plain file name: without it "clip:1.mp4" would be read as a
    # protocol, and a user-supplied "http://..." or "pipe:0" would make ffmpeg fetch or read something else.
    return "file:" + str(Path(path).absolute())


def _name(path: PathLike) -> str:
    # The base name is what a user recognises (uploads land in temp folders); the full path is on .path.
    return f"'{Path(path).name or path}'"


_BORING = ("Error opening input file", "Conversion failed", "Nothing was written")
_BORING_ANYWHERE = ("Task finished with error code", "Terminating thread with return code")


def _last_lines(stderr: str, n: int = 2) -> str:
    """ffmpeg's last few distinct error lines, without the "[component @ 0xADDR]" noise and the generic
    "Error opening input file(s)" trailer, which say nothing a user can act on."""
    lines: list[str] = []
    for ln in stderr.splitlines():
        ln = re.sub(r"^(\[[^\]]*\]\s*)+", "", ln.strip())
        if ln and not ln.startswith(_BORING) and not any(b in ln for b in _BORING_ANYWHERE) and ln not in lines:
            lines.append(ln)
    return " / ".join(lines[-n:]) or "(no details)"


# Magic bytes of the containers we expect. A file that starts like a video but cannot be opened is damaged
# (CorruptVideoError); one that starts like nothing we know is not a video at all (NotAVideoError).
def _sniff_container(path: PathLike) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM/MKV"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "AVI"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"FLV"):
        return "FLV"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "MPEG"
    if head.startswith(b"OggS"):
        return "Ogg"
    return None


def _check_file(path: PathLike) -> int:
    """Fail early with a clear message for missing paths and folders; returns the size in bytes."""
    p = Path(path)
    if not p.exists():
        raise NotAVideoError(f"{_name(path)} does not exist (looked for {str(p)!r})", path)
    if p.is_dir():
        raise NotAVideoError(f"{_name(path)} is a folder, not a video file", path)
    size = p.stat().st_size
    if size == 0:
        raise EmptyVideoError(f"{_name(path)} is an empty file (0 bytes); it contains no video", path)
    return size


_CONTAINER_NAMES = {"mov": "MP4/MOV", "matroska": "WebM/MKV", "avi": "AVI", "gif": "GIF"}
_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_INPUT_RE = re.compile(r"Input #0, (.+?), from ")
_STREAM_RE = re.compile(r"^\s*Stream #0:\d+\S*?: (\w+): (.*)$")
# "320x240" but not the "0x31637661" of a codec tag: sizes never start with 0 and sit between separators.
_SIZE_RE = re.compile(r"(?:^|[\s,])([1-9]\d*)x([1-9]\d*)(?=[\s,\[]|$)")
_FPS_RE = re.compile(r"([\d.]+)(k?) fps")
_TBR_RE = re.compile(r"([\d.]+)(k?) tbr")
_TBN_RE = re.compile(r"([\d.]+)(k?) tbn")
_SAR_RE = re.compile(r"SAR (\d+):(\d+)")
_ROT_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


def _rate(m: re.Match[str] | None) -> float | None:
    if m is None:
        return None
    v = float(m.group(1)) * (1000.0 if m.group(2) else 1.0)
    return v if v > 0 else None


def _count_packets(path: PathLike) -> tuple[int, float | None] | None:
    """(number of video packets, timestamp of the last one) by remuxing to nowhere: no decoding, so it is
    I/O bound and cheap. None if ffmpeg cannot even do that."""
    cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error", "-nostats", "-i", _ff(path), "-map", "0:V:0",
           "-c", "copy", "-f", "null", "-progress", "pipe:1", "-"]
    res = _run(cmd, path)
    if res.returncode != 0:
        return None
    frames, last = None, None
    for ln in res.stdout.decode("utf-8", "replace").splitlines():
        if ln.startswith("frame="):
            frames = int(ln.split("=", 1)[1] or 0)
        elif ln.startswith("out_time="):
            m = re.match(r"(\d+):(\d+):(\d+(?:\.\d+)?)", ln.split("=", 1)[1])
            last = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None
    return None if frames is None else (frames, last)


def probe_video(path: PathLike, count_frames: bool = False) -> VideoInfo:
    """Read the header of ``path`` (fast: nothing is decoded) and describe its first video stream.

    ``count_frames=True`` also counts the frames exactly by reading the whole file once without decoding.
    Raises ``NotAVideoError``, ``CorruptVideoError`` or ``EmptyVideoError`` as appropriate.
    """
    _check_file(path)
    # ffmpeg without an output prints the header to stderr and exits 1 ("At least one output file must be
    # specified"); that exit code is expected, so success is judged by whether an input header was printed.
    res = _run([_ffmpeg(), "-hide_banner", "-nostdin", "-i", _ff(path)], path)
    err = res.stderr.decode("utf-8", "replace")
    m_input = _INPUT_RE.search(err)
    if m_input is None:
        if "Permission denied" in err:
            raise NotAVideoError(f"{_name(path)} cannot be opened: permission denied", path)
        kind = _sniff_container(path)
        detail = _last_lines(err)
        if kind is not None:
            raise CorruptVideoError(
                f"{_name(path)} looks like a {kind} file but cannot be opened: it is damaged or incomplete "
                f"(for example an upload or download that was cut off). ffmpeg says: {detail}", path)
        raise NotAVideoError(
            f"{_name(path)} is not a video file ffmpeg can read (unknown or unsupported format). "
            f"Use an mp4, mov, webm, mkv, avi or gif. ffmpeg says: {detail}", path)
    container = m_input.group(1)
    kind = _CONTAINER_NAMES.get(container.split(",")[0], container.split(",")[0].upper())

    stream_lines: list[str] = []  # the chosen video stream's line and the indented lines that follow it
    n_streams = 0
    for ln in err.splitlines():
        m = _STREAM_RE.match(ln)
        if m:
            n_streams += 1
            if stream_lines:
                break
            # Cover art in an audio file is a "video" stream too; it is not a clip.
            if m.group(1) == "Video" and "(attached pic)" not in ln:
                stream_lines = [m.group(2)]
        elif stream_lines:
            stream_lines.append(ln)
    if not stream_lines:
        if n_streams == 0:
            raise EmptyVideoError(f"{_name(path)} is a valid {kind} file but contains no frames at all", path)
        raise NotAVideoError(f"{_name(path)} has no video stream (is it an audio file?)", path)

    desc = stream_lines[0]
    codec = desc.split(",", 1)[0].split(" ", 1)[0].strip() or None
    m_size = _SIZE_RE.search(desc)
    if m_size is None:
        raise CorruptVideoError(f"{_name(path)}: its video stream has no frame size; the file is damaged", path)
    width, height = int(m_size.group(1)), int(m_size.group(2))
    fps = _rate(_FPS_RE.search(desc)) or _rate(_TBR_RE.search(desc))
    m_sar = _SAR_RE.search(desc)
    sar = int(m_sar.group(1)) / int(m_sar.group(2)) if m_sar and int(m_sar.group(1)) and int(m_sar.group(2)) else 1.0
    m_rot = _ROT_RE.search("\n".join(stream_lines[1:]))
    if m_rot and round(abs(float(m_rot.group(1)))) % 180 == 90:
        width, height = height, width  # ffmpeg auto-rotates on decode, so report what the frames will be

    m_dur = _DURATION_RE.search(err)
    duration = int(m_dur.group(1)) * 3600 + int(m_dur.group(2)) * 60 + float(m_dur.group(3)) if m_dur else None
    if duration is not None and duration <= 0:
        duration = None
    # Browser recordings (MediaRecorder webm) have no duration and a bogus 1000 "fps"; so do stills. Counting
    # packets is the only reliable answer then, and it is cheap because nothing is decoded.
    is_image = container == "image2" or container.endswith("_pipe")
    exact = count_frames or duration is None or fps is None or fps > 240 or is_image
    n_frames: int | None = None
    if exact:
        counted = _count_packets(path)
        if counted is None:
            exact = False
        else:
            n_frames, last_pts = counted
            if n_frames == 0:
                raise EmptyVideoError(f"{_name(path)} is a valid {kind} file but its video has no frames", path)
            if (fps is None or fps > 240) and n_frames > 1 and last_pts:
                fps = (n_frames - 1) / last_pts
            if duration is None and fps:
                # ffmpeg's progress time after a stream copy is only roughly the end (it may lag by a frame or
                # two behind B-frames), so the frame count at the nominal rate is the better bound when larger.
                duration = max(last_pts or 0.0, n_frames / fps)
    if is_image and n_frames is not None and n_frames <= 1:
        raise NotAVideoError(f"{_name(path)} is a still image, not a video", path)
    if n_frames is None and duration is not None and fps:
        n_frames = max(1, round(duration * fps))
    return VideoInfo(width=width, height=height, fps=fps, duration_sec=duration, n_frames=n_frames, codec=codec,
                     container=container, n_frames_exact=exact, sample_aspect=sar,
                     time_base_hz=_rate(_TBN_RE.search(desc)))


def _check_limits(path: PathLike, size_bytes: int, info: VideoInfo | None, cfg: VideoConfig) -> None:
    mb = size_bytes / (1024 * 1024)
    if mb > cfg.max_file_mb:
        raise VideoTooLargeError(
            f"{_name(path)} is {mb:.{1 if mb >= 1 else 3}f} MB; files over {cfg.max_file_mb:g} MB are refused. "
            f"Trim or re-encode the clip first.", path)
    if info is None:
        return
    if info.width * info.height > cfg.max_source_pixels:
        raise VideoTooLargeError(
            f"{_name(path)} has {info.width}x{info.height} frames ({info.width * info.height:,} pixels); the limit is "
            f"{cfg.max_source_pixels:,} pixels per frame. Downscale the clip first.", path)
    if info.duration_sec is not None and info.duration_sec > cfg.max_duration_sec:
        raise VideoTooLargeError(
            f"{_name(path)} is {info.duration_sec:.1f} s long; clips over {cfg.max_duration_sec:g} s are refused. "
            f"Cut out the part you want first.", path)


# ------------------------------------------------------------------------------------------------------ read


def _filter_graph(info: VideoInfo, cfg: VideoConfig, shift_sec: float) -> str:
    chain = [
        # Microsecond time base first, so that shifting by start_sec is exact even for sources whose own
        # time base is coarse (AVI often uses 1/fps, which would round start_sec to whole frames).
        "settb=AVTB",
        # The small extra shift forgives timestamps stored a little late because the container rounds them:
        # 1/24 s is 0.042 s in WebM's millisecond time base, 1/8 s is 0.13 s in GIF's centiseconds, and these
        # would otherwise push a frame meant for k / fps into slot k + 1. See _eps for why it is safe.
        f"setpts=PTS-{shift_sec + _eps(info):.6f}/TB",
        # round=up maps an input frame at time t to output slot ceil(t * fps), so output k gets the latest input
        # frame with t <= k / fps: the frame on screen at that moment. start_time=0 pads the front with the first
        # frame if the stream starts late and drops frames before start_sec. Done before scaling so only the
        # kept frames get scaled.
        f"fps=fps={_fraction(cfg.fps)}:start_time=0:round=up",
    ]
    if abs(info.sample_aspect - 1.0) > 1e-3:
        # Anamorphic pixels: make them square first so "centre crop to the aspect" means the displayed aspect.
        chain.append("scale=w='trunc(iw*sar/2)*2':h=ih,setsar=1")
    tw, th = cfg.width, cfg.height
    # Largest centred window with the target aspect (crop centres by default).
    chain.append(f"crop=w='min(iw,trunc(ih*{tw}/{th}))':h='min(ih,trunc(iw*{th}/{tw}))'")
    # Area averaging for downscaling avoids aliasing; bicubic looks better when enlarging small sources.
    flags = "area" if info.width >= tw and info.height >= th else "bicubic"
    chain.append(f"scale={tw}:{th}:flags={flags}+accurate_rnd+full_chroma_int")
    chain.append("setsar=1,format=rgb24")
    return ",".join(chain)


def _eps(info: VideoInfo) -> float:
    # Containers round timestamps to their tick, so a frame can be stored up to half a tick late; 1 ms covers
    # the rounding to microseconds above. Capped at under a third of a source frame so that a frame which truly
    # starts after k / fps is never taken for slot k.
    eps = max(1e-3, 0.6 / info.time_base_hz) if info.time_base_hz else 1e-3
    return min(eps, 0.3 / info.fps) if info.fps else eps


def _fraction(x: float) -> str:
    f = Fraction(x).limit_denominator(1001)
    return f"{f.numerator}/{f.denominator}"


def _decode(path: PathLike, info: VideoInfo, cfg: VideoConfig) -> tuple[np.ndarray, str, int]:
    """Run ffmpeg once; returns (uint8 frames (n, H, W, 3) with n <= num_frames, ffmpeg's error text, exit code)."""
    seek = max(0.0, cfg.start_sec - _SEEK_MARGIN_SEC)
    cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error"]
    if seek > 0:
        # Input seeking jumps near start_sec without decoding everything before it; ffmpeg then re-bases the
        # timestamps to the seek point, which the filter graph's shift accounts for.
        cmd += ["-ss", f"{seek:.6f}"]
    cmd += ["-i", _ff(path), "-map", "0:V:0", "-an", "-sn", "-dn",
            "-vf", _filter_graph(info, cfg, cfg.start_sec - seek),
            "-frames:v", str(cfg.num_frames), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    res = _run(cmd, path)
    frame_bytes = cfg.height * cfg.width * 3
    n = len(res.stdout) // frame_bytes  # a frame cut off by a crash is dropped
    frames = np.frombuffer(res.stdout, dtype=np.uint8, count=n * frame_bytes).reshape(n, cfg.height, cfg.width, 3)
    return frames, res.stderr.decode("utf-8", "replace").strip(), res.returncode


def read_video(path: PathLike, cfg: VideoConfig | None = None) -> torch.Tensor:
    """Decode ``path`` into a float32 tensor (num_frames, 3, height, width) with values in [0, 1].

    Frame ``k`` is the source frame on screen at ``cfg.start_sec + k / cfg.fps``; each frame is centre-cropped
    to ``width / height`` and resized. A clip that ends too early raises ``VideoTooShortError`` unless
    ``cfg.loop`` is set, in which case the frames that exist are repeated from the first one.
    """
    cfg = cfg or VideoConfig()
    cfg.validate()  # a bad fps or size should fail here with the config's own message, not inside ffmpeg
    size = _check_file(path)
    _check_limits(path, size, None, cfg)  # before probing: a huge file should not cost anything
    info = probe_video(path)
    _check_limits(path, size, info, cfg)

    frames, err, rc = _decode(path, info, cfg)
    n, want = len(frames), cfg.num_frames
    if n < want:
        reached = cfg.start_sec + n / cfg.fps  # roughly where decoding stopped
        if n == 0 and cfg.start_sec == 0 and (rc != 0 or err):
            counted = _count_packets(path)
            if counted is not None and counted[0] == 0:
                raise EmptyVideoError(f"{_name(path)} contains no video frames", path)
        if rc != 0 or err:
            # Decoding stopped with errors before the header's end: the file is truncated or damaged, and calling
            # it "too short" would send the user looking for the wrong fix.
            if info.duration_sec is None or reached < info.duration_sec - 1.0 / cfg.fps - 0.05:
                of = f" of a clip whose header says it is {info.duration_sec:.2f} s long" if info.duration_sec else ""
                raise CorruptVideoError(
                    f"{_name(path)} is damaged: decoding fails at about {reached:.2f} s{of} (for example an upload "
                    f"or download that was cut off). ffmpeg says: {_last_lines(err)}", path)
        if n == 0 or not cfg.loop:
            raise _too_short(path, info, cfg, n)
        # Loop the available stretch (start_sec to the end) from its first frame.
        frames = frames[np.arange(want) % n]
    elif err:
        # Concealed decode errors inside the requested stretch: the frames exist but may show glitches.
        log.warning("%s decoded with errors (frames may show artefacts): %s", _name(path), _last_lines(err))
    return frames_from_array(frames)


def _too_short(path: PathLike, info: VideoInfo, cfg: VideoConfig, n_got: int) -> VideoTooShortError:
    need = cfg.start_sec + cfg.num_frames / cfg.fps
    actual = info.duration_sec
    if actual is None or (n_got > 0 and actual >= need):
        # No header duration, or one that covers a longer audio track: where the video ran out is what counts.
        actual = cfg.start_sec + n_got / cfg.fps
    what = (f"{cfg.num_frames} frames at {cfg.fps:g} fps starting at {cfg.start_sec:g} s need a clip of at least "
            f"{need:.2f} s")
    if n_got == 0 and cfg.start_sec > 0:
        msg = (f"{_name(path)} is too short: the start time {cfg.start_sec:g} s is at or past the end of the clip "
               f"({actual:.2f} s long); {what}. Use an earlier start time.")
    else:
        msg = (f"{_name(path)} is too short: {what}, but it is only {actual:.2f} s long. Use a longer clip, an "
               f"earlier start time, fewer frames or a lower fps, or set the `loop` option (loop=True) to repeat "
               f"the clip.")
    return VideoTooShortError(msg, path, required_sec=need, actual_sec=actual)


# ------------------------------------------------------------------------------------------------ conversion


def to_uint8(frames: FramesLike) -> np.ndarray:
    """Frames as a contiguous uint8 array (F, H, W, 3).

    Accepts a torch tensor (F, 3, H, W) (float in [0, 1], or uint8) or a numpy array (F, H, W, 3) (uint8, or float
    in [0, 1]). Floats are clipped and rounded; NaNs become 0 so a diverged sample still writes.
    """
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected a frames tensor shaped (F, 3, H, W), got {tuple(frames.shape)}")
        t = frames.detach()
        if t.dtype != torch.uint8:
            t = (t.float().nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8)
        return np.ascontiguousarray(t.permute(0, 2, 3, 1).cpu().numpy())
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected a frames array shaped (F, H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"frames array must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = np.round(np.clip(np.nan_to_num(arr, nan=0.0), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def frames_from_array(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) (or float in [0, 1]) -> float32 tensor (F, 3, H, W) in [0, 1]."""
    arr = to_uint8(frames)
    if not arr.flags.writeable:  # e.g. np.frombuffer over ffmpeg's output; torch wants memory it may write
        arr = arr.copy()
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


# ----------------------------------------------------------------------------------------------------- write


def _temp_beside(path: Path) -> Path:
    # Same folder as the destination, so os.replace is an atomic rename on the same file system; hidden so that
    # a gallery listing the folder never shows a half-written file.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


def _write(frames: FramesLike, path: PathLike, fps: float, out_args: list[str], what: str) -> Path:
    arr = to_uint8(frames)
    if len(arr) == 0:
        raise ValueError(f"cannot write {what} {str(path)!r}: no frames")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(dest)
    _, h, w, _ = arr.shape
    cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", _fraction(fps), "-i", "pipe:0",
           *out_args, _ff(tmp)]
    try:
        res = _run(cmd, dest, stdin=arr.tobytes())
        if res.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            raise VideoWriteError(
                f"could not write {what} {_name(dest)}: ffmpeg says: "
                f"{_last_lines(res.stderr.decode('utf-8', 'replace'))}", dest)
        os.replace(tmp, dest)
    finally:
        # On any failure (including KeyboardInterrupt) the partial temp file goes; the destination is untouched.
        if tmp.exists():
            tmp.unlink()
    return dest


def _even(arr: np.ndarray) -> np.ndarray:
    # yuv420p stores colour at half resolution, so H.264 needs even sizes; repeating the last row/column keeps the
    # picture unscaled and unshifted.
    _, h, w, _ = arr.shape
    if h % 2 == 0 and w % 2 == 0:
        return arr
    return np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(frames: FramesLike, path: PathLike, fps: float = 8, crf: int = 18) -> Path:
    """Write an H.264 / yuv420p MP4 that browsers play (even size, moov atom first); atomic. Returns the path.

    ``frames``: tensor (F, 3, H, W) float in [0, 1] or uint8 array (F, H, W, 3). Odd sizes grow by one pixel.
    """
    arr = _even(to_uint8(frames))
    out = [
        "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
        # Convert with, and label as, BT.709 so browsers and players show the colours that were written.
        "-vf", "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int",
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
        # moov atom at the front: browsers can start playing before the whole file has arrived.
        "-movflags", "+faststart", "-f", "mp4",
    ]
    return _write(arr, path, fps, out, "MP4")


def write_gif(frames: FramesLike, path: PathLike, fps: float = 8) -> Path:
    """Write a looping GIF with a palette computed from the frames themselves; atomic. Returns the path."""
    out = [
        # One palette for the whole clip (GIF has 256 colours) avoids the flicker of per-frame palettes.
        "-vf", "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=sierra2_4a",
        "-loop", "0", "-f", "gif",
    ]
    return _write(frames, path, fps, out, "GIF")
