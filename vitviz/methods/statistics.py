"""Per-head statistics: mean attention distance (ViT paper, Fig. 7) and attention entropy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vitviz.layout import TokenLayout
from vitviz.methods.arrays import check_attn, tensors, wide


@tensors
def mean_attention_distance(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Mean attention distance in pixels per layer and head (Dosovitskiy et al. 2021, Fig. 7).

    For each patch query q: ``Σ_k p(k|q)·‖c_q − c_k‖`` over patch keys k, with p the query's
    attention renormalized over the patch keys and c the patch centres in input pixels; then
    the mean over patch queries.

    Returns:
        ``[..., L, H]`` distances in pixels.
    """
    check_attn(attn, layout)
    p_ = layout.num_prefix
    pp = wide(attn[..., p_:, p_:])
    pp = pp / pp.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(pp.dtype).tiny)
    c = torch.as_tensor(layout.patch_centers(), dtype=pp.dtype, device=pp.device)
    return (pp * torch.cdist(c, c)).sum(dim=-1).mean(dim=-1)


@tensors
def attention_entropy(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Attention entropy in nats per layer and head: mean over all query rows of ``−Σ p log p``.

    Returns:
        ``[..., L, H]``; 0 for one-hot rows, ``log N`` for uniform rows.
    """
    check_attn(attn, layout)
    t = wide(attn)
    return (-torch.special.xlogy(t, t).sum(dim=-1)).mean(dim=-1)


STATISTICS: dict[str, Callable[..., Any]] = {
    "mean_distance": mean_attention_distance,
    "entropy": attention_entropy,
}
