"""The closed vocabulary of each SynthGRES world, as the `ModelVocabulary` a checkpoint stores.

    from train.data.synthgres.world_vocabulary import world_vocabulary, vocabulary_for_config
    world_vocabulary("shapes")   # 8 shapes, 8 colours, spatial / count words
    world_vocabulary("photo")    # the manifest's nouns, taxonomy words and colour words
    world_vocabulary("mixed")    # both, merged

Everything is read from committed sources (vocab.py, the grammar's phrase tables, the photo
manifest): no Debian package is needed to build a vocabulary.
"""

from __future__ import annotations

from typing import Any, Mapping

from mabp.vocabulary import FUNCTION_WORDS, ModelVocabulary

from .grammar import COUNT_WORDS, spatial_phrase_words
from .vocab import COLOURS, PLURAL, SHAPES, SIZE_WORDS

WORLD_NAMES = ("shapes", "photo", "mixed")


def _spatial_words() -> tuple[str, ...]:
    """Content words of the region, relation and extreme phrases ("left", "corner", "above", ...)."""
    return tuple(w for w in spatial_phrase_words() if w not in FUNCTION_WORDS)


def _common_other() -> tuple[str, ...]:
    sizes = [w for ws in SIZE_WORDS.values() for w in ws]
    return tuple(dict.fromkeys([*sizes, "everything", "except"]))


def shapes_world_vocabulary() -> ModelVocabulary:
    """The shapes world: 8 shapes (generic noun "shape"), 8 colours, size / spatial / count words."""
    return ModelVocabulary(
        worlds=("shapes",), nouns=tuple(SHAPES), plurals={s: PLURAL[s] for s in (*SHAPES, "shape")},
        colours=tuple(COLOURS), spatial=_spatial_words(), count_words=("both", *COUNT_WORDS.values()),
        taxonomy={"shape": list(SHAPES)}, other=_common_other())


def photo_world_vocabulary(photographic_only: bool = False, manifest: str | None = None) -> ModelVocabulary:
    """The photo world: the manifest's nouns and plurals, taxonomy word -> nouns (a noun that is also a
    taxonomy word, "fish", covers its hyponyms too), the colour words stamps carry, and "object".

    Raises:
        PhotoWorldUnavailable: the committed manifest is missing or malformed.
    """
    from .photo import load_manifest

    stamps = [s for s in load_manifest(manifest) if s.photographic or not photographic_only]
    nouns = tuple(sorted({s.noun for s in stamps}))
    plurals = {s.noun: s.plural for s in stamps}
    taxonomy: dict[str, list[str]] = {}
    for s in sorted(stamps, key=lambda s: s.noun):
        for g in s.groups:
            if s.noun not in taxonomy.setdefault(g, []):
                taxonomy[g].append(s.noun)
    from .photo import plural_of

    for g in taxonomy:
        plurals.setdefault(g, plural_of(g))
    plurals["object"] = "objects"
    taxonomy["object"] = list(nouns)
    colours = tuple(c for c in COLOURS if any(s.colour == c for s in stamps))
    return ModelVocabulary(worlds=("photo",), nouns=nouns, plurals=plurals, colours=colours,
                           spatial=_spatial_words(), count_words=("both", *COUNT_WORDS.values()),
                           taxonomy=taxonomy, other=_common_other())


def world_vocabulary(world: str, photographic_only: bool = False) -> ModelVocabulary:
    """The vocabulary of a SynthGRES world: "shapes", "photo" or "mixed" (the two merged).

    Raises:
        ValueError: unknown world.
    """
    if world == "shapes":
        return shapes_world_vocabulary()
    if world == "photo":
        return photo_world_vocabulary(photographic_only)
    if world == "mixed":
        return shapes_world_vocabulary().merged(photo_world_vocabulary(photographic_only))
    raise ValueError(f"unknown SynthGRES world {world!r}; expected one of {WORLD_NAMES}")


def vocabulary_for_config(train_config: Mapping[str, Any] | None) -> ModelVocabulary | None:
    """The vocabulary a training config's data teaches, or None when it is not a SynthGRES world
    (real datasets have an open vocabulary).  Reads data.dataset and data.kwargs.world /
    data.kwargs.photographic_only; a SynthGRES config without a world is the shapes world."""
    if not isinstance(train_config, Mapping):
        return None
    data = train_config.get("data") or {}
    if str(data.get("dataset", "")).lower() != "synthgres":
        return None
    kw = data.get("kwargs") or {}
    return world_vocabulary(str(kw.get("world", "shapes")), bool(kw.get("photographic_only", False)))
