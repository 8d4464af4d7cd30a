"""What the model did, collected through forward hooks (lucidrains' Recorder idea), never by changing
any module's `forward`.

    with DecoderRecorder(model) as rec:
        outputs = model(images, ids, mask)
    rec.records   # raw tensors per hook
    # hooks are removed on exit; a model outside the `with` block pays nothing

`build_introspection` turns the records and the outputs of ONE sample into an `Introspection` with
numpy arrays in original-image coordinates, for the app: region grids per scale, per-layer
cross-attention over the image and over the words, the query generator's word weights, and the final
per-region prototypes with their similarity maps (paper Fig. 7). `cluster_prototypes` runs KMeans on
the prototypes (scikit-learn), with a 2-D PCA and the silhouette score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .modeling.regional_head import window_geometry


class DecoderRecorder:
    """Registers forward hooks on the decoder; collects inputs needed to recompute what was hidden.

    Recorded (batch kept, everything detached):
      "feat_shapes": [(h_s, w_s)] of the multi-scale features, "mask_features_shape",
      "cross_attn": {layer: (B, Q, S) head-averaged attention weights (softmax(q k^T / sqrt d) with the
                     layer's attention mask)}, "word_weights": (B, L, Q0) raw query-generator weights,
      "prototypes": (B, Q, C) final head embeddings, "similarity": (B, Q, h, w) their dot products with
                    the final head's feature map.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.records: Dict[str, object] = {"cross_attn": {}}
        self._handles: List[torch.utils.hooks.RemovableHandle] = []

    # ------------------------------------------------------------------------------------- hooks
    def _decoder_pre(self, module, args, kwargs):
        feats = args[0] if args else kwargs["feats"]
        mask_features = args[1] if len(args) > 1 else kwargs["mask_features"]
        self.records["feat_shapes"] = [tuple(f.shape[-2:]) for f in feats]
        self.records["mask_features_shape"] = tuple(mask_features.shape[-2:])

    def _cross_attn_hook(self, index: int):
        def hook(module: nn.MultiheadAttention, args, kwargs, output):
            q, k = args[0], args[1]
            mask = kwargs.get("attn_mask")
            self.records["cross_attn"][index] = _attention_weights(module, q, k, mask)
        return hook

    def _query_generator_hook(self, module, args, kwargs, output):
        lang = args[0] if args else kwargs["lang"]
        lang_mask = args[1] if len(args) > 1 else kwargs["lang_mask"]
        with torch.no_grad():
            w, _ = module.word_weights(lang, lang_mask)
        self.records["word_weights"] = w.detach()

    def _final_head_hook(self, module, args, kwargs, output):
        x = args[0]
        feat = args[1]
        with torch.no_grad():
            embed = module.embed(x)  # (B, Q, C): the per-region prototypes
            sim = torch.einsum("bqc,bchw->bqhw", embed, feat)
        self.records["prototypes"] = embed.detach()
        self.records["similarity"] = sim.detach()

    # ---------------------------------------------------------------------------------- context
    def __enter__(self) -> "DecoderRecorder":
        dec = self.model.decoder
        self._handles.append(dec.register_forward_pre_hook(self._decoder_pre, with_kwargs=True))
        for i, layer in enumerate(getattr(dec, "layers", [])):
            attn = getattr(layer, "cross_attn", None)
            if isinstance(attn, nn.MultiheadAttention):
                self._handles.append(attn.register_forward_hook(self._cross_attn_hook(i), with_kwargs=True))
        qg = getattr(dec, "query_generator", None)
        if qg is not None and hasattr(qg, "word_weights"):
            self._handles.append(qg.register_forward_hook(self._query_generator_hook, with_kwargs=True))
        heads = getattr(dec, "heads", None)
        if heads is not None and len(heads):
            self._handles.append(heads[-1].register_forward_hook(self._final_head_hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _attention_weights(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                       attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Recompute nn.MultiheadAttention's head-averaged weights (B, Q, S) from its inputs (seq-first)."""
    with torch.no_grad():
        e, h = mha.embed_dim, mha.num_heads
        w_q, w_k, _ = mha.in_proj_weight.split(e)
        b_q, b_k, _ = mha.in_proj_bias.split(e) if mha.in_proj_bias is not None else (None, None, None)
        q = nn.functional.linear(query, w_q, b_q)  # (Q, B, E)
        k = nn.functional.linear(key, w_k, b_k)  # (S, B, E)
        qn, b = q.shape[0], q.shape[1]
        sn = k.shape[0]
        d = e // h
        q = q.reshape(qn, b * h, d).transpose(0, 1) / math.sqrt(d)  # (B*h, Q, d)
        k = k.reshape(sn, b * h, d).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2)).view(b, h, qn, sn)
        if attn_mask is not None:
            # (B, 1, Q, S) shared by the heads, or nn.MultiheadAttention's (B*h, Q, S)
            mask = attn_mask if attn_mask.dim() == 4 else attn_mask.view(b, h, qn, sn)
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(mask, float("-inf"))
            else:
                scores = scores + mask
        weights = scores.softmax(-1).mean(1)
    return weights.detach()


# ------------------------------------------------------------------------------------ the result
@dataclass
class ScaleRegions:
    n: int  # the grid is n x n regions
    grid_hw: Tuple[int, int]  # resolution of this head's map
    boxes: np.ndarray  # (Q, 4) float x0, y0, x1, y1 in ORIGINAL image pixels
    share: np.ndarray  # (Q,) fraction of the region's pixels predicted foreground by this head
    mask: np.ndarray  # (h, w) bool head mask at its own resolution


@dataclass
class LayerAttention:
    layer: int
    scale: int
    n: int  # region grid of the queries at this layer
    grid_hw: Tuple[int, int]
    image: np.ndarray  # (Q, h, w) attention mass on each visual token (sums with `language` to 1)
    language: np.ndarray  # (Q, L) attention mass on each language token (zeros if none in memory)


@dataclass
class Introspection:
    image_size: Tuple[int, int]
    tokens: List[str]  # L entries, "[PAD]" for padding
    token_mask: np.ndarray  # (L,) bool, real tokens
    scales: List[ScaleRegions]
    layers: List[LayerAttention]
    word_weights: Optional[np.ndarray]  # (Q0, L) raw (un-softmaxed) query-generator weights; padded = nan
    prototypes: Optional[np.ndarray]  # (Q, C) final per-region prototype embeddings
    similarity: Optional[np.ndarray]  # (Q, h, w) each prototype's dot product with the final feature map
    final_n: int
    extras: Dict[str, object] = field(default_factory=dict)


def _region_boxes(n_q: int, hw: Tuple[int, int], image_size: Tuple[int, int]) -> np.ndarray:
    geo = window_geometry(hw[0], hw[1], n_q)
    boxes = geo.region_boxes().numpy().astype(np.float64)
    sy, sx = image_size[0] / hw[0], image_size[1] / hw[1]
    boxes[:, [0, 2]] *= sx
    boxes[:, [1, 3]] *= sy
    return boxes


def head_query_counts(cfg) -> List[int]:
    """Region queries per supervised head of an MABP config: 16 * 4^s per scale, the finest for the last."""
    counts = [cfg.decoder.num_queries * 4 ** s for s in range(cfg.decoder.num_scales)]
    return counts + [counts[-1]]


def build_introspection(records: Dict[str, object], outputs: Dict[str, list], tokens: Sequence[str],
                        token_mask: Sequence[int], image_size: Tuple[int, int], head_queries: Sequence[int],
                        threshold: float = 0.5, layers_per_scale: int = 3, index: int = 0) -> Introspection:
    """Numpy summary of sample `index` of a recorded forward pass. head_queries: see head_query_counts."""
    L = len(token_mask)
    tokens = list(tokens) + ["[PAD]"] * (L - len(tokens))
    tmask = np.asarray(token_mask, dtype=bool)
    scales: List[ScaleRegions] = []
    for logits, n_q in zip(outputs["pred_masks"], head_queries):
        m = (logits[index].float().sigmoid() > threshold).cpu()
        hw = tuple(m.shape)
        geo = window_geometry(hw[0], hw[1], n_q)
        owner = geo.region_index().flatten()
        fg = torch.zeros(n_q).index_add_(0, owner, m.flatten().float())
        count = torch.bincount(owner, minlength=n_q).clamp(min=1).float()
        scales.append(ScaleRegions(geo.n, hw, _region_boxes(n_q, hw, image_size), (fg / count).numpy(), m.numpy()))

    layers: List[LayerAttention] = []
    feat_shapes = records.get("feat_shapes", [])
    for i, w in sorted(records.get("cross_attn", {}).items()):
        s = min(i // layers_per_scale, len(feat_shapes) - 1)
        hw = feat_shapes[s]
        a = w[index].float().cpu().numpy()  # (Q, S)
        q = a.shape[0]
        hwn = hw[0] * hw[1]
        img = a[:, :hwn].reshape(q, hw[0], hw[1])
        lang = a[:, hwn:hwn + L] if a.shape[1] > hwn else np.zeros((q, L), dtype=np.float32)
        layers.append(LayerAttention(i, s, int(round(math.sqrt(q))), hw, img, lang))

    ww = records.get("word_weights")
    word_weights = None
    if ww is not None:
        word_weights = ww[index].float().cpu().numpy().T.copy()  # (Q0, L)
        word_weights[:, ~tmask] = np.nan
    protos = records.get("prototypes")
    sim = records.get("similarity")
    final_n = scales[-1].n if scales else 0
    return Introspection(
        image_size=tuple(image_size), tokens=tokens, token_mask=tmask, scales=scales, layers=layers,
        word_weights=word_weights,
        prototypes=None if protos is None else protos[index].float().cpu().numpy(),
        similarity=None if sim is None else sim[index].float().cpu().numpy(),
        final_n=final_n)


# ------------------------------------------------------------------------------- prototype analysis
def cluster_prototypes(prototypes: np.ndarray, k: int, seed: int = 0) -> Dict[str, object]:
    """KMeans (scikit-learn) on the (Q, C) prototypes, as the paper's Fig. 7.

    Returns labels (Q,), a 2-D PCA projection (Q, 2), the silhouette score (None when undefined: k < 2
    or k >= the number of distinct prototypes) and k actually used.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    x = np.asarray(prototypes, dtype=np.float64)
    q = x.shape[0]
    distinct = len(np.unique(np.round(x, 6), axis=0))
    k = int(max(1, min(k, q, distinct)))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x) if k > 1 else np.zeros(q, int)
    pca = PCA(n_components=2, random_state=seed).fit_transform(x) if q >= 2 else np.zeros((q, 2))
    sil = float(silhouette_score(x, labels)) if 1 < k < q and len(set(labels)) > 1 else None
    return {"labels": labels, "pca": pca, "silhouette": sil, "k": k}
