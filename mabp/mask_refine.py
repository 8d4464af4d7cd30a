"""Edge-aware refinement of a predicted mask with the image as guide (an inference option, off by default).

MABP predicts masks on the pixel decoder's stride-4 grid (80 x 80 for a 320 x 320 input) and the official
`inference` upsamples the logits bilinearly, so a mask edge can only be as sharp as that grid. Where the
object's outline is also an edge in the image, the **guided filter** (He, Sun and Tang, "Guided Image
Filtering", ECCV 2010 / TPAMI 2013) snaps the upsampled probability map to it: in every window the output
is a linear function of the RGB guide fitted to the probabilities, so flat regions stay smooth and image
edges come back sharp. For an output larger than the model's input the coefficients are computed on a
grid of about the model's size and upsampled ("Fast Guided Filter", He and Sun, 2015), so the cost does
not grow with the photo's size.

This is not in the paper or the official code: `InferenceConfig.refine` is "none" for every preset, and
a checkpoint turns it on only with settings chosen on held-out data (`python -m train.calibrate
--refine-radii ...`). The filter itself is kornia's (`kornia.filters.guided_blur`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

REFINE_MODES = ("none", "guided")


@dataclass(frozen=True)
class GuidedRefine:
    """Guided-filter settings. radius: window radius in pixels of the model's S x S input grid (the
    window is 2 * radius + 1 wide there, scaled per axis to the output size); eps: the regulariser added
    to the local colour covariance, in squared units of the guide scaled to [0, 1] (smaller keeps more
    edges)."""

    radius: int = 8
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if int(self.radius) != self.radius or self.radius < 1:
            raise ValueError(f"the guided-filter radius must be an integer >= 1, got {self.radius}")
        if not float(self.eps) > 0.0:
            raise ValueError(f"the guided-filter eps must be > 0, got {self.eps}")

    def label(self) -> str:
        """'guided r=8 eps=0.001': how reports and the app name the setting."""
        return f"guided r={int(self.radius)} eps={float(self.eps):g}"


def refine_label(refine: Optional[GuidedRefine]) -> str:
    """'none' or `refine.label()`: how results, reports, the predictor and the app name a refinement."""
    return "none" if refine is None else refine.label()


def refine_from_config(inference: object) -> Optional[GuidedRefine]:
    """The refinement an `InferenceConfig` asks for: None for refine "none", else its GuidedRefine.
    Raises ValueError for an unknown mode or invalid settings."""
    mode = inference.refine
    if mode not in REFINE_MODES:
        raise ValueError(f"unknown mask refinement {mode!r}; expected one of {REFINE_MODES}")
    if mode == "none":
        return None
    return GuidedRefine(int(inference.refine_radius), float(inference.refine_eps))


def resolve_refine(inference: object, refine: Union[None, bool, GuidedRefine] = None) -> Optional[GuidedRefine]:
    """The refinement to apply given an override: None = the `InferenceConfig`'s (`refine_from_config`),
    False = none, True = the config's radius and eps even when its mode is "none", a GuidedRefine = that.
    Raises ValueError for anything else or invalid settings."""
    if refine is None:
        return refine_from_config(inference)
    if refine is False:
        return None
    if refine is True:
        return GuidedRefine(int(inference.refine_radius), float(inference.refine_eps))
    if isinstance(refine, GuidedRefine):
        return refine
    raise ValueError(f"refine must be None, a bool or a GuidedRefine, got {refine!r}")


def guided_refine(prob: torch.Tensor, image: torch.Tensor, refine: GuidedRefine,
                  model_size: Tuple[int, int]) -> torch.Tensor:
    """Refine mask probabilities with the image as guide.

    Args:
        prob: (B, H, W) float mask probabilities in [0, 1] (the upsampled sigmoid of the final mask logits).
        image: (B, 3, H, W) the image at the same size, float or uint8 in 0..255 (RGB).
        refine: the filter settings (radius in pixels of the model's input grid).
        model_size: (S_h, S_w), the model's input size; the window and the coefficient grid follow the
            ratio of (H, W) to it, so the same setting means the same thing at any output size.
    Returns:
        (B, H, W) float32 refined probabilities (not clipped: threshold them as the unrefined ones).
    Raises:
        ValueError: when the shapes disagree.
    """
    from kornia.filters import guided_blur

    if prob.ndim != 3 or image.ndim != 4 or image.shape[1] != 3 or image.shape[0] != prob.shape[0] \
            or tuple(image.shape[-2:]) != tuple(prob.shape[-2:]):
        raise ValueError(f"expected prob (B, H, W) and image (B, 3, H, W) of the same B, H, W; got "
                         f"{tuple(prob.shape)} and {tuple(image.shape)}")
    h, w = prob.shape[-2:]
    sh, sw = model_size
    # Fast guided filter for outputs larger than the model grid: coefficients on a grid of about S x S
    # (never coarser than 3/4 of it), upsampled; at S x S itself (evaluation) the exact filter.
    subsample = max(1, round(min(h / max(1, sh), w / max(1, sw))))
    kernel = (2 * max(1, round(refine.radius * h / sh)) + 1, 2 * max(1, round(refine.radius * w / sw)) + 1)
    guide = image.float() / 255.0
    # separable: the window means as two 1-D passes (the same sums, 4x faster at radius 12 on 480 x 640)
    out = guided_blur(guide, prob.float().unsqueeze(1), kernel, float(refine.eps), subsample=subsample,
                      separable=True)
    return out.squeeze(1)


__all__ = ["REFINE_MODES", "GuidedRefine", "refine_label", "refine_from_config", "resolve_refine", "guided_refine"]
