"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

``Â_l = rownorm(fuse_h(A_l) + I)``, ``R = Â_e ⋯ Â_s``, map ``= R[readout, P:]``: layers s (start)
to e (end, default the last); ``e < L - 1`` is the map "up to layer e", how far the flow has
got by then. With mean
fusion and no discard this equals the product of ``½(Ā_l + I)``.

The discard ratio (vit-explain's option, done right): before adding I, exactly
``⌊d·N²⌋`` of each fused layer's lowest entries are zeroed, per image and layer, never a
readout token's attention to itself (vit-explain zeroes one fewer entry when that one is
among the lowest, and only for the first image of a batch); rows are then renormalized over
the keys (vit-explain divides by the wrong axis). ``d = 0`` is plain rollout.
"""

from __future__ import annotations

import math

import torch

from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout
from vitviz.methods.arrays import (
    Fusion,
    check_attn,
    fuse_heads,
    layer_span,
    readout_weights,
    tensors,
)
from vitviz.methods.registry import DISCARD, END_LAYER, FUSION, START_LAYER, register


def discard_lowest(fused: torch.Tensor, layout: TokenLayout, ratio: float) -> torch.Tensor:
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


def rollout_factors(fused: torch.Tensor, layout: TokenLayout, discard: float) -> torch.Tensor:
    """``rownorm(discard(fused) + I)`` for fused ``[..., L, N, N]`` matrices (right axis: rows)."""
    if not 0.0 <= discard < 1.0:
        raise OptionsError(f"discard ratio must be in [0, 1), got {discard}")
    fused = discard_lowest(fused, layout, discard)
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    hat = fused + eye
    return hat / hat.sum(dim=-1, keepdim=True)


def rolled_rows(hat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows @ Â_L ⋯ Â_s`` for row vectors ``rows [..., K, N]`` (cheaper than the full R)."""
    out = rows
    for i in range(hat.shape[-3] - 1, -1, -1):
        out = out @ hat[..., i, :, :]
    return out


@tensors
def rollout_layers(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
    end_layer: int = -1,
) -> torch.Tensor:
    """The per-layer rollout factors ``Â_l = rownorm(fuse_h(A_l) (discarded) + I)``.

    Returns:
        ``[..., e - s + 1, N, N]`` for layers s…e, rows summing to 1.
    """
    check_attn(attn, layout)
    s, e = layer_span(start_layer, end_layer, attn.shape[-4])
    return rollout_factors(fuse_heads(attn[..., s : e + 1, :, :, :], fusion), layout, discard)


@tensors
def rollout_matrix(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
    end_layer: int = -1,
) -> torch.Tensor:
    """The full rollout ``R = Â_e ⋯ Â_s`` as ``[..., N, N]`` (rows sum to 1)."""
    hat = rollout_layers(
        attn, layout, fusion=fusion, discard=discard, start_layer=start_layer, end_layer=end_layer
    )
    eye = torch.eye(attn.shape[-1], dtype=hat.dtype, device=hat.device)
    return rolled_rows(hat, eye.expand(*hat.shape[:-3], -1, -1))


@register(
    "rollout",
    "Attention rollout",
    "attention rollout through the layers (Abnar & Zuidema 2020)",
    (FUSION, DISCARD, START_LAYER, END_LAYER),
    kind="attention",
    order=20,
)
@tensors
def attention_rollout(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    grads: None = None,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
    end_layer: int = -1,
) -> torch.Tensor:
    """The rolled-out readout row ``w @ R`` (``[..., N]``, prefix tokens included).

    Args:
        attn: attention ``[..., L, H, N, N]``.
        layout: token layout of the capture.
        fusion: head fusion before rolling out.
        discard: share of each fused layer's lowest entries zeroed before adding I (see the
            module docstring for exactly which).
        start_layer: first layer of the product.
        end_layer: last layer of the product (the map "up to" that layer).
    """
    hat = rollout_layers(
        attn, layout, fusion=fusion, discard=discard, start_layer=start_layer, end_layer=end_layer
    )
    w = readout_weights(layout, hat)
    return rolled_rows(hat, w.expand(*hat.shape[:-3], 1, -1))[..., 0, :]
