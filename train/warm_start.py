"""Start a model from a checkpoint of a *different* size of the same architecture (fine-tuning init).

`model.checkpoint` loads strictly: the checkpoint must fit the model. With `model.checkpoint_adapt:
true` the weights are transferred where they can be instead, so that e.g. the lean `lite` preset
(2 deformable layers x 2 points) can start from the first shipped checkpoint (4 layers x 4 points):

- a tensor with the same name and shape is copied;
- MSDeformAttn `sampling_offsets` / `attention_weights` with fewer sampling points per (head, level)
  keep the checkpoint's first points (Deformable-DETR initialises point k at distance k+1 along the
  head's direction, so the first points are the nearest ones) — the layout is official
  (heads, levels, points[, 2]);
- everything else (layers the checkpoint lacks, other shape changes) keeps its fresh initialisation.

Nothing here changes a model's maths; it only chooses initial values. `adapt_state` returns a report
of what was copied, sliced and left fresh; the trainer prints it.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from mabp.modeling.ms_deform_attn import MSDeformAttn


def _deform_modules(model: nn.Module) -> Dict[str, MSDeformAttn]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MSDeformAttn)}


def _slice_points(name: str, value: torch.Tensor, target: torch.Tensor, module: MSDeformAttn) -> torch.Tensor:
    """Keep the first points of each (head, level) of an official-layout offset/weight tensor."""
    heads, levels, points = module.n_heads, module.n_levels, module.n_points
    per_point = 2 if ".sampling_offsets." in name else 1
    rows = value.shape[0]
    if rows % (heads * levels * per_point):
        raise ValueError("not the same heads/levels")
    old_points = rows // (heads * levels * per_point)
    if old_points < points:
        raise ValueError("the checkpoint has fewer points")
    rest = value.shape[1:]
    v = value.reshape(heads, levels, old_points, per_point, *rest)[:, :, :points]
    out = v.reshape(heads * levels * points * per_point, *rest)
    if out.shape != target.shape:
        raise ValueError("shape still differs")
    return out


def adapt_state(model: nn.Module, state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """The state dict to load into `model` from a checkpoint state of a different size.

    Returns (state, report) with report = {"copied": [...], "sliced": [...], "fresh": [...],
    "unused": [...]} (parameter names). Raises ValueError when nothing at all could be copied (not the
    same architecture).
    """
    own = model.state_dict()
    deform = _deform_modules(model)
    out: Dict[str, torch.Tensor] = {}
    report: Dict[str, List[str]] = {"copied": [], "sliced": [], "fresh": [], "unused": []}
    for name, target in own.items():
        if name not in state:
            report["fresh"].append(name)
            continue
        value = state[name].to(target.dtype)
        if value.shape == target.shape:
            out[name] = value
            report["copied"].append(name)
            continue
        owner = name.rsplit(".", 2)[0]
        if owner in deform and (".sampling_offsets." in name or ".attention_weights." in name):
            try:
                out[name] = _slice_points(name, value, target, deform[owner])
                report["sliced"].append(name)
                continue
            except ValueError:
                pass
        report["fresh"].append(name)
    report["unused"] = sorted(set(state) - set(own))
    if not report["copied"]:
        raise ValueError("no tensor of the checkpoint fits this model: it is not the same architecture")
    return out, report


def load_adapted(model: nn.Module, ckpt: dict) -> Dict[str, List[str]]:
    """Load `ckpt` (an MABP checkpoint dict) into `model` through `adapt_state`; returns the report.
    Weights the checkpoint stored by reference (package weights, "external") keep the values the model
    was just built with from the same packages."""
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in ckpt["model"].items()}
    adapted, report = adapt_state(model, state)
    external = set(ckpt.get("external", []))
    report["fresh"] = [k for k in report["fresh"] if k not in external]
    model.load_state_dict(adapted, strict=False)
    return report


__all__ = ["adapt_state", "load_adapted"]
