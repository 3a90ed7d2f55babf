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


@tensors
def prefix_attention(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Share of the patch queries' attention that goes to the prefix tokens ([CLS], [DIST],
    registers), mean over patch queries: ``[..., L, H]`` in [0, 1] (0 without prefix tokens)."""
    check_attn(attn, layout)
    p_ = layout.num_prefix
    return wide(attn[..., p_:, :p_]).sum(dim=-1).mean(dim=-1)


@tensors
def self_attention(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Attention of each patch to itself, mean over patches: ``[..., L, H]`` in [0, 1]."""
    check_attn(attn, layout)
    p_ = layout.num_prefix
    return torch.diagonal(wide(attn[..., p_:, p_:]), dim1=-2, dim2=-1).mean(dim=-1)


# What a head's numbers say it does (the first rule that holds):
SINK_SHARE = 0.5  # prefix sink: half or more of the patches' attention goes to prefix tokens
SELF_SHARE = 0.5  # diagonal: a patch gives itself half or more of its attention
LOCAL_RATIO = 0.5  # local: mean distance under half of what uniform attention would give
HEAD_KINDS = ("prefix sink", "diagonal", "local", "global")


def uniform_distance(layout: TokenLayout) -> float:
    """Mean attention distance (pixels) of attention spread evenly over the patches."""
    c = torch.as_tensor(layout.patch_centers(), dtype=torch.float64)
    return float(torch.cdist(c, c).mean())


def head_columns(attn: Any, layout: TokenLayout) -> dict[str, Any]:
    """The head table's numeric columns as float64 numpy arrays ``[..., L, H]``:
    ``mean_distance`` (px), ``entropy`` (nats), ``to_prefix`` and ``to_self``."""
    import numpy as np

    return {
        "mean_distance": np.asarray(mean_attention_distance(attn, layout), np.float64),
        "entropy": np.asarray(attention_entropy(attn, layout), np.float64),
        "to_prefix": np.asarray(prefix_attention(attn, layout), np.float64),
        "to_self": np.asarray(self_attention(attn, layout), np.float64),
    }


def head_kinds(mean_distance: Any, to_prefix: Any, to_self: Any, uniform: float) -> Any:
    """Each head's kind (one of :data:`HEAD_KINDS`) by the rules above, the first that holds,
    elementwise over arrays of one shape; ``uniform`` is :func:`uniform_distance` (px)."""
    import numpy as np

    far = LOCAL_RATIO * uniform
    return np.where(
        np.asarray(to_prefix) >= SINK_SHARE,
        "prefix sink",
        np.where(
            np.asarray(to_self) >= SELF_SHARE,
            "diagonal",
            np.where(np.asarray(mean_distance) < far, "local", "global"),
        ),
    )


def head_table(attn: Any, layout: TokenLayout) -> dict[str, Any]:
    """Every head as a row: ``layer``, ``head``, ``mean_distance`` (px), ``entropy`` (nats),
    ``to_prefix``, ``to_self`` and ``kind`` (one of :data:`HEAD_KINDS`, by the rules above).
    Columns are flat lists of length L·H, layer-major."""
    import numpy as np

    columns = head_columns(attn, layout)
    distance = columns["mean_distance"]
    layers, heads = distance.shape[-2:]
    kind = head_kinds(distance, columns["to_prefix"], columns["to_self"], uniform_distance(layout))
    ll, hh = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    table: dict[str, Any] = {"layer": ll.ravel().tolist(), "head": hh.ravel().tolist()}
    table |= {k: v.reshape(-1).tolist() for k, v in columns.items()}
    table["kind"] = kind.reshape(-1).tolist()
    return table
