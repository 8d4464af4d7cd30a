"""Reading image files (uploads in the app, paths in the CLIs) into RGB uint8 arrays, with a clear
InputError for anything bad.

The header is read first (Pillow opens lazily), so a 12000 x 12000 upload, or a decompression bomb, is
refused before a single pixel is decoded. EXIF orientation is applied.

Decision on huge images: REFUSE above the predictor's limit (mabp.image_io.DEFAULT_MAX_PIXELS, 40 MP)
with a message that says the size and the limit. Downscaling silently would change the "original
resolution" the mask is returned at, and decoding 144 MP just to shrink it costs ~0.5 GB per request.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import cv2
import numpy as np

from mabp.image_io import DEFAULT_MAX_PIXELS, InputError, to_rgb_uint8

FORMATS_HINT = "PNG, JPEG, BMP, TIFF, WebP or GIF"
# libjpeg reports damaged data only as warnings printed on the process's stderr ("Corrupt JPEG data:
# ...", "Premature end of JPEG file") and still returns a picture, garbled from the damage on.
_JPEG_FATAL = ("Premature end of JPEG file",)
_JPEG_WARNING = ("Corrupt JPEG data", "Premature end of JPEG file", "Invalid JPEG", "Warning: ")
_STDERR_LOCK = threading.Lock()


def _decode_jpeg_reporting(data: bytes) -> Tuple[Optional[np.ndarray], List[str]]:
    """cv2.imdecode of JPEG bytes, with libjpeg's warnings captured (fd 2 is pointed at a temporary
    file for the call, under a lock; anything else written to stderr meanwhile is passed on)."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", errors="replace")
    found, other = [], []
    for line in text.splitlines():
        (found if line.strip().startswith(_JPEG_WARNING) else other).append(line)
    if other:
        os.write(2, ("\n".join(other) + "\n").encode())
    return arr, list(dict.fromkeys(line.strip() for line in found))


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _exif_orientation(im: Any) -> int:
    try:
        return int(im.getexif().get(274, 1))  # 274 = Orientation
    except Exception:  # a broken EXIF block is not worth refusing the image for
        return 1


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip as EXIF says, so the mask lines up with what the browser shows."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
           8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def conversion_notes(arr: np.ndarray) -> List[str]:
    """What to_rgb_uint8 will change about a decoded array, said to the user (accepted, not refused)."""
    notes = []
    if arr.dtype == np.uint16:
        notes.append("16-bit image reduced to 8 bits per channel")
    elif arr.dtype != np.uint8:
        notes.append(f"{arr.dtype} pixels converted to 8 bits")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
        notes.append("grayscale image used as RGB")
    elif arr.ndim == 3 and arr.shape[2] == 4:
        notes.append("transparent areas composited over white")
    return notes


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "the file",
                       notes: Optional[List[str]] = None) -> np.ndarray:
    """Decode image bytes to (H, W, 3) uint8 RGB. Grayscale, RGBA (composited over white) and 16-bit
    are converted by mabp.image_io.to_rgb_uint8 (what changed is appended to `notes`). Raises
    InputError with a user-facing message."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(f"{name} is empty (0 bytes): upload an image ({FORMATS_HINT}).")
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we check the size ourselves
            im = Image.open(io.BytesIO(data))
            w, h = im.size
    except Image.DecompressionBombError:
        raise InputError(f"{name} is far too large to open safely (over {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} MP); "
                         f"the limit is {max_pixels / 1e6:.0f} MP. Downscale it and try again.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"{name} is not an image that can be read (expected {FORMATS_HINT}), "
                         "or the file is corrupted.") from None
    if w * h > max_pixels:
        raise InputError(f"The image is too large ({w}x{h} = {w * h / 1e6:.0f} MP; the limit is "
                         f"{max_pixels / 1e6:.0f} MP). Downscale it and try again.")
    if w == 0 or h == 0:
        raise InputError(f"The image is empty ({w}x{h} pixels).")
    orientation = _exif_orientation(im)
    # OpenCV first: it keeps 16-bit PNG/TIFF as uint16 (Pillow flattens them to 32-bit ints "I").
    if _is_jpeg(data):
        arr, problems = _decode_jpeg_reporting(data)
        if any(p.startswith(_JPEG_FATAL) for p in problems):
            raise InputError(f"{name} is a truncated JPEG (the decoder says: {problems[0]}): part of the picture "
                             "is missing. Upload the complete file.")
        if problems and notes is not None:
            notes.append(f"the JPEG data is damaged, parts of the picture may be garbled (the decoder says: "
                         f"{problems[0]})")
    else:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and arr.shape[:2] == (h, w):
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    else:  # GIF, palette oddities, or a file OpenCV only half-read: let Pillow decode fully
        try:
            im.load()
            mode = "RGBA" if im.mode in ("RGBA", "LA", "P", "PA") else "RGB"
            arr = np.asarray(im.convert(mode))
        except Exception:
            raise InputError(f"{name} could not be decoded: the image data is truncated or corrupted.") from None
    arr = _apply_orientation(arr, orientation)
    if notes is not None:
        notes.extend(conversion_notes(arr))
    return to_rgb_uint8(arr, max_pixels)


def read_image_file(path: Union[str, os.PathLike], max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_bytes: int = 200 * 1024 * 1024, notes: Optional[List[str]] = None) -> np.ndarray:
    """Read an image file (see decode_image_bytes). Missing, unreadable or huge files -> InputError."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"The image file {p.name} does not exist (or was removed): give it again.")
    size = p.stat().st_size
    if size > max_bytes:
        raise InputError(f"The file is too large ({size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB).")
    return decode_image_bytes(p.read_bytes(), max_pixels, name="The file", notes=notes)


def load_image(source: Any, max_pixels: int = DEFAULT_MAX_PIXELS, notes: Optional[List[str]] = None) -> np.ndarray:
    """A path, an array or a PIL image -> (H, W, 3) uint8 RGB; None -> InputError 'no image'."""
    if source is None or (isinstance(source, str) and not source.strip()):
        raise InputError("No image was given: upload an image, pick an example or make a random scene.")
    if isinstance(source, dict) and "path" in source:  # a FileData-like dict from an API caller
        source = source["path"]
    if isinstance(source, (str, os.PathLike)):
        return read_image_file(source, max_pixels, notes=notes)
    if notes is not None and isinstance(source, np.ndarray):
        notes.extend(conversion_notes(source))
    return to_rgb_uint8(source, max_pixels)


def image_digest(rgb: np.ndarray) -> str:
    """Content key of a decoded image: the same picture uploaded twice re-uses the cached encoding."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


def size_of(rgb: np.ndarray) -> Tuple[int, int]:
    return int(rgb.shape[0]), int(rgb.shape[1])
