"""Clip reading and H.264 writing (mabp/video_io.py): the written file decodes again with the right frame
count, size, codec and pixel format; every kind of bad clip is a one-line InputError; nothing half-written."""
from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from mabp.image_io import InputError
from mabp.video_io import (Mp4Writer, VideoLimits, even_pad, iter_frames, probe_video, read_frames,
                           sniff_container)


def ramp_frames(n: int, h: int, w: int) -> list:
    """Frames whose brightness encodes their index (so order and count survive lossy coding)."""
    return [np.full((h, w, 3), 20 + 20 * i, np.uint8) for i in range(n)]


def write(path: Path, frames: list, fps: float = 10.0) -> Path:
    with Mp4Writer(path, fps=fps) as w:
        for f in frames:
            w.write(f)
    return path


def ffmpeg(*args: str, stdin: bytes = b"") -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args],
                   input=stdin, check=True, capture_output=True)


def test_written_mp4_decodes_with_the_right_count_size_and_codec(tmp_path):
    import imageio_ffmpeg

    frames = ramp_frames(7, 33, 50)  # odd height: padded to 34 for yuv420p
    path = write(tmp_path / "out.mp4", frames)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary file left
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    decoded = read_frames(path)
    assert len(decoded) == 7 and decoded[0].shape == (34, 50, 3)
    means = [float(f[:33].mean()) for f in decoded]
    assert np.allclose(means, [20 + 20 * i for i in range(7)], atol=3)  # order and content survive
    meta = next(imageio_ffmpeg.read_frames(str(path)))
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 10.0
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and 0 < data.find(b"moov") < data.find(b"mdat")  # +faststart: index first


def test_writer_is_atomic_and_checks_frames(tmp_path):
    target = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(target, fps=5) as w:
            w.write(ramp_frames(1, 16, 16)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    w = Mp4Writer(target, fps=5)
    w.write(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        w.write(np.zeros((18, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        w.write(np.zeros((16, 16), np.float32))
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frame"):
        Mp4Writer(target, fps=5).close()
    with pytest.raises(ValueError, match="fps"):
        Mp4Writer(target, fps=0)
    assert even_pad(np.zeros((3, 5, 3), np.uint8)).shape == (4, 6, 3)


def test_stride_downscale_and_limits(tmp_path):
    path = write(tmp_path / "c.mp4", ramp_frames(10, 60, 100))
    info = probe_video(path)
    assert (info.width, info.height, info.frame_count, info.fps, info.codec) == (100, 60, 10, 10.0, "h264")
    got = list(iter_frames(path, stride=3))
    assert [i for i, _ in got] == [0, 3, 6, 9]
    small = probe_video(path, VideoLimits(max_side=50))
    assert small.notes and "downscaled from 100x60 to 50x30" in small.notes[0]
    assert read_frames(path, limits=VideoLimits(max_side=50))[0].shape == (30, 50, 3)
    with pytest.raises(InputError, match=r"lasts 1\.0 s, over the 0\.5 s limit"):
        probe_video(path, VideoLimits(max_seconds=0.5))
    with pytest.raises(InputError, match=r"10 frames to segment .* over the 4 frame limit; .* stride \(>= 3\)"):
        probe_video(path, VideoLimits(max_frames=4))
    assert probe_video(path, VideoLimits(max_frames=4), stride=3).frame_count == 10  # 4 frames after stride
    with pytest.raises(InputError, match="stride must be >= 1"):
        probe_video(path, stride=0)


@pytest.fixture(scope="module")
def bad_clips(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad")
    good = write(d / "good.mp4", ramp_frames(3, 48, 64))
    files = {"missing": d / "missing.mp4"}
    files["empty"] = d / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["text"] = d / "notes.mp4"
    files["text"].write_text("not a video at all\n" * 20)
    files["image"] = d / "still.mp4"
    cv2.imwrite(str(d / "still.png"), np.zeros((8, 8, 3), np.uint8))
    files["image"].write_bytes((d / "still.png").read_bytes())
    files["truncated"] = d / "truncated.mp4"
    files["truncated"].write_bytes(good.read_bytes()[:300])
    files["zero"] = d / "zero.mp4"  # a valid MP4 container holding no frame
    ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "16x16", "-r", "10", "-i", "-", "-frames:v", "0",
           "-c:v", "libx264", str(files["zero"]), stdin=bytes(16 * 16 * 3))
    # A Matroska file whose codec id is unknown (the H.264 stream relabelled): a codec nobody decodes.
    ffmpeg("-i", str(good), "-c", "copy", str(d / "good.mkv"))
    data = (d / "good.mkv").read_bytes()
    assert b"V_MPEG4/ISO/AVC" in data
    files["codec"] = d / "codec.mkv"
    files["codec"].write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/QQQ"))
    return files


@pytest.mark.parametrize("kind, needle", [
    ("missing", "no such video file"),
    ("empty", "the file is empty"),
    ("text", "not a video file"),
    ("image", "still image (PNG), not a video"),
    ("truncated", "truncated or corrupt"),
    ("zero", "no video frames"),
    ("codec", "codec ('none') cannot be decoded"),
])
def test_bad_clips_give_one_line_errors(bad_clips, kind, needle):
    with pytest.raises(InputError) as exc:
        probe_video(bad_clips[kind])
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg


def test_sniffing():
    assert sniff_container(b"\x00\x00\x00\x18ftypmp42" + bytes(8)) == "mp4/mov"
    assert sniff_container(b"\x1a\x45\xdf\xa3" + bytes(8)) == "webm/mkv"
    assert sniff_container(b"RIFF\x00\x00\x00\x00AVI LIST") == "avi"
    assert sniff_container(b"\xff\xd8\xff\xe0" + bytes(8)) == "image:jpeg"
    assert sniff_container(b"hello world, this is text") is None
