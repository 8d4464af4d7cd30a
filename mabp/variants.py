"""Ablation switches of the paper (Tables V and VI) and the ReLA baseline: validation, the heads they
supervise, and named variants.

Every switch is a config field (`DecoderConfig` / `MABPConfig.arch`) whose default is the full MABP, so
the `paper` preset stays the official model. A variant is built like any other model:

    build_mabp("tiny", **VARIANTS["table5_naive"])       # = decoder__layer_type="ria_rla", ...
    criterion = build_criterion(model.cfg)               # mabp.criterion: derives the supervised heads

Meaning of the switches (DecoderConfig):
- query_init: "generator" (text-conditioned, §1.5) | "random" (learnable query_feat only).
- layer_type: "mmd" (§1.6) | "ria_rla" (ReLA's RIA + query self-attention + FFN, RLA at layer 0).
- head_type: "rsh" (windowed per-query masks, §1.8) | "naive" (whole-image per-query masks aggregated
  by `naive_aggregation`).
- attn_mask: "auto" | "region" (own window OR predicted foreground; needs RSH) | "global" (each
  query's own whole-image mask, sigmoid >= 0.5; fully blocked rows opened).
- main_supervision: "full" | "last" | k (the last k heads, 1 <= k <= number of heads).
- nt_supervision: "full" | "last" (only the final head has an NT branch) | "none" (no NT branch;
  inference.min_pixels is set to 50 when left at 0: the paper's "< 50 positive pixels -> empty").
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from .config import DecoderConfig, MABPConfig

ARCHS = ("mabp", "rela")
QUERY_INITS = ("generator", "random")
LAYER_TYPES = ("mmd", "ria_rla")
HEAD_TYPES = ("rsh", "naive")
NAIVE_AGGREGATIONS = ("max", "mean", "softmax")
ATTN_MASKS = ("auto", "region", "global")
RLA_INPUTS = ("tokens", "words")
MAIN_SUPERVISIONS = ("full", "last")
NT_SUPERVISIONS = ("full", "last", "none")
PAPER_MIN_PIXELS = 50  # Table VI: without an NT branch, masks with < 50 positive pixels are empty

# Fields that only the MABP decoder reads; setting them with arch "rela" would silently do nothing.
_MABP_ONLY = ("query_init", "layer_type", "head_type", "naive_aggregation", "attn_mask", "rla_input",
              "main_supervision", "nt_supervision")

# Named variants as build_mabp overrides (section__key). Table V rows are cumulative.
VARIANTS: Dict[str, Dict[str, object]] = {
    # Table V
    "table5_naive": {"decoder__layer_type": "ria_rla", "decoder__query_init": "random", "decoder__head_type": "naive"},
    "table5_rsh": {"decoder__layer_type": "ria_rla", "decoder__query_init": "random"},
    "table5_mmd": {"decoder__query_init": "random"},
    "table5_full": {},
    # Table VI
    "table6_main_last": {"decoder__main_supervision": "last"},
    "table6_nt_none": {"decoder__nt_supervision": "none"},
    "table6_nt_last": {"decoder__nt_supervision": "last"},
    "table6_full": {},
    # The baseline (henghuiding/ReLA)
    "rela": {"arch": "rela"},
}


def num_outputs(dec: DecoderConfig) -> int:
    """Number of MABP heads: one per scale plus the final (query-FPN) head."""
    return dec.num_scales + 1


def attention_mask_kind(dec: DecoderConfig) -> str:
    """"region" or "global" (see module docstring); "auto" resolves to region only for MMD + RSH."""
    if dec.attn_mask != "auto":
        return dec.attn_mask
    return "region" if dec.layer_type == "mmd" and dec.head_type == "rsh" else "global"


def nt_branches(dec: DecoderConfig) -> List[bool]:
    """Which heads are built with a no-target branch (coarse -> final)."""
    n = num_outputs(dec)
    if dec.nt_supervision == "full":
        return [True] * n
    if dec.nt_supervision == "last":
        return [False] * (n - 1) + [True]
    return [False] * n


def supervised_heads(dec: DecoderConfig) -> Tuple[List[int], List[int]]:
    """(main_heads, nt_heads) for MABPCriterion.

    main_heads are the INTERMEDIATE heads supervised on masks (the final head always is); nt_heads
    the heads whose NT logits are supervised (exactly those that have an NT branch).
    """
    n = num_outputs(dec)
    k = _main_depth(dec)
    main = list(range(n - k, n - 1))
    nt = [i for i, has in enumerate(nt_branches(dec)) if has]
    return main, nt


def _main_depth(dec: DecoderConfig) -> int:
    n = num_outputs(dec)
    value = dec.main_supervision
    if value == "full":
        return n
    if value == "last":
        return 1
    if isinstance(value, str) and value.isdigit():  # e.g. from a command-line override
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n:
        raise ValueError(f"decoder.main_supervision must be 'full', 'last' or an int in [1, {n}] "
                         f"(number of heads counted from the end), got {value!r}")
    return value


def _check(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def validate_decoder(dec: DecoderConfig) -> None:
    """Raise ValueError for unknown MABP-decoder switch values and impossible combinations."""
    _check("decoder.query_init", dec.query_init, QUERY_INITS)
    _check("decoder.layer_type", dec.layer_type, LAYER_TYPES)
    _check("decoder.head_type", dec.head_type, HEAD_TYPES)
    _check("decoder.naive_aggregation", dec.naive_aggregation, NAIVE_AGGREGATIONS)
    _check("decoder.attn_mask", dec.attn_mask, ATTN_MASKS)
    _check("decoder.rla_input", dec.rla_input, RLA_INPUTS)
    _check("decoder.nt_supervision", dec.nt_supervision, NT_SUPERVISIONS)
    _main_depth(dec)
    if dec.attn_mask == "region" and dec.head_type != "rsh":
        raise ValueError("decoder.attn_mask='region' needs the RSH windows (head_type='rsh')")


def validate(cfg: MABPConfig) -> None:
    """Raise ValueError for unknown switch values and combinations that cannot be built."""
    dec = cfg.decoder
    _check("arch", cfg.arch, ARCHS)
    validate_decoder(dec)
    if cfg.inference.min_pixels < 0:
        raise ValueError(f"inference.min_pixels must be >= 0, got {cfg.inference.min_pixels}")
    if not 0.0 < cfg.inference.nt_threshold < 1.0:
        raise ValueError(f"inference.nt_threshold must be between 0 and 1, got {cfg.inference.nt_threshold}")
    if cfg.arch == "rela":
        defaults = DecoderConfig()
        changed = [f for f in _MABP_ONLY if getattr(dec, f) != getattr(defaults, f)]
        if changed:
            raise ValueError(f"arch='rela' has its own decoder; these MABP switches would be ignored: {changed}")
        n = int(round(dec.rela_num_queries ** 0.5))
        if dec.rela_num_queries < 1 or n * n != dec.rela_num_queries:
            raise ValueError(f"decoder.rela_num_queries must be a square (the minimap is sqrt(Q) x sqrt(Q)), "
                             f"got {dec.rela_num_queries}")


def has_nt_branch(cfg: MABPConfig) -> bool:
    """False only for MABP built without any no-target branch (Table VI "branch removed",
    `decoder.nt_supervision: none`); such a model decides emptiness by `inference.min_pixels`. ReLA and
    every other MABP variant have one."""
    return not (cfg.arch == "mabp" and cfg.decoder.nt_supervision == "none")


def resolve_variant(cfg: MABPConfig) -> MABPConfig:
    """Validate, and fill what a switch implies: without an NT branch the paper decides emptiness by
    the < 50 positive pixels rule, so inference.min_pixels = 50 unless set to another positive value."""
    validate(cfg)
    if not has_nt_branch(cfg) and cfg.inference.min_pixels == 0:
        cfg = cfg.override(**{"inference.min_pixels": PAPER_MIN_PIXELS})
    return cfg
