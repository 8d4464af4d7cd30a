"""What a trained model has seen: the words of its training world(s), stored inside its checkpoint.

A model trained on a closed generated world (SynthGRES shapes / photo) knows only that world's nouns,
colours, spatial and count words; an expression with none of them is outside what it learned, and the
app says so next to the answer. Checkpoints store the vocabulary as a plain dict under the key
`"vocabulary"` (`ModelVocabulary.to_dict()`); checkpoints without it (converted paper weights, older
files) have no closed vocabulary, and `ModelVocabulary.from_checkpoint` returns None for them.

    vocab = ModelVocabulary.from_checkpoint(ckpt)       # None when the checkpoint has none
    vocab.known_words("the two red circles")          # ["red", "circles"]
    vocab.is_out_of_vocabulary("the woman")           # True
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

CHECKPOINT_KEY = "vocabulary"
# Letters (any script), digits and apostrophes make a word; punctuation and emoji separate words.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)
# Words every expression grammar uses that carry no content ("the", "of"): they never make an
# expression count as in-vocabulary by themselves.
FUNCTION_WORDS = frozenset({
    "the", "a", "an", "of", "and", "or", "to", "in", "on", "at", "is", "are", "that", "which", "with",
    "but", "from", "this", "these", "those", "it", "its", "one", "ones", "all", "every", "each", "any",
})


def words_of(text: str) -> List[str]:
    """Lower-cased words of `text` (letters/digits of any script; punctuation and emoji dropped)."""
    return [w.lower() for w in _WORD.findall(text or "")]


@dataclass
class ModelVocabulary:
    """The closed vocabulary of a model's training data.

    Attributes:
        worlds: the training worlds, e.g. ("shapes",) or ("shapes", "photo").
        nouns: singular head nouns the model was trained to segment ("circle", "pig").
        plurals: noun -> plural form ("circle" -> "circles").
        colours: colour words ("red").
        spatial: spatial / relation words ("left", "above", "top", "corner").
        count_words: number words ("two", "three").
        taxonomy: group word -> the nouns it covers ("animal" -> ["pig", "horse"]).
        other: any further content words of the grammar ("big", "small", "except").
    """

    worlds: Tuple[str, ...] = ()
    nouns: Tuple[str, ...] = ()
    plurals: Dict[str, str] = field(default_factory=dict)
    colours: Tuple[str, ...] = ()
    spatial: Tuple[str, ...] = ()
    count_words: Tuple[str, ...] = ()
    taxonomy: Dict[str, List[str]] = field(default_factory=dict)
    other: Tuple[str, ...] = ()

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelVocabulary":
        """Raises ValueError naming the field when `data` is not a vocabulary dict."""
        if not isinstance(data, dict):
            raise ValueError(f"a vocabulary must be a mapping, got {type(data).__name__}")
        kw: Dict[str, Any] = {}
        for name in ("worlds", "nouns", "colours", "spatial", "count_words", "other"):
            value = data.get(name, [])
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"vocabulary field {name!r} must be a list of strings")
            kw[name] = tuple(value)
        plurals = data.get("plurals", {})
        taxonomy = data.get("taxonomy", {})
        if not isinstance(plurals, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in plurals.items()):
            raise ValueError("vocabulary field 'plurals' must map strings to strings")
        if not isinstance(taxonomy, dict) or not all(
                isinstance(k, str) and isinstance(v, (list, tuple)) and all(isinstance(n, str) for n in v)
                for k, v in taxonomy.items()):
            raise ValueError("vocabulary field 'taxonomy' must map strings to lists of strings")
        return cls(plurals=dict(plurals), taxonomy={k: list(v) for k, v in taxonomy.items()}, **kw)

    @classmethod
    def from_checkpoint(cls, ckpt: Dict[str, Any]) -> Optional["ModelVocabulary"]:
        """The vocabulary stored in a loaded checkpoint dict, or None when it has none."""
        data = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
        return None if data is None else cls.from_dict(data)

    def merged(self, other: "ModelVocabulary") -> "ModelVocabulary":
        """The union of two vocabularies (a model trained on a mixture of worlds)."""
        def union(a, b):
            return tuple(dict.fromkeys([*a, *b]))
        taxonomy = {k: list(v) for k, v in self.taxonomy.items()}
        for k, v in other.taxonomy.items():
            taxonomy[k] = list(dict.fromkeys([*taxonomy.get(k, []), *v]))
        return ModelVocabulary(worlds=union(self.worlds, other.worlds), nouns=union(self.nouns, other.nouns),
                               plurals={**self.plurals, **other.plurals},
                               colours=union(self.colours, other.colours),
                               spatial=union(self.spatial, other.spatial),
                               count_words=union(self.count_words, other.count_words),
                               taxonomy=taxonomy, other=union(self.other, other.other))

    # ------------------------------------------------------------------ queries
    def content_words(self) -> frozenset:
        """Every known content word, single words only (multi-word nouns contribute each word)."""
        out = set()
        for group in (self.nouns, tuple(self.plurals.values()), self.colours, self.spatial, self.count_words,
                      tuple(self.taxonomy), self.other):
            for entry in group:
                out.update(words_of(entry))
        return frozenset(out - FUNCTION_WORDS)

    def known_words(self, text: str) -> List[str]:
        """The words of `text` the model was trained on (function words excluded), in order."""
        known = self.content_words()
        return [w for w in words_of(text) if w in known]

    def is_out_of_vocabulary(self, text: str) -> bool:
        """True when `text` has no content word the model was trained on (emoji, other scripts,
        punctuation only, or nouns outside its world such as "the woman" for a shapes-only model)."""
        return not self.known_words(text)
