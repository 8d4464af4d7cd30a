"""Reading clips (OpenCV's FFmpeg backend) and writing browser-playable H.264 MP4 (imageio-ffmpeg).

    info = probe_video("clip.mp4", limits=VideoLimits(max_seconds=20, max_frames=300))
    for index, rgb in iter_frames("clip.mp4", stride=2, max_side=640): ...
    with Mp4Writer("out.mp4", fps=info.fps / 2) as w:
        w.write(overlay_rgb)           # (H, W, 3) uint8; odd sizes are padded to even

Every problem with a user's clip is an `InputError` (mabp.image_io) whose one-line message says what
was wrong and what to do: missing file, not a video (an image, a text file: OpenCV's FFmpeg backend
would happily "decode" a text file through its tty demuxer, so the container is sniffed from the first
bytes first), a container OpenCV cannot open or whose codec it cannot decode, zero frames, a clip
longer than the caller's limits. Frames larger than `max_side` are downscaled (INTER_AREA) and the
caller gets a note.

The writer encodes with the ffmpeg binary that the `imageio-ffmpeg` wheel ships: libx264, yuv420p
(what browsers decode), even width and height (yuv420p needs them), `-movflags +faststart` (the index
at the front, so a browser starts playing before the download ends). It writes to a temporary file
beside the target and renames it only when the clip is complete, so a failure never leaves a
half-written video; `abort()` (or an exception inside the `with`) removes it.
"""
from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np

from .image_io import InputError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".ogv", ".gif")


@dataclass(frozen=True)
class VideoLimits:
    """What a caller accepts. None = no limit. max_frames counts frames *after* the stride."""

    max_seconds: Optional[float] = None
    max_frames: Optional[int] = None
    max_side: Optional[int] = None  # longer side above this is downscaled (a note, not an error)


@dataclass
class VideoInfo:
    """What the container says about a clip (frame_count is the container's estimate)."""

    path: str
    width: int
    height: int
    fps: float
    frame_count: int
    codec: str
    container: str
    notes: List[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


def sniff_container(head: bytes) -> Optional[str]:
    """Container name from a file's first bytes, "image:<kind>" for still images, None if unknown."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "mp4/mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm/mkv"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "mpeg"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "mpeg-ts"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(head) >= 12 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mp4/mov"  # old QuickTime files without an ftyp box
    if head.startswith(b"\x89PNG"):
        return "image:png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image:jpeg"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image:webp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image:tiff"
    if head.startswith(b"BM"):
        return "image:bmp"
    return None


def diagnose(path: str) -> str:
    """Why a clip does not open, from ffmpeg's own reading of the header (`ffmpeg -i`, no decoding):
    "no-video" (no video stream: zero frames, or audio / data only), "codec:<name>" (a video stream whose
    codec ffmpeg does not know: "codec:none"), or "corrupt"."""
    import subprocess

    try:
        import imageio_ffmpeg

        r = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                           capture_output=True, text=True, timeout=20)
    except Exception:  # noqa: BLE001 - a diagnosis is best effort; the caller still raises InputError
        return "corrupt"
    for line in r.stderr.splitlines():
        if "Stream #" in line and "Video:" in line:
            return "codec:" + line.split("Video:", 1)[1].strip().split(" ")[0].split(",")[0].split("(")[0]
    if "Invalid data" in r.stderr or "Invalid" in r.stderr or "error" in r.stderr.lower():
        return "corrupt"
    return "no-video"


def _open(path: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        why = diagnose(path)
        name = Path(path).name
        if why == "no-video":
            raise InputError(f"{name}: the file has no video frames (no video stream); pick a clip with at "
                             "least one frame.")
        if why.startswith("codec:"):
            raise InputError(f"{name}: the video codec ({why[6:]!r}) cannot be decoded here; re-encode the clip "
                             "as H.264 MP4 and try again.")
        raise InputError(f"{name}: the video cannot be read (a truncated or corrupt file); re-encode it as "
                         "H.264 MP4 and try again.")
    return cap


def _fourcc(cap: cv2.VideoCapture) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    s = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return s if s.isprintable() and s.strip() else "unknown"


def downscale_size(width: int, height: int, max_side: Optional[int]) -> Tuple[int, int]:
    """(w, h) with the longer side at most max_side (aspect kept, at least 1 px)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def probe_video(path: os.PathLike, limits: VideoLimits = VideoLimits(), stride: int = 1) -> VideoInfo:
    """Check a clip before any work: it exists, is a video, decodes, has frames, fits `limits`.

    Args:
        path: the clip.
        limits: duration / frame-count (after `stride`) limits and the downscale side.
        stride: every stride-th frame will be used (≥ 1).
    Returns: VideoInfo (notes: the downscale, if any).
    Raises: InputError with a one-line message for each problem listed in the module docstring.
    """
    p = Path(path)
    if stride < 1:
        raise InputError(f"The frame stride must be >= 1, got {stride}.")
    if not p.is_file():
        raise InputError(f"{p}: no such video file; check the path.")
    if p.stat().st_size == 0:
        raise InputError(f"{p.name}: the file is empty (0 bytes); pick a video file (MP4, WebM, MOV, AVI, MKV).")
    with open(p, "rb") as f:
        head = f.read(256)
    kind = sniff_container(head)
    if kind is None:
        raise InputError(f"{p.name}: not a video file (unknown format); pick an MP4, WebM, MOV, AVI or MKV clip.")
    if kind.startswith("image:"):
        raise InputError(f"{p.name}: this is a still image ({kind[6:].upper()}), not a video; segment it with "
                         "--image (or the app's image tab), or pick a clip.")
    cap = _open(str(p))
    try:
        ok, frame = cap.read()
        if not ok or frame is None:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            if n <= 0:
                raise InputError(f"{p.name}: the video has no frames; pick a clip with at least one frame.")
            raise InputError(f"{p.name}: the first frame cannot be decoded (codec {_fourcc(cap)!r} is not "
                             "supported or the file is corrupt); re-encode it as H.264 MP4.")
        height, width = frame.shape[:2]
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            fps = 25.0  # some containers do not store a rate; 25 is ffmpeg's own default
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        count = int(count) if math.isfinite(count) and count > 0 else 0
        info = VideoInfo(str(p), width, height, fps, count, _fourcc(cap), kind)
    finally:
        cap.release()
    check_limits(info, limits, stride)
    w2, h2 = downscale_size(width, height, limits.max_side)
    if (w2, h2) != (width, height):
        info.notes.append(f"frames downscaled from {width}x{height} to {w2}x{h2} (longest side {limits.max_side} px)")
    return info


def check_limits(info: VideoInfo, limits: VideoLimits, stride: int = 1, frames_seen: Optional[int] = None) -> None:
    """InputError when the clip (its container estimate, or `frames_seen` decoded frames) is too long."""
    n = frames_seen if frames_seen is not None else info.frame_count
    if limits.max_seconds is not None and n / info.fps > limits.max_seconds + 1e-6:
        raise InputError(f"{Path(info.path).name}: the clip lasts {n / info.fps:.1f} s, over the "
                         f"{limits.max_seconds:g} s limit; trim it and try again.")
    used = -(-n // stride)
    if limits.max_frames is not None and used > limits.max_frames:
        raise InputError(f"{Path(info.path).name}: {used} frames to segment (of {n}, stride {stride}), over the "
                         f"{limits.max_frames} frame limit; trim the clip or use a larger stride "
                         f"(>= {-(-n // limits.max_frames)}).")


def iter_frames(path: os.PathLike, stride: int = 1, limits: VideoLimits = VideoLimits(),
                info: Optional[VideoInfo] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield (frame index, (H, W, 3) uint8 RGB) for every stride-th frame, downscaled to limits.max_side.

    Frames are decoded one at a time (memory stays bounded). The limits are checked again on the frames
    actually decoded (a container's frame count can be wrong): InputError as soon as one is exceeded.
    A clip that stops decoding mid-way simply ends there (as every player does).
    """
    info = info or probe_video(path, limits, stride)
    size = downscale_size(info.width, info.height, limits.max_side)
    cap = _open(str(path))
    try:
        index = 0
        while True:
            if stride > 1 and index % stride:
                ok = cap.grab()  # skip without converting the frame
                if not ok:
                    break
                index += 1
                continue
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            check_limits(info, limits, stride, frames_seen=index + 1)
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            if (frame.shape[1], frame.shape[0]) != size:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


def read_frames(path: os.PathLike, stride: int = 1, limits: VideoLimits = VideoLimits()) -> List[np.ndarray]:
    """All used frames as a list (short clips and tests; prefer `iter_frames`)."""
    return [f for _, f in iter_frames(path, stride, limits)]


def even_pad(frame: np.ndarray) -> np.ndarray:
    """Pad an (H, W, 3) frame by one replicated row / column where H / W is odd (yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


class Mp4Writer:
    """H.264 / yuv420p / +faststart MP4 writer (imageio-ffmpeg's bundled ffmpeg), atomic on success.

    Args:
        path: the .mp4 to create (its folder is created).
        fps: frames per second (> 0).
        quality: imageio-ffmpeg quality 0..10 (higher = larger files).
    Frames: (H, W, 3) uint8 RGB, all the same size (the first fixes it); odd sizes are padded to even.
    Raises ValueError for a bad frame, RuntimeError if ffmpeg fails (the partial file is removed).
    """

    def __init__(self, path: os.PathLike, fps: float, quality: float = 6.0):
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive number, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.quality = quality
        self.tmp = self.path.with_name(f".{self.path.stem}-{uuid.uuid4().hex[:8]}.tmp.mp4")
        self._gen = None
        self._size: Optional[Tuple[int, int]] = None
        self.frames = 0

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
        frame = even_pad(frame)
        size = (frame.shape[1], frame.shape[0])
        if self._gen is None:
            import imageio_ffmpeg

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = size
            self._gen = imageio_ffmpeg.write_frames(
                str(self.tmp), size, fps=self.fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                quality=self.quality, macro_block_size=2, ffmpeg_log_level="error",
                output_params=["-movflags", "+faststart"])
            self._gen.send(None)
        elif size != self._size:
            raise ValueError(f"frame size {size} differs from the first frame's {self._size}")
        self._gen.send(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and move it into place; returns the path. Raises ValueError with no frames."""
        if self._gen is None:
            raise ValueError("no frame was written; nothing to encode")
        try:
            self._gen.close()
        except Exception as exc:  # ffmpeg died: never leave the partial file
            self._gen = None
            self.tmp.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg failed while encoding {self.path.name}: {exc}") from exc
        self._gen = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop encoding and delete the partial file."""
        if self._gen is not None:
            try:
                self._gen.close()
            except Exception:  # noqa: BLE001 - we are discarding the file anyway
                pass
            self._gen = None
        self.tmp.unlink(missing_ok=True)


__all__ = ["VideoLimits", "VideoInfo", "probe_video", "iter_frames", "read_frames", "check_limits",
           "sniff_container", "diagnose", "downscale_size", "even_pad", "Mp4Writer", "VIDEO_EXTENSIONS"]
