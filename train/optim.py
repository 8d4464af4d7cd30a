"""Optimizer parameter groups and the learning-rate schedule of the released recipe (official configs/gres-MABP.yaml + train_net.py).

Parameter groups (`build_param_groups`):
- The official quirk (official MABP: BERT embeddings and last two layers outside the optimizer): BERT's embeddings and its last two encoder layers are left OUT of
  the optimizer (they still receive gradients there, but are never updated). We set
  `requires_grad=False` on them instead. That is numerically identical — the forward pass is unchanged,
  and gradients still flow *through* the frozen layers to the trainable ones below, because autograd
  differentiates w.r.t. a layer's input regardless of its weights' requires_grad — and it saves the
  memory of their gradients and lets DistributedDataParallel run without `find_unused_parameters`.
  "Last two" is a config int (`bert_frozen_last_layers`) so MiniLM's 6 layers can follow the same rule.
- Weight decay 0 for norm layers (LayerNorm/GroupNorm/BatchNorm/InstanceNorm), nn.Embedding weights
  and Swin `relative_position_bias_table`; every other parameter, biases included, keeps the decay
  (the official build_optimizer, which has no bias rule).
- The BERT layers that stay trainable form one group *with* weight decay, LayerNorms included (the
  official code adds BERT's layers as one group outside the module walk).
- Optional per-prefix lr multipliers (`lr_multipliers`, longest matching prefix wins). The official
  BACKBONE_MULTIPLIER 0.1 is defined but never used, so the paper configs leave this empty.

Schedule (`WarmupConstantCosine`): optional linear warm-up, constant lr until `constant_until` x
max_steps, then half-cosine down to `lr_end` at max_steps ("WarmupCosineRestartLR" with START_ITER
109,625 of 175,400 and no restart). The lr is a pure function of the step, so resuming is exact.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

NORM_TYPES: Tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                                nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
                                nn.LocalResponseNorm)
NO_DECAY_NAMES = ("relative_position_bias_table",)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def freeze_bert_parts(model: nn.Module, last_layers: int = 2) -> List[str]:
    """requires_grad=False on the text encoder's embeddings and its last `last_layers` encoder layers.

    Returns the frozen parameter names. Raises if the model has no BERT text encoder or fewer layers than
    asked (freezing all layers would silently make the text encoder a fixed feature extractor).
    """
    model = unwrap(model)
    text = getattr(model, "text_encoder", None)
    bert = getattr(text, "bert", None)
    if bert is None:
        raise ValueError("the model has no text_encoder.bert to freeze")
    layers = bert.encoder.layer
    if last_layers > len(layers):
        raise ValueError(f"bert_frozen_last_layers={last_layers} but the text encoder has {len(layers)} layers")
    frozen_modules = [bert.embeddings] + (list(layers[len(layers) - last_layers:]) if last_layers else [])
    frozen_ids = set()
    for mod in frozen_modules:
        for p in mod.parameters():
            p.requires_grad_(False)
            frozen_ids.add(id(p))
    return [n for n, p in model.named_parameters() if id(p) in frozen_ids]


def freeze_prefixes(model: nn.Module, prefixes: Sequence[str]) -> List[str]:
    """requires_grad=False on every parameter whose name starts with one of `prefixes`.

    For CPU budgets: e.g. ["backbone.backbone."] keeps lite's ImageNet EfficientNet stages fixed. With
    late fusion nothing upstream of them needs a gradient, so their (slow, depthwise) convolution
    backward disappears from the step (measured: a lite step at batch 4 went from 27 s to 14 s on a
    loaded 2-core machine). A prefix that matches nothing is an error (a typo would silently train all).
    """
    model = unwrap(model)
    frozen = []
    for prefix in prefixes:
        hits = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]
        if not hits:
            raise ValueError(f"optim.freeze prefix {prefix!r} matches no parameter of the model")
        for n, p in hits:
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def _lr_multiplier(name: str, multipliers: Dict[str, float]) -> float:
    best, best_len = 1.0, -1
    for prefix, mult in multipliers.items():
        if name.startswith(prefix) and len(prefix) > best_len:
            best, best_len = float(mult), len(prefix)
    return best


def build_param_groups(model: nn.Module, weight_decay: float,
                       lr_multipliers: Optional[Dict[str, float]] = None,
                       text_prefix: str = "text_encoder.") -> List[Dict[str, Any]]:
    """Trainable parameters split into groups by (weight decay, lr multiplier).

    Each group carries "name" (for logging/tests), "weight_decay", "lr_mult" and "param_names".
    Parameters with requires_grad=False are not included.
    """
    model = unwrap(model)
    lr_multipliers = dict(lr_multipliers or {})
    unknown = [p for p in lr_multipliers if not any(n.startswith(p) for n, _ in model.named_parameters())]
    if unknown:
        raise ValueError(f"optim.lr_multipliers prefixes match no parameter: {unknown}")
    decay_of: Dict[int, float] = {}
    names: Dict[int, str] = {}
    # Walk modules (not just parameters) so the decay rule can look at the owning module's type.
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in decay_of:
                continue
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            names[id(p)] = full
            if full.startswith(text_prefix):
                wd = weight_decay  # the official BERT group: decay for everything, LayerNorms included
            elif isinstance(module, NORM_TYPES) or isinstance(module, nn.Embedding) or p_name in NO_DECAY_NAMES:
                wd = 0.0
            else:
                wd = weight_decay
            decay_of[id(p)] = wd
    groups: Dict[Tuple[str, float, float], Dict[str, Any]] = {}
    for p in model.parameters():
        if id(p) not in decay_of:
            continue
        name = names[id(p)]
        part = "text" if name.startswith(text_prefix) else "model"
        mult = _lr_multiplier(name, lr_multipliers)
        key = (part, decay_of[id(p)], mult)
        if key not in groups:
            label = f"{part}/{'decay' if key[1] else 'no_decay'}" + (f"/x{mult:g}" if mult != 1.0 else "")
            groups[key] = {"name": label, "params": [], "param_names": [], "weight_decay": key[1], "lr_mult": mult}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: Sequence[float] = (0.9, 0.999),
                    eps: float = 1e-8, lr_multipliers: Optional[Dict[str, float]] = None) -> torch.optim.AdamW:
    """AdamW over `build_param_groups`; each group's "base_lr" = lr x its multiplier."""
    groups = build_param_groups(model, weight_decay, lr_multipliers)
    if not groups:
        raise ValueError("no trainable parameters")
    opt_groups = []
    for g in groups:
        g = dict(g)
        # (name, param) pairs: torch stores them as the group's "param_names", so an optimizer state
        # can be checked against the model it is loaded into.
        g["params"] = list(zip(g.pop("param_names"), g["params"]))
        g["lr"] = g["base_lr"] = lr * g["lr_mult"]
        opt_groups.append(g)
    # foreach: one multi-tensor kernel per state update instead of a Python loop over ~450 tensors
    # (PyTorch picks it by default only on CUDA); ~27 -> ~10 ms per lite step on 2 CPU cores.
    return torch.optim.AdamW(opt_groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             foreach=True)


class WarmupConstantCosine:
    """lr factor(step): linear warm-up, constant, then half-cosine from 1 to lr_end / lr at max_steps.

    `step` counts finished iterations: factor(0) is used for the first update, factor(max_steps) is the
    final value (= lr_end / lr). `apply(optimizer, step)` sets every group's lr = base_lr x factor, so
    groups with an lr multiplier end at lr_end x multiplier.
    """

    def __init__(self, lr: float, max_steps: int, constant_until: float = 0.625, lr_end: float = 1.8e-6,
                 warmup_steps: int = 0, warmup_factor: float = 0.001):
        if max_steps <= 0:
            raise ValueError("max_steps must be positive")
        if lr <= 0:
            raise ValueError("lr must be positive")
        self.lr = float(lr)
        self.max_steps = int(max_steps)
        # The official START_ITER is an integer iteration; round the fraction the same way
        # (0.625 x 175,400 = 109,625 exactly).
        self.start = int(round(constant_until * max_steps))
        self.end_factor = float(lr_end) / self.lr
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.last_step = 0

    def factor(self, step: int) -> float:
        step = min(max(int(step), 0), self.max_steps)
        f = 1.0
        if step >= self.start and self.max_steps > self.start:
            t = (step - self.start) / (self.max_steps - self.start)
            f = self.end_factor + (1.0 - self.end_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            f *= self.warmup_factor * (1 - alpha) + alpha
        return f

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the lr of every group for the update that follows `step` finished iterations."""
        f = self.factor(step)
        for g in optimizer.param_groups:
            g["lr"] = g.get("base_lr", self.lr) * f
        self.last_step = int(step)
        return self.lr * f

    def state_dict(self) -> Dict[str, Any]:
        return {"lr": self.lr, "max_steps": self.max_steps, "start": self.start, "end_factor": self.end_factor,
                "warmup_steps": self.warmup_steps, "warmup_factor": self.warmup_factor, "last_step": self.last_step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        # The schedule is rebuilt from the config; a stored one that differs means the run's recipe
        # changed between the stop and the resume, which is allowed (e.g. a longer run) but worth saying.
        mine = self.state_dict()
        changed = [k for k in ("lr", "max_steps", "start", "end_factor", "warmup_steps")
                   if k in state and not math.isclose(float(state[k]), float(mine[k]), rel_tol=1e-9)]
        if changed:
            import warnings
            warnings.warn(f"resuming with a different lr schedule ({', '.join(changed)} changed)")
        self.last_step = int(state.get("last_step", 0))


def trainable_parameters(model: nn.Module) -> Iterable[torch.nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)


__all__ = ["freeze_bert_parts", "freeze_prefixes", "build_param_groups", "build_optimizer", "WarmupConstantCosine", "unwrap",
           "NORM_TYPES", "trainable_parameters"]
