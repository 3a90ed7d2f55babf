"""Explanation methods: pure functions from captured attention to maps and statistics.

Every function takes attention probabilities ``attn`` of shape ``[..., L, H, N, N]`` (any
leading batch dims; rows sum to 1) and a :class:`~vitviz.layout.TokenLayout`, and works on
numpy arrays or torch tensors alike (a tensor stays on its device; numpy in, numpy out).

Implemented:

* Raw readout maps ``A_l^h[readout, P:]`` with head fusion mean / max / min.
* Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  ``Â_l = rownorm(fuse_h(A_l) + I)``, ``R = Â_L ⋯ Â_s``, map ``= R[readout, P:]``, with
  vit-explain's discard ratio done per image and with rows renormalized on the right axis.
* Query-patch attention: what one patch attends to, per layer/head or rolled out.
* Thresholded masks (Caron et al., "Emerging Properties in Self-Supervised Vision
  Transformers", ICCV 2021): the smallest set of patches holding a share of the mass.
* Mean attention distance (Dosovitskiy et al., ICLR 2021, Fig. 7) and attention entropy.

The map methods share one signature, ``fn(attn, layout, **options) -> map[..., gh, gw]``, and
are registered in :data:`METHODS`, from which the CLI, the app and the server list them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout
from vitviz.results import FUSION_ORDER, ClassRelevance

Array = TypeVar("Array", np.ndarray, torch.Tensor)
Fusion = Literal["mean", "max", "min"]
FUSIONS: tuple[str, ...] = FUSION_ORDER


def _as_tensor(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Tensor view of ``x`` (no copy; half precision stays half) and whether it was numpy."""
    was_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.asarray(x)) if was_numpy else x
    if not t.is_floating_point():
        t = t.float()
    return t, was_numpy


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (results are computed in fp32 or fp64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _back(t: torch.Tensor, was_numpy: bool) -> np.ndarray | torch.Tensor:
    return t.detach().cpu().numpy() if was_numpy else t


def _check_attn(attn: torch.Tensor, layout: TokenLayout) -> None:
    if attn.ndim < 4:
        raise OptionsError(f"attention must be [..., layers, heads, N, N], got shape {attn.shape}")
    n = layout.num_tokens
    if attn.shape[-1] != n or attn.shape[-2] != n:
        raise OptionsError(
            f"attention has {attn.shape[-1]} tokens but the layout has {n} "
            f"({layout.num_prefix} prefix + {layout.grid[0]}×{layout.grid[1]} patches)"
        )


def _layer_index(layer: int, num_layers: int) -> int:
    if not -num_layers <= layer < num_layers:
        raise OptionsError(
            f"layer {layer} is out of range: the model has {num_layers} layers "
            f"(0–{num_layers - 1}, or -1 for the last)"
        )
    return layer % num_layers


def _head_index(head: int | None, num_heads: int) -> int | None:
    if head is None:
        return None
    if not -num_heads <= head < num_heads:
        raise OptionsError(
            f"head {head} is out of range: each layer has {num_heads} heads "
            f"(0–{num_heads - 1}); leave it out to fuse all heads"
        )
    return head % num_heads


def _patch_index(patch: int, layout: TokenLayout) -> int:
    if not 0 <= patch < layout.num_patches:
        raise OptionsError(
            f"patch {patch} is out of range: the grid is {layout.grid[0]}×{layout.grid[1]} "
            f"= {layout.num_patches} patches (0–{layout.num_patches - 1}, row by row)"
        )
    return patch


def _to_grid(row: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Patch columns of a token row ``[..., N]`` reshaped to ``[..., gh, gw]``."""
    return row[..., layout.num_prefix :].reshape(*row.shape[:-1], *layout.grid)


def _row_grid(row: Array, layout: TokenLayout) -> Array:
    """A full token row's patch part on the grid, in the row's own array type."""
    t, was_numpy = _as_tensor(row)
    return _back(_to_grid(t, layout), was_numpy)


def fuse_heads(attn: Array, fusion: Fusion = "mean") -> Array:
    """Fuse the head axis (-3) of ``[..., H, N, N]`` attention by mean, max or min."""
    t, was_numpy = _as_tensor(attn)
    if fusion == "mean":
        wide = torch.float64 if t.dtype == torch.float64 else torch.float32
        out = t.mean(dim=-3, dtype=wide)  # half-precision attention accumulates in fp32
    elif fusion == "max":
        out = _wide(t.amax(dim=-3))
    elif fusion == "min":
        out = _wide(t.amin(dim=-3))
    else:
        raise OptionsError(f"unknown head fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    return _back(out, was_numpy)


def _select_layer(t: torch.Tensor, layer: int, head: int | None, fusion: Fusion) -> torch.Tensor:
    """``[..., L, H, N, N]`` → one layer's ``[..., N, N]``, one head or fused."""
    li = _layer_index(layer, t.shape[-4])
    hi = _head_index(head, t.shape[-3])
    a = t[..., li, :, :, :]
    return _wide(a[..., hi, :, :]) if hi is not None else fuse_heads(a, fusion)


def attention_map(
    attn: Array,
    layout: TokenLayout,
    *,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
) -> Array:
    """Raw readout map of one layer: ``A_l^h[readout, P:]`` on the patch grid.

    Args:
        attn: attention ``[..., L, H, N, N]``.
        layout: the capture's token layout (gives the readout weights and the grid).
        layer: layer index (negative counts from the end).
        head: one head, or None to fuse all heads with ``fusion``.
        fusion: "mean", "max" or "min" over heads.

    Returns:
        ``[..., gh, gw]`` map; for pooled readouts, the mean of the patch rows.
    """
    t, was_numpy = _as_tensor(attn)
    return _back(_to_grid(_attention_row(t, layout, layer, head, fusion), layout), was_numpy)


def _attention_row(
    t: torch.Tensor, layout: TokenLayout, layer: int, head: int | None, fusion: Fusion
) -> torch.Tensor:
    _check_attn(t, layout)
    a = _select_layer(t, layer, head, fusion)
    w = torch.as_tensor(layout.readout_weights(), dtype=a.dtype, device=a.device)
    return w @ a


def attention_row(
    attn: Array,
    layout: TokenLayout,
    *,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
) -> Array:
    """The full readout row of one layer (``[..., N]``, prefix tokens included).

    :func:`attention_map` is this row's patch part on the grid; the first ``P`` entries are
    what the readout gives the class, distillation and register tokens.
    """
    t, was_numpy = _as_tensor(attn)
    return _back(_attention_row(t, layout, layer, head, fusion), was_numpy)


def _discard_lowest(fused: torch.Tensor, layout: TokenLayout, ratio: float) -> torch.Tensor:
    """Zero the lowest ``ratio`` share of each ``[N, N]`` matrix's entries, per image and layer.

    Protected (never zeroed): the readout tokens' attention to themselves, ``A[t, t]`` for
    every token t in ``layout.readout_tokens`` (the class token; class and distillation token
    for distilled DeiT; none for pooled readouts). Exactly ``floor(ratio · N²)`` unprotected
    entries are zeroed, the smallest first.
    """
    n = fused.shape[-1]
    k = math.floor(ratio * n * n + 1e-9)  # 0.29 · 100 is 28.999…: still 29 entries
    if k == 0:
        return fused
    flat = fused.reshape(*fused.shape[:-2], n * n)
    scores = flat.clone()
    for t in layout.readout_tokens:
        scores[..., t * n + t] = float("inf")
    k = min(k, n * n - len(layout.readout_tokens))
    idx = scores.topk(k, dim=-1, largest=False).indices
    return flat.scatter(-1, idx, 0.0).reshape(fused.shape)


def rollout_layers(
    attn: Array,
    layout: TokenLayout,
    *,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """The per-layer rollout factors ``Â_l = rownorm(fuse_h(A_l) (discarded) + I)``.

    Returns:
        ``[..., L - s, N, N]`` for layers s…L-1, rows summing to 1.
    """
    t, was_numpy = _as_tensor(attn)
    _check_attn(t, layout)
    if not 0.0 <= discard < 1.0:
        raise OptionsError(f"discard ratio must be in [0, 1), got {discard}")
    s = _layer_index(start_layer, t.shape[-4])
    fused = fuse_heads(t[..., s:, :, :, :], fusion)
    return _back(_rollout_factors(fused, layout, discard), was_numpy)


def _rollout_factors(fused: torch.Tensor, layout: TokenLayout, discard: float) -> torch.Tensor:
    """``rownorm(discard(fused) + I)`` for fused ``[..., L, N, N]`` matrices (right axis: rows)."""
    if not 0.0 <= discard < 1.0:
        raise OptionsError(f"discard ratio must be in [0, 1), got {discard}")
    fused = _discard_lowest(fused, layout, discard)
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    hat = fused + eye
    return hat / hat.sum(dim=-1, keepdim=True)


def _rolled_rows(hat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows @ Â_L ⋯ Â_s`` for row vectors ``rows [..., K, N]`` (cheaper than the full R)."""
    out = rows
    for i in range(hat.shape[-3] - 1, -1, -1):
        out = out @ hat[..., i, :, :]
    return out


def rollout_matrix(
    attn: Array,
    layout: TokenLayout,
    *,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """The full rollout ``R = Â_L ⋯ Â_s`` as ``[..., N, N]`` (rows sum to 1)."""
    t, was_numpy = _as_tensor(attn)
    hat = rollout_layers(t, layout, fusion=fusion, discard=discard, start_layer=start_layer)
    eye = torch.eye(t.shape[-1], dtype=hat.dtype, device=hat.device)
    return _back(_rolled_rows(hat, eye.expand(*hat.shape[:-3], -1, -1)), was_numpy)


def rollout(
    attn: Array,
    layout: TokenLayout,
    *,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """Attention rollout map ``R[readout, P:]`` (Abnar & Zuidema 2020).

    Args:
        attn: attention ``[..., L, H, N, N]``.
        layout: token layout of the capture.
        fusion: head fusion before rolling out.
        discard: share of each fused layer's lowest entries zeroed before adding I (per image
            and layer; the readout tokens' self-attention is protected). 0 is plain rollout.
        start_layer: first layer of the product.

    Returns:
        ``[..., gh, gw]`` map.
    """
    row = rollout_row(attn, layout, fusion=fusion, discard=discard, start_layer=start_layer)
    return _row_grid(row, layout)


def rollout_row(
    attn: Array,
    layout: TokenLayout,
    *,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """The full rolled-out readout row ``w @ R`` (``[..., N]``, prefix tokens included)."""
    t, was_numpy = _as_tensor(attn)
    hat = rollout_layers(t, layout, fusion=fusion, discard=discard, start_layer=start_layer)
    w = torch.as_tensor(layout.readout_weights(), dtype=hat.dtype, device=hat.device)
    return _back(_rolled_rows(hat, w.expand(*hat.shape[:-3], 1, -1))[..., 0, :], was_numpy)


def query_map(
    attn: Array,
    layout: TokenLayout,
    *,
    patch: int = 0,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
    rolled: bool = False,
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """What one patch attends to: row ``P + patch`` of ``A_l^h`` (or of the rollout R).

    Args:
        patch: patch index, row-major over the grid.
        layer, head, fusion: which attention matrix (ignored for ``head``/``layer`` when rolled).
        rolled: use the rollout R (with ``fusion``, ``discard``, ``start_layer``) instead.

    Returns:
        ``[..., gh, gw]`` map over the patch keys.
    """
    row = query_row(
        attn,
        layout,
        patch=patch,
        layer=layer,
        head=head,
        fusion=fusion,
        rolled=rolled,
        discard=discard,
        start_layer=start_layer,
    )
    return _row_grid(row, layout)


def query_row(
    attn: Array,
    layout: TokenLayout,
    *,
    patch: int = 0,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
    rolled: bool = False,
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """The full row of one patch query (``[..., N]``, prefix tokens included); see
    :func:`query_map`."""
    t, was_numpy = _as_tensor(attn)
    _check_attn(t, layout)
    q = layout.num_prefix + _patch_index(patch, layout)
    if rolled:
        hat = rollout_layers(t, layout, fusion=fusion, discard=discard, start_layer=start_layer)
        onehot = torch.zeros(t.shape[-1], dtype=hat.dtype, device=hat.device)
        onehot[q] = 1.0
        row = _rolled_rows(hat, onehot.expand(*hat.shape[:-3], 1, -1))[..., 0, :]
    else:
        row = _select_layer(t, layer, head, fusion)[..., q, :]
    return _back(row, was_numpy)


def threshold_mask(values: Array, threshold: float = 0.6) -> Array:
    """DINO's mask: the smallest set of cells holding a share ``threshold`` of the mass.

    Works over the last two axes of ``values`` (negative values count as 0). Cells are taken
    from the largest down until their sum reaches ``threshold`` of the total.

    Returns:
        Float mask of the same shape (1 kept, 0 dropped).
    """
    if not 0.0 < threshold <= 1.0:
        raise OptionsError(f"mask threshold must be in (0, 1], got {threshold}")
    t, was_numpy = _as_tensor(values)
    t = _wide(t)
    flat = t.clamp_min(0).reshape(*t.shape[:-2], -1)
    total = flat.sum(dim=-1, keepdim=True)
    share = flat / torch.where(total > 0, total, torch.ones_like(total))
    srt, order = share.sort(dim=-1, descending=True)
    before = srt.cumsum(dim=-1) - srt
    keep_sorted = (before < threshold - 1e-9) | (total <= 0)
    keep = torch.zeros_like(flat).scatter(-1, order, keep_sorted.to(flat.dtype))
    return _back(keep.reshape(t.shape), was_numpy)


def mask(
    attn: Array,
    layout: TokenLayout,
    *,
    threshold: float = 0.6,
    source: Literal["attention", "rollout"] = "attention",
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """Thresholded mask of the readout map (DINO shows the last layer's, the default).

    Args:
        threshold: share of the map's mass the kept patches hold (DINO uses 0.6).
        source: "attention" (one layer's readout map) or "rollout".

    Returns:
        ``[..., gh, gw]`` float mask, 1 for kept patches.
    """
    if source == "attention":
        m = attention_map(attn, layout, layer=layer, head=head, fusion=fusion)
    elif source == "rollout":
        m = rollout(attn, layout, fusion=fusion, discard=discard, start_layer=start_layer)
    else:
        raise OptionsError(f"unknown mask source {source!r}: choose 'attention' or 'rollout'")
    return threshold_mask(m, threshold)


def mean_attention_distance(attn: Array, layout: TokenLayout) -> Array:
    """Mean attention distance in pixels per layer and head (ViT paper, Fig. 7).

    For each patch query q: ``Σ_k p(k|q)·‖c_q − c_k‖`` over patch keys k, with p the query's
    attention renormalized over the patch keys and c the patch centres in input pixels; then
    the mean over patch queries.

    Returns:
        ``[..., L, H]`` distances in pixels.
    """
    t, was_numpy = _as_tensor(attn)
    _check_attn(t, layout)
    p_ = layout.num_prefix
    pp = _wide(t[..., p_:, p_:])
    pp = pp / pp.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(pp.dtype).tiny)
    c = torch.as_tensor(layout.patch_centers(), dtype=pp.dtype, device=pp.device)
    dist = torch.cdist(c, c)
    return _back((pp * dist).sum(dim=-1).mean(dim=-1), was_numpy)


def attention_entropy(attn: Array, layout: TokenLayout) -> Array:
    """Attention entropy in nats per layer and head: mean over all query rows of ``−Σ p log p``.

    Returns:
        ``[..., L, H]``; 0 for one-hot rows, ``log N`` for uniform rows.
    """
    t, was_numpy = _as_tensor(attn)
    _check_attn(t, layout)
    t = _wide(t)
    ent = -torch.special.xlogy(t, t).sum(dim=-1)
    return _back(ent.mean(dim=-1), was_numpy)


def _check_grads(t: torch.Tensor, g: torch.Tensor) -> None:
    if g.shape != t.shape:
        raise OptionsError(
            f"gradients {tuple(g.shape)} must have the attention's shape {tuple(t.shape)}"
        )


Gradients = TypeVar("Gradients", np.ndarray, torch.Tensor, ClassRelevance)


def _fusion_index(fusion: str) -> int:
    if fusion not in FUSION_ORDER:
        raise OptionsError(f"unknown head fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    return FUSION_ORDER.index(fusion)


def _check_relevance(rel: ClassRelevance, t: torch.Tensor, layout: TokenLayout) -> None:
    n = layout.num_tokens
    if rel.heads.shape[-1] != n or rel.num_layers != t.shape[-4]:
        raise OptionsError(
            f"the class relevance covers {rel.num_layers} layers of {rel.heads.shape[-1]} tokens "
            f"but the attention has {t.shape[-4]} layers of {n}: they come from different runs"
        )


def _need_layers(rel: ClassRelevance, layers: range | list[int], method: str) -> None:
    missing = sorted(set(layers) - set(rel.layers))
    if missing:
        raise OptionsError(
            f"{method} reads the gradients of layers {missing[0]}–{missing[-1]}, which were not "
            "computed for this class: ask for them (or for all layers)"
        )


def _like(x: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    """A relevance array as a float32 tensor on the attention's device."""
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=t.device)


def relevance_parts(
    attn: torch.Tensor, grads: torch.Tensor, layout: TokenLayout, *, chefer: bool = True
) -> dict[str, torch.Tensor | None]:
    """The parts of :class:`~vitviz.results.ClassRelevance` for ``[..., L, H, N, N]`` inputs.

    Returns tensors with the inputs' leading dims: ``chefer [..., N]`` (None when
    ``chefer`` is False), ``fused [..., 3, L, N, N]``, ``heads [..., L, H, N]`` and
    ``fused_rows [..., 3, L, N]`` (fusions in :data:`~vitviz.results.FUSION_ORDER`).
    """
    prod = _wide(attn) * _wide(grads)  # [..., L, H, N, N]
    fused = torch.stack(
        [prod.mean(dim=-3), prod.amax(dim=-3), prod.amin(dim=-3)], dim=-4
    ).clamp_min(0)
    pos = prod.clamp_min_(0)  # (A ⊙ G)⁺, in place: prod is not needed any more
    pos_fused = torch.stack([pos.mean(dim=-3), pos.amax(dim=-3), pos.amin(dim=-3)], dim=-4)
    w = torch.as_tensor(layout.readout_weights(), dtype=pos.dtype, device=pos.device)
    heads = torch.einsum("n,...nm->...m", w, pos)
    fused_rows = torch.einsum("n,...nm->...m", w, pos_fused)
    row = None
    if chefer:  # Ā_l = mean_h((G ⊙ A)⁺); v ← v + v Ā_l from the last layer down
        abar = pos_fused[..., 0, :, :, :]
        row = w.expand(*abar.shape[:-3], 1, -1)
        for i in range(abar.shape[-3] - 1, -1, -1):
            row = row + row @ abar[..., i, :, :]
        row = row[..., 0, :]
    return {"chefer": row, "fused": fused, "heads": heads, "fused_rows": fused_rows}


def class_relevance(
    attn: Array,
    grads: Array,
    layout: TokenLayout,
    *,
    index: int = -1,
    label: str = "",
    layers: list[int] | tuple[int, ...] | None = None,
) -> ClassRelevance:
    """Reduce one image's ``[L, H, N, N]`` attention gradients to what the methods read.

    ``layers``: the layers whose gradients were computed (default: all).
    """
    t, _ = _as_tensor(attn)
    g, _ = _as_tensor(grads)
    _check_attn(t, layout)
    _check_grads(t, g)
    if t.ndim != 4:
        raise OptionsError("class_relevance takes one image's attention [L, H, N, N]")
    num_layers = t.shape[-4]
    done = tuple(range(num_layers)) if layers is None else tuple(sorted(set(layers)))
    parts = relevance_parts(t, g, layout, chefer=len(done) == num_layers)
    arrays = {k: None if v is None else v.detach().cpu().numpy() for k, v in parts.items()}
    return ClassRelevance(index=int(index), label=str(label), layers=done, **arrays)


def chefer_row(attn: Array, grads: Gradients, layout: TokenLayout) -> Array:
    """Full readout row ``w @ R`` of Chefer et al.'s relevance (``[..., N]``)."""
    t, was_numpy = _as_tensor(attn)
    _check_attn(t, layout)
    if isinstance(grads, ClassRelevance):
        _check_relevance(grads, t, layout)
        if grads.chefer is None:
            _need_layers(grads, range(t.shape[-4]), "Chefer's relevance")
            raise OptionsError("this class relevance carries no Chefer row; compute it again")
        return _back(_like(grads.chefer, t), was_numpy)
    g, _ = _as_tensor(grads)
    _check_grads(t, g)
    # Ā_l = mean_h((∂y_c/∂A_l ⊙ A_l)⁺): the clamp is per head, before the mean
    abar = (_wide(g) * _wide(t)).clamp_min(0).mean(dim=-3)  # [..., L, N, N]
    w = torch.as_tensor(layout.readout_weights(), dtype=abar.dtype, device=abar.device)
    # R = (I + Ā_L) ⋯ (I + Ā_1); its readout row, from the left: v ← v + v Ā_l, l = L … 1
    v = w.expand(*abar.shape[:-3], 1, -1)
    for i in range(abar.shape[-3] - 1, -1, -1):
        v = v + v @ abar[..., i, :, :]
    return _back(v[..., 0, :], was_numpy)


def chefer(attn: Array, grads: Gradients, layout: TokenLayout) -> Array:
    """Generic attention explainability (Chefer, Gur, Wolf, ICCV 2021) for one class.

    ``Ā_l = mean_h((∂y_c/∂A_l ⊙ A_l)⁺)``, ``R = I``, ``R ← R + Ā_l R`` for l = 1 … L, map =
    ``R[readout, P:]`` (readout weights from the layout: the class token, the mean of class and
    distillation tokens, or the mean over patches).

    Args:
        attn: attention ``[..., L, H, N, N]``.
        grads: ``∂y_c/∂A`` of the same shape (``y_c`` the pre-softmax logit of the class), or
            its :class:`~vitviz.results.ClassRelevance`.

    Returns:
        ``[..., gh, gw]`` relevance map.
    """
    row = chefer_row(attn, grads, layout)
    return _row_grid(row, layout)


def grad_rollout_row(
    attn: Array,
    grads: Gradients,
    layout: TokenLayout,
    *,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """Full readout row of gradient rollout (``[..., N]``); see :func:`grad_rollout`."""
    t, was_numpy = _as_tensor(attn)
    _check_attn(t, layout)
    s = _layer_index(start_layer, t.shape[-4])
    if isinstance(grads, ClassRelevance):
        _check_relevance(grads, t, layout)
        _need_layers(grads, range(s, t.shape[-4]), "gradient rollout")
        fused = _like(grads.fused[_fusion_index(fusion), s:], t)
    else:
        g, _ = _as_tensor(grads)
        _check_grads(t, g)
        # each layer's attention with ITS OWN gradient (vit-explain pairs them in reverse order)
        weighted = _wide(t[..., s:, :, :, :]) * _wide(g[..., s:, :, :, :])
        fused = fuse_heads(weighted, fusion).clamp_min(0)
    hat = _rollout_factors(fused, layout, discard)
    w = torch.as_tensor(layout.readout_weights(), dtype=hat.dtype, device=hat.device)
    return _back(_rolled_rows(hat, w.expand(*hat.shape[:-3], 1, -1))[..., 0, :], was_numpy)


def grad_rollout(
    attn: Array,
    grads: Gradients,
    layout: TokenLayout,
    *,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
) -> Array:
    """Gradient rollout (vit-explain's method, corrected) for one class.

    Each layer's heads are weighted by that layer's own gradient, ``A_l ⊙ ∂y_c/∂A_l``, fused
    (mean/max/min), clamped at 0, then rolled out like attention rollout: lowest ``discard``
    share zeroed, ``+ I``, rows normalized to 1 (over the key axis), multiplied through the
    layers from ``start_layer``. ``grads`` may be the full gradients or a
    :class:`~vitviz.results.ClassRelevance`.

    Returns:
        ``[..., gh, gw]`` map.
    """
    row = grad_rollout_row(
        attn, grads, layout, fusion=fusion, discard=discard, start_layer=start_layer
    )
    return _row_grid(row, layout)


def attn_grad_row(
    attn: Array,
    grads: Gradients,
    layout: TokenLayout,
    *,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
) -> Array:
    """Full readout row of ``(A ⊙ ∂y_c/∂A)⁺`` for one layer (``[..., N]``)."""
    t, was_numpy = _as_tensor(attn)
    _check_attn(t, layout)
    li = _layer_index(layer, t.shape[-4])
    hi = _head_index(head, t.shape[-3])
    if isinstance(grads, ClassRelevance):
        _check_relevance(grads, t, layout)
        _need_layers(grads, [li], "attention × gradient")
        row = grads.heads[li, hi] if hi is not None else grads.fused_rows[_fusion_index(fusion), li]
        return _back(_like(row, t), was_numpy)
    g, _ = _as_tensor(grads)
    _check_grads(t, g)
    prod = (_wide(t[..., li, :, :, :]) * _wide(g[..., li, :, :, :])).clamp_min(0)
    a = prod[..., hi, :, :] if hi is not None else fuse_heads(prod, fusion)
    w = torch.as_tensor(layout.readout_weights(), dtype=a.dtype, device=a.device)
    return _back(w @ a, was_numpy)


def attn_grad(
    attn: Array,
    grads: Gradients,
    layout: TokenLayout,
    *,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
) -> Array:
    """Attention × gradient of one layer (one head, or heads fused after the clamp).

    The readout row of ``(A_l^h ⊙ ∂y_c/∂A_l^h)⁺``: where this head's attention pushed the
    class score up. ``grads``: the full gradients or a :class:`~vitviz.results.ClassRelevance`.

    Returns:
        ``[..., gh, gw]`` map.
    """
    row = attn_grad_row(attn, grads, layout, layer=layer, head=head, fusion=fusion)
    return _row_grid(row, layout)


@dataclass(frozen=True)
class Method:
    """A registered map method: ``fn(attn, layout, **options) -> map[..., gh, gw]``.

    Class-specific methods (``needs_gradients``) take ``fn(attn, grads, layout, **options)``
    with ``grads = ∂y_c/∂A`` for the class; ``gradient_layers(options, L)`` says which
    layers' gradients they read (the others need not be computed).
    """

    name: str
    fn: Callable[..., Any]
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    needs_gradients: bool = False

    def gradient_layers(self, options: dict[str, Any], num_layers: int) -> list[int]:
        """Layers whose attention gradients this method reads (empty if class-agnostic)."""
        if not self.needs_gradients:
            return []
        if "layer" in self.options:
            return [_layer_index(options.get("layer", self.options["layer"]), num_layers)]
        start = _layer_index(options.get("start_layer", 0), num_layers)
        return list(range(start, num_layers))


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "attention",
            attention_map,
            "raw readout attention of one layer, one head or all heads fused",
            {"layer": -1, "head": None, "fusion": "mean"},
        ),
        Method(
            "rollout",
            rollout,
            "attention rollout through the layers (Abnar & Zuidema 2020)",
            {"fusion": "mean", "discard": 0.0, "start_layer": 0},
        ),
        Method(
            "query",
            query_map,
            "what one patch attends to (one layer/head, or rolled out)",
            {
                "patch": 0,
                "layer": -1,
                "head": None,
                "fusion": "mean",
                "rolled": False,
                "discard": 0.0,
                "start_layer": 0,
            },
        ),
        Method(
            "mask",
            mask,
            "smallest set of patches holding a share of the map's mass (DINO)",
            {
                "threshold": 0.6,
                "source": "attention",
                "layer": -1,
                "head": None,
                "fusion": "mean",
                "discard": 0.0,
                "start_layer": 0,
            },
        ),
    )
}

for _m in (
    Method(
        "chefer",
        chefer,
        "class-specific relevance: gradient-weighted attention (Chefer et al. 2021)",
        {},
        needs_gradients=True,
    ),
    Method(
        "grad-rollout",
        grad_rollout,
        "class-specific rollout of gradient-weighted attention (vit-explain, corrected)",
        {"fusion": "mean", "discard": 0.0, "start_layer": 0},
        needs_gradients=True,
    ),
    Method(
        "attn-grad",
        attn_grad,
        "attention × gradient of one layer/head for a class",
        {"layer": -1, "head": None, "fusion": "mean"},
        needs_gradients=True,
    ),
):
    METHODS[_m.name] = _m

STATISTICS: dict[str, Callable[..., Any]] = {
    "mean_distance": mean_attention_distance,
    "entropy": attention_entropy,
}


def resolve_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The method's full options: its defaults updated with ``options`` (unknown → error)."""
    if method not in METHODS:
        raise OptionsError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise OptionsError(
            f"method {method!r} takes no option {', '.join(unknown)}; "
            f"its options are {', '.join(spec.options)}"
        )
    return {**spec.options, **options}


def check_options(options: dict[str, Any], num_layers: int, num_heads: int) -> None:
    """Check layer-like and head options against a model before any image is run."""
    for key in ("layer", "start_layer"):
        if options.get(key) is not None:
            _layer_index(options[key], num_layers)
    _head_index(options.get("head"), num_heads)


def compute_map(
    method: str,
    attn: Array,
    layout: TokenLayout,
    *,
    grads: Array | ClassRelevance | None = None,
    **options: Any,
) -> Array:
    """Run a registered method by name with validated options.

    Class-specific methods need ``grads``: ``∂y_c/∂A`` or its
    :class:`~vitviz.results.ClassRelevance` (what
    :meth:`vitviz.backend.LocalBackend.explain_classes` returns).
    """
    resolved = resolve_options(method, options)
    spec = METHODS[method]
    if spec.needs_gradients:
        if grads is None:
            raise OptionsError(
                f"method {method!r} is class-specific: it needs the attention gradients for a "
                "class (LocalBackend.explain_classes computes them)"
            )
        return spec.fn(attn, grads, layout, **resolved)
    return spec.fn(attn, layout, **resolved)
