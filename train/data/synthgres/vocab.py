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


def shapes_vocabulary():
    """The closed vocabulary of the SynthGRES shapes world as a `mabp.vocabulary.ModelVocabulary`.

    For checkpoints trained on SynthGRES that predate the `"vocabulary"` checkpoint key: the app lists
    these words and warns when an expression uses none of them. Spatial words are every word of the
    grammar's region, extreme and relation phrases that is not a function word ("the", "of").
    """
    from mabp.vocabulary import FUNCTION_WORDS, ModelVocabulary

    from .grammar import COUNT_WORDS, EXTREME_ONE, EXTREME_PHRASES, REGION_PHRASES, RELATION_PHRASES, VOCABULARY

    spatial: list[str] = []
    for table in (REGION_PHRASES, RELATION_PHRASES, EXTREME_ONE):
        for phrases in table.values():
            for phrase in phrases:
                spatial.extend(phrase.split())
    for phrases in EXTREME_PHRASES.values():
        for _where, phrase in phrases:
            spatial.extend(phrase.split())
    spatial = [w for w in dict.fromkeys(spatial) if w not in FUNCTION_WORDS]
    counts = [*COUNT_WORDS.values(), "both"]
    sizes = [w for ws in SIZE_WORDS.values() for w in ws]
    nouns = [*SHAPES, "shape"]
    listed = set(nouns) | set(PLURAL.values()) | set(COLOURS) | set(spatial) | set(counts) | set(sizes)
    other = sizes + sorted(w for w in VOCABULARY if w not in listed and w not in FUNCTION_WORDS)
    return ModelVocabulary(worlds=("shapes",), nouns=tuple(nouns), plurals=dict(PLURAL), colours=COLOURS,
                           spatial=tuple(spatial), count_words=tuple(counts), other=tuple(other))
