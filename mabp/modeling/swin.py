"""Swin transformer with PWAM language fusion after every stage (LAVT / ReLA / MABP "MultiModalSwin").

The module tree and parameter names mirror the official MABP backbone (buptLwz/MABP,
`gres_model/modeling/backbone/swin.py`, state-dict prefix ``backbone.`` stripped) so the authors'
checkpoint loads one to one. Unlike the official code, nothing is tied to a 480x480 input: every stage
pads its feature map to a multiple of the window size (the Swin "semantic segmentation" variant) and the
shifted-window attention mask is rebuilt from the padded size on every forward.

Layout conventions used throughout: token sequences are (B, H*W, C) in row-major (h, w) order;
"maps" are (B, H, W, C) channels-last inside the transformer and (B, C, H, W) at the output.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mabp.config import VisualConfig
from mabp.modeling.pwam import PWAM, ResidualGate
# relative_position_index / _resize_bias_table live with the Swin key map (mabp.weights); re-exported here.
from mabp.weights import (_resize_bias_table, load_weights_file, map_swin_imagenet_state,  # noqa: F401
                          relative_position_index, unwrap_state)

__all__ = [
    "window_partition",
    "window_reverse",
    "pad_to_window",
    "shifted_window_mask",
    "window_order",
    "relative_position_index",
    "DropPath",
    "Mlp",
    "WindowAttention",
    "SwinTransformerBlock",
    "PatchMerging",
    "PatchEmbed",
    "BasicLayer",
    "VisualFeatures",
    "SwinPWAMEncoder",
]

# Value added to attention logits between tokens of different shifted-window regions (official Swin).
MASK_VALUE = -100.0


# ----------------------------------------------------------------------------------------- window helpers
def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cut a map into non-overlapping windows.

    x: (B, H, W, C) with H and W multiples of `window_size`.
    Returns (B * nH * nW, window_size, window_size, C), windows ordered batch-major, then row, then column.
    """
    b, h, w, c = x.shape
    if h % window_size or w % window_size:
        raise ValueError(f"map {h}x{w} is not a multiple of the window size {window_size}; pad it first")
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(windows: Tensor, window_size: int, h: int, w: int) -> Tensor:
    """Inverse of `window_partition`.

    windows: (B * (h/ws) * (w/ws), ws, ws, C). Returns (B, h, w, C).
    """
    n_windows = (h // window_size) * (w // window_size)
    b = windows.shape[0] // n_windows
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def pad_to_window(x: Tensor, window_size: int) -> Tensor:
    """Zero-pad a (B, H, W, C) map on the right/bottom so H and W become multiples of `window_size`."""
    _, h, w, _ = x.shape
    pad_b = (window_size - h % window_size) % window_size
    pad_r = (window_size - w % window_size) % window_size
    if pad_b or pad_r:
        # F.pad pads from the last dim backwards: (C_left, C_right, W_left, W_right, H_top, H_bottom).
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


def shifted_window_mask(hp: int, wp: int, window_size: int, shift_size: int,
                        device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Attention mask for shifted windows on a (padded) map of size (hp, wp).

    After the cyclic roll by -shift, windows on the bottom/right border mix tokens that are not neighbours in
    the image. The rolled map is split into 3x3 regions (slices (0,-ws), (-ws,-shift), (-shift,None) per
    axis); tokens of different regions must not attend to each other.

    Returns (nW, ws*ws, ws*ws) with 0 for same-region pairs and -100 otherwise, nW = (hp/ws)*(wp/ws).
    """
    img_mask = torch.zeros((1, hp, wp, 1), device=device, dtype=torch.float32)
    slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    region = 0
    for hs in slices:
        for ws in slices:
            img_mask[:, hs, ws, :] = region
            region += 1
    mask_windows = window_partition(img_mask, window_size).view(-1, window_size * window_size)
    diff = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)  # (nW, N, N)
    mask = torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)
    return mask.to(dtype)


def window_order(h: int, w: int, window_size: int, shift_size: int = 0,
                 device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Token indices that turn pad -> roll(-shift) -> `window_partition` into one gather, and back.

    Returns (order, inverse), both int64 on `device` (default CPU):
        order (hp*wp,): for each slot of the windows (windows row-major, tokens row-major inside each) the
            row-major index of its token in the h x w map, or h*w for a padded slot;
        inverse (h*w,): for each token of the map its slot in `order` (the crop of `window_reverse` ->
            roll(+shift)).
    So `cat([tokens, pad_row]).index_select(0, order)` is window_partition(roll(pad(map), -shift)) flattened,
    and `windows.index_select(0, inverse)` undoes it for the real tokens. Cached per size and device, so a
    forward pass neither rebuilds nor re-copies them.
    """
    return _window_order(int(h), int(w), int(window_size), int(shift_size), torch.device(device or "cpu"))


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached: a tensor made under inference_mode could not be saved for backward later
def _window_order(h: int, w: int, window_size: int, shift_size: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    grid = torch.full((math.ceil(h / window_size) * window_size, math.ceil(w / window_size) * window_size),
                      h * w, dtype=torch.long)
    grid[:h, :w] = torch.arange(h * w).view(h, w)
    if shift_size:
        grid = torch.roll(grid, shifts=(-shift_size, -shift_size), dims=(0, 1))
    order = window_partition(grid[None, :, :, None], window_size).reshape(-1)
    real = (order < h * w).nonzero().squeeze(1)
    inverse = torch.empty(h * w, dtype=torch.long)
    inverse[order[real]] = real
    return order.to(device), inverse.to(device)


# ----------------------------------------------------------------------------------------- building blocks
class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample during training.

    x: any shape (B, ...). Survivors are rescaled by 1/keep_prob so the expectation is unchanged.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        noise = x.new_empty(shape).bernoulli_(keep)
        return x * noise / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (dropout is 0 in the official model and omitted). x: (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias.

    x: (B*nW, N, C) with N = ws*ws; mask: optional (nW, N, N) additive mask (0 / -100).
    Returns (B*nW, N, C).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads))  # ((2ws-1)^2, heads)
        # Persistent on purpose: the official checkpoint stores it (it is a pure function of ws).
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """(heads, N, N) bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous()

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.proj(self.attend(*self.qkv(x).chunk(3, dim=-1), mask=mask))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """The attention between the linear layers: `forward(x) == proj(attend(*qkv(x).chunk(3, -1)))`.

        q, k, v: (B*nW, N, C) each, the three thirds of `self.qkv`'s output per window token; mask as in
        `forward`. Returns (B*nW, N, C), the heads' outputs before `proj`.
        """
        bw, n, c = q.shape
        hd = c // self.num_heads
        # Same operation order as the official code (scale q first) to reproduce its outputs closely. The
        # head split is written as transposes feeding the matrix products directly, which ONNX Runtime folds
        # into its MatMul kernels instead of copying.
        q = (q * self.scale).reshape(bw, n, self.num_heads, hd).transpose(1, 2)
        attn = q @ k.reshape(bw, n, self.num_heads, hd).permute(0, 2, 3, 1)  # (B*nW, heads, N, N)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            n_win = mask.shape[0]
            # Windows are batch-major, so the same (nW, N, N) mask applies to every image of the batch.
            attn = attn.view(bw // n_win, n_win, self.num_heads, n, n) + mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return (attn @ v.reshape(bw, n, self.num_heads, hd).transpose(1, 2)).transpose(1, 2).reshape(bw, n, c)


class SwinTransformerBlock(nn.Module):
    """One (shifted-)window transformer block.

    forward(x (B, H*W, C), h, w, attn_mask (nW, N, N) for the padded size or None) -> (B, H*W, C).
    The map is zero-padded to window multiples AFTER norm1 (so padded tokens are exact zeros). In unshifted
    windows padded tokens are not masked (official behaviour); in shifted windows only the region mask
    applies.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int = 0,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.dim = dim
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, h: int, w: int, attn_mask: Optional[Tensor] = None) -> Tensor:
        """The official block's maths, without the padded tokens' linear layers and with the window
        shuffles as gathers.

        The official block zero-pads after norm1, so a padded token's q, k, v are exactly the qkv bias
        (0 @ W + b), and its own output is cut off before the residual. So qkv runs on the h*w real tokens
        plus one zero token (its row is the bias every padded slot reads), and proj, a per-token linear
        layer, runs after the windows are put back and cropped. At 480x480 this skips 31 % of the qkv/proj
        rows in Swin-B's stage 3 (30x30 padded to 36x36) and 61 % in stage 4 (15x15 to 24x24).
        Pad -> roll -> window_partition is one index_select of the qkv rows and window_reverse -> roll ->
        crop another (`window_order`): the same values moved once instead of four to five times (in ONNX
        Runtime, paper's 480x480 visual pass took 520 -> 497 ms). Outputs equal the all-padded form to float rounding (tests/test_swin.py).
        """
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"token count {length} != {h}x{w}")
        ws, s = self.window_size, self.shift_size
        order, inverse = window_order(h, w, ws, s, device=x.device)
        shortcut = x
        xn = self.norm1(x)
        if order.numel() > h * w:  # padded slots read the qkv of a zero token: the bias
            xn = torch.cat([xn, xn.new_zeros(b, 1, c)], dim=1)
        # q, k and v as three linear layers (the thirds of qkv): one packed output is split into three
        # copies in ONNX Runtime (~10 ms of paper's 480x480 visual pass).
        weights = self.attn.qkv.weight.chunk(3)
        biases = self.attn.qkv.bias.chunk(3) if self.attn.qkv.bias is not None else (None,) * 3
        q, k, v = (F.linear(xn, wt, bs).index_select(1, order).view(-1, ws * ws, c)
                   for wt, bs in zip(weights, biases))
        mask = None
        if s > 0:
            mask = attn_mask
            if mask is None:  # convenience for standalone use; layers pass a precomputed mask
                hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
                mask = shifted_window_mask(hp, wp, ws, s, device=x.device)
        heads = self.attn.attend(q, k, v, mask=mask)  # (B*nW, ws*ws, C)
        y = self.attn.proj(heads.view(b, -1, c).index_select(1, inverse))
        x = shortcut + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm(4C) -> Linear(4C, 2C, no bias).

    forward(x (B, H*W, C), h, w) -> (B, ceil(h/2)*ceil(w/2), 2C); odd sizes are zero-padded first.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"token count {length} != {h}x{w}")
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Channel order (x0, x1, x2, x3) = ((0,0), (1,0), (0,1), (1,1)) must match the pretrained weights.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.view(b, -1, 4 * c)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Conv(k=s=patch) + LayerNorm over channels.

    forward(images (B, 3, H, W)) -> (tokens (B, Hp*Wp, C), Hp, Wp), Hp = ceil(H/patch).
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tuple[Tensor, int, int]:
        _, _, h, w = x.shape
        p = self.patch_size
        if w % p or h % p:
            x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)  # (B, C, Hp, Wp)
        hp, wp = x.shape[2], x.shape[3]
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, hp, wp


class BasicLayer(nn.Module):
    """One Swin stage: `depth` blocks alternating W-MSA / SW-MSA, plus the stage's PWAM `fusion`, optional
    `res_gate` and optional `downsample` (PatchMerging). The encoder orchestrates how they are combined
    (see `SwinPWAMEncoder`); this module only owns them so parameter names match the official tree.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: Sequence[float], text_dim: int, pwam_heads: int, downsample: bool, gate: bool):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size, shift_size=0 if j % 2 == 0 else window_size // 2,
                                 mlp_ratio=mlp_ratio, drop_path=drop_path[j])
            for j in range(depth)])
        self.fusion = PWAM(dim, dim, text_dim, dim, dim, num_heads=pwam_heads)
        self.downsample: Optional[PatchMerging] = PatchMerging(dim) if downsample else None
        self.res_gate: Optional[ResidualGate] = ResidualGate(dim) if gate else None

    def forward_blocks(self, x: Tensor, h: int, w: int) -> Tensor:
        """Run the transformer blocks. x: (B, h*w, C) -> (B, h*w, C)."""
        ws = self.window_size
        hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
        # Built per call from the padded size (cheap: one (nW, N, N) tensor per stage), so any input size
        # works and no device-bound tensor lives on the module.
        mask = None
        if self.shift_size > 0 and len(self.blocks) > 1:
            mask = shifted_window_mask(hp, wp, ws, self.shift_size, device=x.device, dtype=x.dtype)
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        return x


class VisualFeatures(NamedTuple):
    """Language-free stage outputs of the "late" mode.

    feats: 4 tensors (B, H_i*W_i, C_i) (the pure visual x of each stage, before any norm);
    sizes: 4 (H_i, W_i) tuples.
    """

    feats: List[Tensor]
    sizes: List[Tuple[int, int]]


# ----------------------------------------------------------------------------------------- the encoder
class SwinPWAMEncoder(nn.Module):
    """Multimodal Swin backbone.

    forward(images (B, 3, H, W) normalised, lang (B, Ct, L) word features, lang_mask (B, L, 1) float,
    1 = real token) -> {"res2": (B, C, H/4, W/4), "res3": (B, 2C, H/8, W/8), "res4": (B, 4C, H/16, W/16),
    "res5": (B, 8C, H/32, W/32)} (sizes are ceil-divided for inputs not divisible by 32).

    fusion == "pwam" (paper): after stage i's blocks, x_res = PWAM_i(x); for stages 0..2
    x <- x + res_gate_i(x_res) * x_res, then PatchMerging(x) feeds stage i+1. The stage output is
    norm_i(x_res).
    fusion == "late" (CPU speed switch): stages run on pure vision (no gate feedback, no res_gate modules);
    PWAM is applied to each stage's visual x afterwards; output norm_i(PWAM_i(x_i)). Use `forward_visual`
    + `forward_fusion` to cache the language-free part per image.
    """

    def __init__(self, cfg: VisualConfig, text_dim: int):
        super().__init__()
        if cfg.kind != "swin":
            raise ValueError(f"SwinPWAMEncoder needs visual.kind == 'swin', got {cfg.kind!r}")
        if cfg.fusion not in ("pwam", "late"):
            raise ValueError(f"visual.fusion must be 'pwam' or 'late', got {cfg.fusion!r}")
        depths = tuple(int(d) for d in cfg.depths)
        heads = tuple(int(h) for h in cfg.num_heads)
        if len(depths) != 4 or len(heads) != 4:
            raise ValueError("Swin needs exactly 4 stages (depths and num_heads of length 4)")
        self.fusion_mode = cfg.fusion
        self.num_layers = 4
        self.embed_dim = int(cfg.embed_dim)
        self.window_size = int(cfg.window_size)
        self.num_features = [self.embed_dim * 2 ** i for i in range(4)]
        self.out_channels: Dict[str, int] = {f"res{i + 2}": c for i, c in enumerate(self.num_features)}
        self.strides: Dict[str, int] = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
        if cfg.patch_size != 4:
            # The strides above (and the official model) assume 4; other values would mislabel the levels.
            raise ValueError(f"only patch_size 4 is supported, got {cfg.patch_size}")

        self.patch_embed = PatchEmbed(cfg.patch_size, 3, self.embed_dim)
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(depths)).tolist()  # stochastic depth decay rule
        self.layers = nn.ModuleList()
        for i in range(4):
            start = sum(depths[:i])
            has_down = i < 3
            self.layers.append(BasicLayer(
                dim=self.num_features[i], depth=depths[i], num_heads=heads[i], window_size=self.window_size,
                mlp_ratio=cfg.mlp_ratio, drop_path=dpr[start:start + depths[i]], text_dim=text_dim,
                pwam_heads=cfg.pwam_heads, downsample=has_down, gate=has_down and cfg.fusion == "pwam"))
        for i, c in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(c))

        self._init_weights()
        if cfg.fusion == "late":
            self._register_load_state_dict_pre_hook(self._drop_gate_keys)
        if cfg.weights:
            self.load_swin_weights(cfg.weights)

    # ------------------------------------------------------------------ init / loading
    def _init_weights(self) -> None:
        """trunc_normal(.02) Linear weights, zero biases, unit LayerNorms on the Swin parts; PWAM convs keep
        PyTorch's default init; residual gates are (re-)zeroed so the fused residual starts closed."""
        for name, m in self.named_modules():
            if ".fusion" in f".{name}":
                continue  # PWAM: default init (it holds no Linear/LayerNorm anyway)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in self.layers:
            if layer.res_gate is not None:
                nn.init.zeros_(layer.res_gate[0].weight)
                nn.init.zeros_(layer.res_gate[2].weight)

    @staticmethod
    def _drop_gate_keys(state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """In "late" mode there are no gates: accept (and drop) the paper checkpoint's res_gate entries so
        it loads strictly. A non-zero gate means this mode no longer equals the paper model: warn."""
        gate_keys = [k for k in state_dict if k.startswith(prefix + "layers.") and ".res_gate." in k]
        nonzero = [k for k in gate_keys if torch.is_tensor(state_dict[k]) and bool(state_dict[k].any())]
        for k in gate_keys:
            state_dict.pop(k)
        if nonzero:
            warnings.warn(f"fusion='late' ignores {len(nonzero)} non-zero res_gate weights; outputs will "
                          "differ from the gated ('pwam') model", stacklevel=3)

    def load_swin_weights(self, path_or_state: Union[str, Dict[str, Tensor]]) -> Tuple[List[str], List[str]]:
        """Load ImageNet Swin weights (the Microsoft release layout, optionally wrapped in {"model": ...} /
        {"state_dict": ...} or prefixed with "backbone.") into the Swin parts; PWAM, gates and output norms
        stay fresh.

        Strict: every Swin entry must be present with the right shape (bias tables of another window are
        resized bicubically); anything else raises mabp.weights.ConversionError listing the problems, so a
        wrong file never half-loads. The mapping is the converter's (`map_swin_imagenet_state`).
        Returns (fresh, ignored) key lists.
        """
        source = str(path_or_state) if isinstance(path_or_state, str) else "state dict"
        raw = load_weights_file(path_or_state) if isinstance(path_or_state, str) else path_or_state
        state, _ = unwrap_state(raw, source)
        expected = {"backbone." + k: tuple(v.shape) for k, v in self.state_dict().items()}
        mapped, report = map_swin_imagenet_state(state, expected, self.window_size, source=source)
        report.raise_if_invalid()
        result = self.load_state_dict({k[len("backbone."):]: v for k, v in mapped.items()}, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        return list(report.fresh), [k for k, _ in report.ignored]

    @torch.no_grad()
    def language_free_stages(self) -> bool:
        """True if no language reaches the next stage: "late" mode, or "pwam" mode whose residual gates
        are exactly zero. The official gates are zero-initialised AND receive exactly zero gradient
        (tanh(W2 relu(W1 x)) with W1 = W2 = 0 is a stationary point), so a model trained the official way
        keeps them closed and its visual pass is language-free: cacheable per image with identical outputs.
        """
        if self.fusion_mode == "late":
            return True
        return all(not bool(layer.res_gate[0].weight.any()) or not bool(layer.res_gate[2].weight.any())
                   for layer in self.layers if layer.res_gate is not None)

    @property
    def size_divisibility(self) -> int:
        return 32

    # ------------------------------------------------------------------ forward paths
    def _to_map(self, i: int, x_res: Tensor, h: int, w: int) -> Tensor:
        """norm_i over channels, then (B, h*w, C) -> (B, C, h, w)."""
        x = getattr(self, f"norm{i}")(x_res)
        return x.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()

    def forward_visual(self, images: Tensor) -> VisualFeatures:
        """Language-free part ("late" mode only). images (B, 3, H, W) -> VisualFeatures(feats, sizes)."""
        if not self.language_free_stages():
            raise RuntimeError("forward_visual needs visual.fusion='late' or closed gates: in 'pwam' mode "
                               "with open gates the language is gated into the backbone after every stage; "
                               "call forward()")
        x, h, w = self.patch_embed(images)
        feats: List[Tensor] = []
        sizes: List[Tuple[int, int]] = []
        for i, layer in enumerate(self.layers):
            x = layer.forward_blocks(x, h, w)
            feats.append(x)
            sizes.append((h, w))
            if layer.downsample is not None:
                x = layer.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return VisualFeatures(feats, sizes)

    def forward_fusion(self, visual: Union[VisualFeatures, Tuple[List[Tensor], List[Tuple[int, int]]]],
                       lang: Tensor, lang_mask: Tensor) -> Dict[str, Tensor]:
        """Fuse cached visual stage outputs with language ("late" mode).

        visual: output of `forward_visual` (feats (B, H_i*W_i, C_i), sizes); lang (B, Ct, L);
        lang_mask (B, L, 1). Returns res2..res5 maps (B, C_i, H_i, W_i).
        """
        if not self.language_free_stages():
            raise RuntimeError("forward_fusion needs visual.fusion='late' or closed gates")
        feats, sizes = visual
        out: Dict[str, Tensor] = {}
        for i, (layer, x, (h, w)) in enumerate(zip(self.layers, feats, sizes)):
            out[f"res{i + 2}"] = self._to_map(i, layer.fusion(x, lang, lang_mask), h, w)
        return out

    def forward(self, images: Tensor, lang: Tensor, lang_mask: Tensor) -> Dict[str, Tensor]:
        if self.fusion_mode == "late":
            return self.forward_fusion(self.forward_visual(images), lang, lang_mask)
        x, h, w = self.patch_embed(images)
        out: Dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = layer.forward_blocks(x, h, w)
            x_res = layer.fusion(x, lang, lang_mask)
            out[f"res{i + 2}"] = self._to_map(i, x_res, h, w)
            if layer.downsample is not None:
                # The gated multimodal residual is what the next stage sees (LAVT).
                x = x + layer.res_gate(x_res) * x_res
                x = layer.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return out
