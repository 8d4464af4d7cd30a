"""Assets of the SynthGRES photo world: the stamp manifest, stamp / background loading and caching.

The photo world (README, "The SynthGRES photo world") pastes photographic cut-outs from Debian's
`tuxpaint-stamps-default` (RGBA PNGs: alpha = exact mask) onto photo backgrounds from
`mate-backgrounds` / `gnome-backgrounds` and SynthGRES's procedural backgrounds.  Nothing of these
packages is committed: the committed manifest (`photo_manifest.json`) only records facts about the
stamps (relative path, noun, plural, taxonomy, photographic or not, colour word, split), and the
images are read from the install path at run time (override: $MABP_TUXPAINT_STAMPS,
$MABP_BACKGROUNDS, or `PhotoAssets(stamps_dir=..., background_dirs=...)`).

Decoded stamps are cached per process at a few fixed scales (a "pyramid"), so that pasting a stamp at
scene scale is one small `cv2.resize` from the nearest larger level.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

MANIFEST_PATH = Path(__file__).resolve().parent / "photo_manifest.json"
DEBIAN_PACKAGES: tuple[str, ...] = ("tuxpaint-stamps-default", "mate-backgrounds", "gnome-backgrounds")
DEFAULT_STAMPS_DIRS: tuple[str, ...] = ("/usr/share/tuxpaint/stamps", "/usr/local/share/tuxpaint/stamps")
DEFAULT_BACKGROUND_DIRS: tuple[str, ...] = ("/usr/share/backgrounds/mate/nature", "/usr/share/backgrounds/gnome")
STAMPS_ENV, BACKGROUNDS_ENV = "MABP_TUXPAINT_STAMPS", "MABP_BACKGROUNDS"
# Background photos that show referable objects (elephants, a ladybird, a butterfly, flowers) or
# flat graphics: a background must never contain something an expression could name.
EXCLUDED_BACKGROUNDS: frozenset[str] = frozenset({
    "Elephants.jpg", "LadyBird.jpg", "TwoWings.jpg", "FreshFlower.jpg", "YellowFlower.jpg", "Garden.jpg",
})
BACKGROUND_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# Longest side of each cached level of a stamp (px).  Scenes paste at 0.18-0.5 * min(W, H), i.e.
# 58-160 px at 320^2; larger canvases use the largest level.
PYRAMID = (96, 192, 384)
BACKGROUND_SIDE = 512  # cached backgrounds are resized so that their short side is this


class PhotoWorldUnavailable(RuntimeError):
    """The photo world's Debian packages (or its manifest) are missing; the message says what to install."""


_IRREGULAR = {"sheep": "sheep", "fish": "fish", "deer": "deer", "reindeer": "reindeer", "mouse": "mice",
              "goose": "geese", "bison": "bison", "cherries": "cherries", "grapes": "grapes",
              "scissors": "scissors", "pliers": "pliers", "binoculars": "binoculars", "corn": "corn",
              "broccoli": "broccoli", "garlic": "garlic", "lettuce": "lettuce", "squash": "squashes",
              "yak": "yaks", "tooth": "teeth", "woodlouse": "woodlice", "guinea fowl": "guinea fowl",
              "chili": "chilies", "moth": "moths", "pudding": "puddings", "toolbox": "toolboxes"}
# Plural-only nouns whose singular form already denotes one object ("the grapes" = one bunch).
PLURALE_TANTUM = frozenset({"cherries", "grapes", "scissors", "pliers", "binoculars"})


def plural_of(noun: str) -> str:
    """English plural of a (possibly multi-word) noun: the head word is inflected ("sea lion" -> "sea lions")."""
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    head, _, rest = noun.rpartition(" ")
    if rest in _IRREGULAR:
        return f"{head} {_IRREGULAR[rest]}".strip()
    w = rest
    if w.endswith(("s", "x", "z", "ch", "sh")):
        p = w + "es"
    elif w.endswith("y") and w[-2:-1] not in "aeiou":
        p = w[:-1] + "ies"
    elif w.endswith("o") and w in ("tomato", "potato", "mango"):
        p = w + "es"
    elif w.endswith("f") and w in ("calf", "wolf", "leaf"):
        p = w[:-1] + "ves"
    else:
        p = w + "s"
    return f"{head} {p}".strip()


@dataclass(frozen=True)
class Stamp:
    """One manifest entry (facts only).  `groups` are taxonomy words ("animal", "bird")."""

    index: int
    path: str
    noun: str
    plural: str
    groups: tuple[str, ...]
    top: str
    photographic: bool
    colour: str | None
    split: str
    colour_shares: tuple[tuple[str, float], ...] = ()

    def shows(self, colour: str, tolerance: float = 0.1) -> bool:
        """True when >= `tolerance` of the visible pixels show `colour` (a person could call it that)."""
        return any(c == colour and v >= tolerance for c, v in self.colour_shares)

    @property
    def categories(self) -> frozenset[str]:
        """Every category word that names this stamp: its noun and its taxonomy words."""
        return frozenset((self.noun, *self.groups))


@lru_cache(maxsize=4)
def load_manifest(path: str | None = None) -> tuple[Stamp, ...]:
    """The manifest's stamps (committed JSON; no Debian package needed to read it).

    Raises:
        PhotoWorldUnavailable: the manifest file is missing or malformed.
    """
    p = Path(path) if path else MANIFEST_PATH
    try:
        data = json.loads(p.read_text())
        return tuple(Stamp(index=i, path=e["path"], noun=e["noun"], plural=e["plural"],
                           groups=tuple(e["groups"]), top=e["top"], photographic=bool(e["photographic"]),
                           colour=e["colour"], split=e["split"],
                           colour_shares=tuple(sorted(e.get("colour_shares", {}).items())))
                     for i, e in enumerate(data["stamps"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PhotoWorldUnavailable(f"photo-world manifest {p} is missing or malformed ({exc}); rebuild it with "
                                    f"scripts/build_photo_manifest.py") from exc


@lru_cache(maxsize=4)
def drawn_only_nouns(manifest: str | None = None) -> frozenset[str]:
    """The nouns the photo world shows only as drawings, never as photographs ("cat", "cup", "spoon" in
    the committed manifest). Raises PhotoWorldUnavailable when the manifest is missing or malformed."""
    stamps = load_manifest(manifest)
    photographed = {st.noun for st in stamps if st.photographic}
    return frozenset(st.noun for st in stamps if st.noun not in photographed)


def drawn_only_nouns_in(text: str, manifest: str | None = None) -> list[str]:
    """The nouns of `text` that the photo world shows only as drawings (`drawn_only_nouns`).

    A model trained on the photo world "knows" such a noun without having seen a photographed one,
    which matters when it is tried on real photographs.
    Matches whole words, singular or plural, multi-word nouns included ("vacuum cleaner").
    Returns the nouns (singular) in the order of the manifest; [] when none.
    Raises:
        PhotoWorldUnavailable: the manifest is missing or malformed.
    """
    words = " " + " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) + " "
    drawn = drawn_only_nouns(manifest)
    found: list[str] = []
    for st in load_manifest(manifest):
        if st.noun in drawn and st.noun not in found and (f" {st.noun} " in words or f" {st.plural} " in words):
            found.append(st.noun)
    return found


def _install_hint() -> str:
    return ("install the photo world's Debian packages: sudo apt-get install -y " + " ".join(DEBIAN_PACKAGES)
            + f" (or point ${STAMPS_ENV} / ${BACKGROUNDS_ENV} at copies)")


def find_stamps_dir(stamps_dir: str | None = None) -> Path:
    """The stamps root: the argument, $MABP_TUXPAINT_STAMPS, or the Debian install path.

    Raises:
        PhotoWorldUnavailable: no stamps folder exists (the message names the packages to install).
    """
    cands = [stamps_dir] if stamps_dir else ([os.environ[STAMPS_ENV]] if os.environ.get(STAMPS_ENV) else
                                            list(DEFAULT_STAMPS_DIRS))
    for c in cands:
        if c and Path(c).is_dir():
            return Path(c)
    raise PhotoWorldUnavailable(f"the photo world needs the tuxpaint stamps (looked in {', '.join(map(str, cands))}); "
                                + _install_hint())


def find_background_files(background_dirs: tuple[str, ...] | list[str] | None = None) -> list[Path]:
    """Background photos (sorted, excluded names removed); may be empty (procedural backgrounds only)."""
    if background_dirs is None:
        env = os.environ.get(BACKGROUNDS_ENV)
        background_dirs = tuple(env.split(os.pathsep)) if env else DEFAULT_BACKGROUND_DIRS
    out: list[Path] = []
    for d in background_dirs:
        p = Path(d)
        if p.is_dir():
            out += [f for f in p.iterdir() if f.suffix.lower() in BACKGROUND_EXTENSIONS
                    and f.name not in EXCLUDED_BACKGROUNDS]
    return sorted(out)


SVG_LONGEST = 384  # drawn (SVG) stamps are rasterised once at this longer side, then cached like PNGs


def render_svg(path: Path, longest: int = SVG_LONGEST) -> np.ndarray:
    """Rasterise an SVG stamp with resvg (PyPI `resvg-py`) so that its longer side is `longest` px.

    Returns (H, W, 4) uint8 RGBA.

    Raises:
        PhotoWorldUnavailable: resvg-py is not installed, or the file cannot be rendered.
    """
    try:
        import resvg_py
    except ImportError as exc:  # pragma: no cover - requirements.txt installs it
        raise PhotoWorldUnavailable("drawn (SVG) stamps need the SVG renderer: pip install resvg-py") from exc
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        # Old Sodipodi drawings size the root in "pt" without a viewBox, which resvg rejects; their
        # coordinates are in user units of that size, so the unit is simply dropped.
        root = re.search(r"<svg\b[^>]*>", text)
        if root and "viewBox" not in root.group(0):
            fixed = re.sub(r'((?:width|height)="[0-9.]+)pt"', r'\1"', root.group(0))
            text = text[:root.start()] + fixed + text[root.end():]
        png = resvg_py.svg_to_bytes(svg_string=text, width=longest, skip_system_fonts=True)
        im = cv2.imdecode(np.frombuffer(bytes(png), np.uint8), cv2.IMREAD_UNCHANGED)
        if im is not None and im.shape[0] > im.shape[1]:  # portrait: the height is the longer side
            png = resvg_py.svg_to_bytes(svg_string=text, height=longest, skip_system_fonts=True)
            im = cv2.imdecode(np.frombuffer(bytes(png), np.uint8), cv2.IMREAD_UNCHANGED)
    except (ValueError, OSError) as exc:
        raise PhotoWorldUnavailable(f"cannot render {path}: {exc}") from exc
    if im is None:
        raise PhotoWorldUnavailable(f"cannot render {path}")
    return cv2.cvtColor(im, cv2.COLOR_BGRA2RGBA)


def read_rgba(path: Path) -> np.ndarray:
    """(H, W, 4) uint8 RGBA of an image file (grey / RGB get an opaque alpha; 16-bit is reduced;
    SVG is rasterised with `render_svg`).

    Raises:
        PhotoWorldUnavailable: the file is missing or unreadable.
    """
    if Path(path).suffix.lower() == ".svg":
        return render_svg(Path(path))
    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if im is None:
        raise PhotoWorldUnavailable(f"cannot read {path}; " + _install_hint())
    if im.dtype != np.uint8:
        im = (im.astype(np.float32) / 257.0).round().astype(np.uint8)
    if im.ndim == 2:
        im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGRA)
    elif im.shape[2] == 3:
        im = cv2.cvtColor(im, cv2.COLOR_BGR2BGRA)
    return cv2.cvtColor(im, cv2.COLOR_BGRA2RGBA)


def _trim(rgba: np.ndarray) -> np.ndarray:
    """Crop to the bounding box of alpha >= 128 (stamps come with wide transparent margins)."""
    ys, xs = np.nonzero(rgba[..., 3] >= 128)
    if len(xs) == 0:
        return rgba
    return rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


class PhotoAssets:
    """Per-process cache of decoded stamps (a small pyramid per stamp) and backgrounds.

    Args:
        stamps_dir: stamps root (default: $MABP_TUXPAINT_STAMPS or the Debian path).
        background_dirs: folders of background photos (default: $MABP_BACKGROUNDS or the Debian paths).
        manifest: manifest JSON path (default: the committed one).

    Raises:
        PhotoWorldUnavailable: stamps folder or manifest missing, or no manifest stamp found on disk.
    """

    def __init__(self, stamps_dir: str | None = None, background_dirs: tuple[str, ...] | None = None,
                 manifest: str | None = None) -> None:
        self.stamps_dir = find_stamps_dir(stamps_dir)
        self.stamps = load_manifest(manifest)
        missing = [s.path for s in self.stamps if not (self.stamps_dir / s.path).is_file()]
        if len(missing) == len(self.stamps):
            raise PhotoWorldUnavailable(f"none of the manifest's stamps is under {self.stamps_dir}; "
                                        + _install_hint())
        if missing:
            raise PhotoWorldUnavailable(f"{len(missing)} manifest stamps are missing under {self.stamps_dir} "
                                        f"(e.g. {missing[0]}): a different tuxpaint-stamps version? "
                                        "Rebuild the manifest with scripts/build_photo_manifest.py")
        self.background_files = find_background_files(background_dirs)
        self._levels: dict[int, tuple[np.ndarray, ...]] = {}
        self._backgrounds: dict[int, np.ndarray] = {}
        self._lexicons: dict[bool, object] = {}

    def lexicon(self, photographic_only: bool = False):
        """The PhotoLexicon (nouns, taxonomy, plurals) of the usable stamps, cached."""
        hit = self._lexicons.get(bool(photographic_only))
        if hit is None:
            from .photo_grammar import PhotoLexicon

            hit = self._lexicons[bool(photographic_only)] = PhotoLexicon(
                tuple(s for s in self.stamps if s.photographic or not photographic_only))
        return hit

    def levels(self, index: int) -> tuple[np.ndarray, ...]:
        """The cached pyramid of stamp `index`: RGBA uint8 arrays, longest side = PYRAMID[i] (or less)."""
        hit = self._levels.get(index)
        if hit is None:
            rgba = _trim(read_rgba(self.stamps_dir / self.stamps[index].path))
            out = []
            for side in PYRAMID:
                s = min(1.0, side / max(rgba.shape[:2]))
                size = (max(1, round(rgba.shape[1] * s)), max(1, round(rgba.shape[0] * s)))
                out.append(cv2.resize(rgba, size, interpolation=cv2.INTER_AREA) if s < 1 else rgba)
            hit = self._levels[index] = tuple(out)
        return hit

    def stamp_at(self, index: int, longest: int) -> np.ndarray:
        """Stamp `index` resized so that its longer side is `longest` px (RGBA uint8)."""
        for lv in self.levels(index):
            if max(lv.shape[:2]) >= longest or lv is self.levels(index)[-1]:
                break
        h, w = lv.shape[:2]
        s = longest / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        return cv2.resize(lv, size, interpolation=interp)

    def background(self, index: int) -> np.ndarray:
        """Background photo `index` (RGB uint8, short side BACKGROUND_SIDE), cached."""
        hit = self._backgrounds.get(index)
        if hit is None:
            rgb = read_rgba(self.background_files[index])[..., :3]
            s = BACKGROUND_SIDE / min(rgb.shape[:2])
            size = (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s)))
            hit = self._backgrounds[index] = np.ascontiguousarray(
                cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
        return hit


_ASSETS: dict[tuple, PhotoAssets] = {}


def get_assets(stamps_dir: str | None = None, background_dirs: tuple[str, ...] | None = None,
               manifest: str | None = None) -> PhotoAssets:
    """The process-wide PhotoAssets for these locations (created once, then cached)."""
    key = (stamps_dir or os.environ.get(STAMPS_ENV), background_dirs or os.environ.get(BACKGROUNDS_ENV), manifest)
    hit = _ASSETS.get(key)
    if hit is None:
        hit = _ASSETS[key] = PhotoAssets(stamps_dir, background_dirs, manifest)
    return hit


def pack_assets(dest: str | os.PathLike, assets: PhotoAssets | None = None) -> dict[str, int]:
    """Copy what the photo world reads into `dest`, for a machine without the Debian packages.

    dest/stamps/<manifest paths>      the stamp files, byte for byte (+ their caption .txt)
    dest/backgrounds/NNN_<name>.png   each background exactly as cached (short side 512, lossless)

    With MABP_TUXPAINT_STAMPS=dest/stamps and MABP_BACKGROUNDS=dest/backgrounds the generated samples
    are identical to those made from the packages (~14 MB of stamps + ~25 MB of backgrounds).
    Returns {"stamps": n, "backgrounds": n, "bytes": total}.
    """
    import shutil

    assets = assets or get_assets()
    dest = Path(dest)
    total = 0
    for st in assets.stamps:
        src = assets.stamps_dir / st.path
        out = dest / "stamps" / st.path
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
        total += out.stat().st_size
        if src.with_suffix(".txt").is_file():
            shutil.copyfile(src.with_suffix(".txt"), out.with_suffix(".txt"))
    bg_dir = dest / "backgrounds"
    bg_dir.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(assets.background_files):  # the index prefix keeps the sorted order
        out = bg_dir / f"{i:03d}_{f.stem}.png"
        cv2.imwrite(str(out), assets.background(i)[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
        total += out.stat().st_size
    return {"stamps": len(assets.stamps), "backgrounds": len(assets.background_files), "bytes": total}


def photo_world_available() -> bool:
    """True when the photo world can run here (stamps found, manifest readable)."""
    try:
        get_assets()
        return True
    except PhotoWorldUnavailable:
        return False
