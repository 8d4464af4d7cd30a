"""Closed vocabulary and fixed constants of SynthGRES (the spec is this package's docstrings and the README's SynthGRES section).

Everything that defines the *world* lives here so that the scene generator, the expression grammar,
the exporter and the tests agree on one source of truth.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond", "cross", "ring")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES: tuple[str, ...] = ("small", "large")

# Plural nouns; "shape" is the generic noun used when an expression does not name the shape.
PLURAL: dict[str, str] = {
    "circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
    "heart": "hearts", "diamond": "diamonds", "cross": "crosses", "ring": "rings", "shape": "shapes",
}
SINGULAR: dict[str, str] = {v: k for k, v in PLURAL.items()}

# Surface words for the size classes.  "big" and "large" are synonyms so that a model cannot key on
# one token; the parser in the tests maps both back to "large".
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small",), "large": ("big", "large")}
SIZE_OF_WORD: dict[str, str] = {"small": "small", "big": "large", "large": "large"}

# Saturated reference colours (RGB).  Hues are spread so that a small per-object jitter never
# crosses into a neighbouring colour name (orange/yellow, cyan/blue, purple/pink are the risky pairs).
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (45, 165, 60),
    "cyan": (35, 195, 215),
    "blue": (35, 75, 215),
    "purple": (135, 55, 190),
    "pink": (245, 115, 185),
}

# testA (composition): these 8 (colour, shape) pairs never occur in train/val images.  Each colour and
# each shape is held out exactly once, so every word is still seen in training with 7 partners.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "star"), ("orange", "ring"), ("yellow", "heart"), ("green", "triangle"),
    ("cyan", "square"), ("blue", "cross"), ("purple", "circle"), ("pink", "diamond"),
})

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
# Split codes make image/ref/annotation ids unique across splits, so several exported splits can
# share one gRefCOCO-style directory.
SPLIT_CODE: dict[str, int] = {"train": 1, "val": 2, "testA": 3, "testB": 4}
FIXED_SPLIT_LENGTH = 2000  # expressions in val / testA / testB
DEFAULT_TRAIN_LENGTH = 20000  # train epoch length (the train stream itself is unlimited)
IMAGE_ID_STRIDE = 10_000_000  # image_id = code * stride + image_index
REF_ID_STRIDE = 100_000_000  # ref_id = sent_id = code * stride + sample index

# Region names used by halves/corners; they double as the meaning-structure keys.
HALVES: tuple[str, ...] = ("left half", "right half", "top half", "bottom half")
CORNERS: tuple[str, ...] = ("top left corner", "top right corner", "bottom left corner", "bottom right corner")
SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")

MAX_WORDS = 16
