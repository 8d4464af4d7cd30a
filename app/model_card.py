"""What the loaded model is and what it knows, read from its checkpoint (never from its file name).

`model_card(ckpt, path)` gives a `ModelCard`: preset, training data (worlds), file size, the measured
val scores and the closed vocabulary the model was trained on. The vocabulary comes from:

  1. the checkpoint's `"vocabulary"` key (`mabp.vocabulary.ModelVocabulary`, written by train.export);
  2. for older checkpoints whose stored training config says `data.dataset: synthgres`, the SynthGRES
     shapes world's words (`train.data.synthgres.world_vocabulary.world_vocabulary("shapes")`);
  3. converted paper weights (a `"converted_from"` record): none, the model reads open text with BERT;
  4. anything else: unknown.

Val scores: a `"metrics"` / `"eval"` record in the checkpoint if it has one, else the evaluation report
published beside it (`<stem>-eval/val/results.json`, written by `python -m train.evaluate`), else the
best val score recorded during training (`"best"`, on the training run's small val subset).
Pure functions: no Gradio, no model.
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mabp.vocabulary import ModelVocabulary

log = logging.getLogger("mabp.app")

OPEN_VOCABULARY = "open vocabulary (BERT)"
UNKNOWN_VOCABULARY = "unknown"
SCORE_KEYS = ("gIoU", "cIoU", "N-acc", "T-acc")
WORLD_NAMES = {"shapes": "SynthGRES shapes", "photo": "SynthGRES photo"}


@dataclass
class ModelCard:
    """A short, honest description of the served model."""

    preset: str
    worlds: Tuple[str, ...] = ()  # training worlds/datasets in words, e.g. ("SynthGRES shapes",)
    size_mb: Optional[float] = None  # checkpoint file size
    scores: Dict[str, float] = field(default_factory=dict)  # val metrics (percent)
    scores_source: str = ""  # where the scores come from, in words
    vocabulary: Optional[ModelVocabulary] = None
    vocabulary_kind: str = UNKNOWN_VOCABULARY  # "closed" (vocabulary set), OPEN_VOCABULARY or UNKNOWN_VOCABULARY
    trained: bool = True
    file_name: str = ""
    # nouns of its vocabulary that the photo world shows only as drawings (per the committed manifest):
    # known words, but never seen photographed
    drawn_only: Tuple[str, ...] = ()

    def out_of_vocabulary_notice(self, text: str) -> Optional[str]:
        """A sentence for the UI when `text` has no word the model was trained on; None otherwise (and
        always None when the model has no closed vocabulary to check against)."""
        if self.vocabulary is None or not isinstance(text, str):
            return None
        if not self.vocabulary.is_out_of_vocabulary(text):
            return None
        worlds = ", ".join(self.worlds) or "its training data"
        return ("None of these words was in the model's training data (" + worlds + "), so this answer is "
                "a guess. See 'What this model knows' for the words it learned.")

    def drawn_only_in(self, text: str) -> List[str]:
        """The nouns of `text` that this model saw only as drawings (singular, manifest order); []."""
        if not self.drawn_only or not isinstance(text, str):
            return []
        from train.data.synthgres.photo import PhotoWorldUnavailable, drawn_only_nouns_in

        try:
            return [n for n in drawn_only_nouns_in(text) if n in self.drawn_only]
        except PhotoWorldUnavailable:
            return []

    def drawings_only_notice(self, text: str) -> Optional[str]:
        """A sentence for the UI when `text` names a noun the model saw only as drawings; None otherwise."""
        found = self.drawn_only_in(text)
        if not found:
            return None
        names = ", ".join(f"'{n}'" for n in found)  # plain text: the banner escapes it
        return (f"The model knows {names} only from drawings (no photograph of one was in its training "
                "data): on a photograph this answer is unreliable.")

    def notice(self, text: str) -> Optional[str]:
        """The notice shown beside an answer: out of vocabulary first, else known only from drawings."""
        return self.out_of_vocabulary_notice(text) or self.drawings_only_notice(text)


def _dataset_of(ckpt: Dict[str, Any]) -> Optional[str]:
    tc = ckpt.get("train_config")
    data = tc.get("data") if isinstance(tc, dict) else None
    name = data.get("dataset") if isinstance(data, dict) else None
    return str(name).lower() if name else None


def vocabulary_of(ckpt: Dict[str, Any]) -> Tuple[Optional[ModelVocabulary], str]:
    """(vocabulary or None, kind) for a loaded checkpoint dict (see the module docstring)."""
    try:
        vocab = ModelVocabulary.from_checkpoint(ckpt)
    except ValueError as exc:  # a malformed record: say unknown rather than fail to serve
        log.warning("the checkpoint's vocabulary record is unreadable (%s): treating it as unknown", exc)
        return None, UNKNOWN_VOCABULARY
    if vocab is not None:
        return vocab, "closed"
    if _dataset_of(ckpt) == "synthgres":
        from train.data.synthgres.world_vocabulary import world_vocabulary

        return world_vocabulary("shapes"), "closed"
    if ckpt.get("converted_from"):
        return None, OPEN_VOCABULARY
    return None, UNKNOWN_VOCABULARY


def worlds_of(ckpt: Dict[str, Any], vocab: Optional[ModelVocabulary]) -> Tuple[str, ...]:
    if vocab is not None and vocab.worlds:
        return tuple(WORLD_NAMES.get(w, w) for w in vocab.worlds)
    ds = _dataset_of(ckpt)
    if ds:
        return (WORLD_NAMES["shapes"] if ds == "synthgres" else ds,)
    if ckpt.get("converted_from"):
        return ("gRefCOCO (the authors' released weights, converted)",)
    return ()


def _metrics_from(record: Any) -> Dict[str, float]:
    if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
        record = record["metrics"]
    if not isinstance(record, dict):
        return {}
    return {k: float(record[k]) for k in SCORE_KEYS if isinstance(record.get(k), (int, float))}


def scores_of(ckpt: Dict[str, Any], path: Optional[Path]) -> Tuple[Dict[str, float], str]:
    """(val metrics, where they come from) — see the module docstring."""
    for key in ("metrics", "eval"):
        rec = ckpt.get(key)
        if isinstance(rec, dict):
            scores = _metrics_from(rec.get("val", rec))
            if scores:
                return scores, "stored in the checkpoint"
    if path is not None:
        report = Path(path).with_name(Path(path).stem + "-eval") / "val" / "results.json"
        if report.is_file():
            try:
                data = json.loads(report.read_text())
                scores = _metrics_from(data)
                n = (data.get("metrics") or {}).get("n")
                if scores:
                    where = f"{report.parent.parent.name}/val" + (f", {int(n):,} expressions" if n else "")
                    return scores, f"evaluation report ({where})"
            except (OSError, ValueError) as exc:
                log.warning("could not read %s: %s", report, exc)
    best = ckpt.get("best")
    if isinstance(best, dict) and isinstance(best.get("value"), (int, float)):
        return ({str(best.get("metric", "gIoU")): float(best["value"])},
                f"best during training (step {best.get('step', '?')}, the run's val subset)")
    return {}, ""


def model_card(ckpt: Optional[Dict[str, Any]], path: Optional[Path] = None, preset: str = "",
               trained: bool = True) -> ModelCard:
    """The card of a loaded checkpoint dict (None: an untrained preset)."""
    if ckpt is None:
        return ModelCard(preset=preset or "?", trained=False, vocabulary_kind=UNKNOWN_VOCABULARY)
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    vocab, kind = vocabulary_of(ckpt)
    scores, source = scores_of(ckpt, path)
    size = None
    if path is not None and Path(path).is_file():
        size = Path(path).stat().st_size / 1e6
    return ModelCard(preset=str(cfg.get("preset") or preset or "?"), worlds=worlds_of(ckpt, vocab), size_mb=size,
                     scores=scores, scores_source=source, vocabulary=vocab, vocabulary_kind=kind,
                     trained=trained, file_name=Path(path).name if path is not None else "",
                     drawn_only=drawn_only_of(vocab))


def drawn_only_of(vocab: Optional[ModelVocabulary]) -> Tuple[str, ...]:
    """The vocabulary's nouns that the photo world (committed manifest) has only as drawings; () when the
    model was not trained on the photo world or the manifest cannot be read."""
    if vocab is None or "photo" not in vocab.worlds:
        return ()
    from train.data.synthgres.photo import PhotoWorldUnavailable, drawn_only_nouns

    try:
        drawn = drawn_only_nouns()
    except PhotoWorldUnavailable:
        return ()
    return tuple(n for n in vocab.nouns if n in drawn)


def card_markdown(card: ModelCard) -> str:
    """One line for the page header: preset · training data · size · val scores."""
    parts = [f"**Model**: `{card.preset}` preset"]
    if not card.trained:
        parts.append("untrained decoder")
    parts.append("trained on " + (", ".join(card.worlds) if card.worlds else "unknown data"))
    if card.size_mb is not None:
        parts.append(f"{card.size_mb:.1f} MB")
    if card.scores:
        vals = ", ".join(f"{k} {v:.1f}" for k, v in card.scores.items())
        parts.append(f"val: {vals} ({card.scores_source})")
    return " · ".join(parts)


def _words(items: List[str]) -> str:
    return ", ".join(html.escape(w) for w in items) if items else "—"


def vocabulary_markdown(card: ModelCard) -> str:
    """The accordion's text: the words the model was trained on, or why there is no list."""
    v = card.vocabulary
    if v is None:
        if card.vocabulary_kind == OPEN_VOCABULARY:
            return ("**Open vocabulary (BERT)**: this model reads free text with a BERT text encoder and has no "
                    "closed word list; it knows what its training data (" + (", ".join(card.worlds) or "?")
                    + ") described.")
        return ("**Unknown**: this checkpoint does not say what it was trained on, so no word list can be "
                "shown and out-of-vocabulary expressions are not flagged.")
    nouns = [f"{n} / {v.plurals[n]}" if n in v.plurals else n for n in v.nouns]
    lines = [f"Trained on **{', '.join(card.worlds) or '?'}**. An expression with none of these words gets a "
             "notice next to its answer.", "",
             f"- **Nouns**: {_words(nouns)}",
             f"- **Colours**: {_words(list(v.colours))}",
             f"- **Spatial words**: {_words(list(v.spatial))}",
             f"- **Counts**: {_words(list(v.count_words))}"]
    if card.drawn_only:
        lines.append(f"- **Known only from drawings** (no photograph in training; unreliable on photos): "
                     f"{_words(list(card.drawn_only))}")
    if v.other:
        lines.append(f"- **Other words** (sizes, groups): {_words(list(v.other))}")
    if v.taxonomy:
        lines.append("- **Groups**: " + "; ".join(f"{html.escape(k)}: {_words(list(ns))}"
                                                   for k, ns in v.taxonomy.items()))
    return "\n".join(lines)
