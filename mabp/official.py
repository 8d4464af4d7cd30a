"""Mapping between the official MABP state dict (buptLwz/MABP @ ec810ea, detectron2 names) and ours.

Our modules keep the official leaf names wherever possible; what differs is the grouping: the
official decoder keeps per-layer and per-scale lists side by side (MMD_cross_attention[i],
decoder_norm[s], ...) while ours groups them by layer (`decoder.layers[i]`) and by head
(`decoder.heads[s]`). This table is the single source of truth for the converter and its tests.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

_P = "sem_seg_head.predictor."

# (official regex, our template). First match wins.
KEY_RULES: List[Tuple[str, str]] = [
    (r"^backbone\.(.*)$", r"backbone.\1"),
    (r"^text_encoder\.(.*)$", r"text_encoder.bert.\1"),
    (r"^sem_seg_head\.pixel_decoder\.(.*)$", r"pixel_decoder.\1"),
    (r"^" + re.escape(_P) + r"MMD_self_attention\.(\d+)\.self_attn\.(.*)$", r"decoder.layers.\1.self_attn.\2"),
    (r"^" + re.escape(_P) + r"MMD_self_attention\.(\d+)\.norm\.(.*)$", r"decoder.layers.\1.self_norm.\2"),
    (r"^" + re.escape(_P) + r"MMD_cross_attention\.(\d+)\.multihead_attn\.(.*)$", r"decoder.layers.\1.cross_attn.\2"),
    (r"^" + re.escape(_P) + r"MMD_cross_attention\.(\d+)\.norm\.(.*)$", r"decoder.layers.\1.cross_norm.\2"),
    (r"^" + re.escape(_P) + r"transformer_ffn_layers\.(\d+)\.(linear1|linear2)\.(.*)$", r"decoder.layers.\1.\2.\3"),
    (r"^" + re.escape(_P) + r"transformer_ffn_layers\.(\d+)\.norm\.(.*)$", r"decoder.layers.\1.ffn_norm.\2"),
    (r"^" + re.escape(_P) + r"layer_embed\.(\d+)\.(.*)$", r"decoder.layers.\1.token_mix.\2"),
    (r"^" + re.escape(_P) + r"decoder_norm\.(\d+)\.(.*)$", r"decoder.heads.\1.norm.\2"),
    (r"^" + re.escape(_P) + r"(mask_embed|pooler_src_proj|nt_emb_proj|nt_lang_emb_proj|nt_embed)\.(\d+)\.(.*)$",
     r"decoder.heads.\2.\1.\3"),
    (r"^" + re.escape(_P) + r"(lateral_convs|output_convs)\.(.*)$", r"decoder.query_fpn.\1.\2"),
    (r"^" + re.escape(_P) + r"(query_feat|langq_proj|langq_norm|langk_proj|langv_proj|lango_proj)\.(.*)$",
     r"decoder.query_generator.\1.\2"),
    (r"^" + re.escape(_P) + r"(query_embed|lang_query_embed|level_embed)\.(.*)$", r"decoder.\1.\2"),
]
_COMPILED = [(re.compile(a), b) for a, b in KEY_RULES]

# Entries a released checkpoint may carry that are not weights of the model (buffers transformers
# re-creates, detectron2 extras). They are ignored with this reason in the report.
IGNORABLE = {
    "text_encoder.embeddings.position_ids": "non-persistent buffer of transformers (re-created)",
    "text_encoder.embeddings.token_type_ids": "non-persistent buffer of transformers (re-created)",
    "pixel_mean": "normalisation constant (in our config)",
    "pixel_std": "normalisation constant (in our config)",
}
IGNORABLE_PATTERNS = [
    (re.compile(r"^text_encoder\.pooler\."), "BERT pooler (removed in MABP)"),
    (re.compile(r"^backbone\..*attn_mask$"), "Swin shifted-window mask buffer (recomputed per input size)"),
]


def official_to_ours(key: str) -> Optional[str]:
    """Our parameter name for an official key, or None if no rule applies."""
    for pattern, template in _COMPILED:
        if pattern.match(key):
            return pattern.sub(template, key)
    return None


def ignorable_reason(key: str) -> Optional[str]:
    if key in IGNORABLE:
        return IGNORABLE[key]
    for pattern, reason in IGNORABLE_PATTERNS:
        if pattern.match(key):
            return reason
    return None


def strip_wrappers(obj) -> Dict:
    """detectron2 checkpoints are {"model": state_dict, ...}; DDP adds "module." prefixes."""
    state = obj
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = obj["state_dict"]
    if not isinstance(state, dict):
        raise ValueError("the checkpoint holds no state dict (expected a dict of tensors or {'model': {...}})")
    out = {}
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        out[k] = value
    return out


def ours_to_official_map(official_keys: Iterable[str]) -> Dict[str, str]:
    return {official_to_ours(k): k for k in official_keys if official_to_ours(k) is not None}
