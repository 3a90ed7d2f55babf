"""Raw attention: the readout's row of one layer, one patch's row, and DINO's masks.

* Raw readout row ``A_l^h[readout, :]`` with head fusion mean / max / min.
* Query-patch attention: what one patch attends to, per layer/head or rolled out.
* Thresholded masks (Caron et al., "Emerging Properties in Self-Supervised Vision
  Transformers", ICCV 2021): the smallest set of patches holding a share of the mass.
"""

from __future__ import annotations

from typing import Literal

import torch

from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout
from vitviz.methods.arrays import (
    FUSIONS,
    Fusion,
    check_attn,
    fuse_heads,
    patch_index,
    readout_weights,
    select_layer,
    tensors,
    wide,
)
from vitviz.methods.registry import (
    DISCARD,
    END_LAYER,
    FUSION,
    HEAD,
    LAYER,
    START_LAYER,
    Option,
    register,
)
from vitviz.methods.rollout import attention_rollout, rolled_rows, rollout_layers


@register(
    "attention",
    "Raw attention",
    "raw readout attention of one layer, one head or all heads fused",
    (LAYER, HEAD, FUSION),
    kind="attention",
    order=10,
)
@tensors
def raw_attention(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    grads: None = None,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
) -> torch.Tensor:
    """The readout's row of one layer: ``A_l^h[readout, :]`` (``[..., N]``).

    For pooled readouts, the mean of the patch rows; the first P entries are what the readout
    gives the class, distillation and register tokens.
    """
    check_attn(attn, layout)
    a = select_layer(attn, layer, head, fusion)
    return readout_weights(layout, a) @ a


PATCH = Option("patch", "patch", 0, "patch index, row by row over the grid")
ROLLED = Option(
    "rolled", "flag", False, "follow the patch through all layers (rollout)", label="Rolled out"
)


@register(
    "query",
    "What one patch attends to",
    "what one patch attends to (one layer/head, or rolled out)",
    (PATCH, LAYER, HEAD, FUSION, ROLLED, DISCARD, START_LAYER, END_LAYER),
    kind="query",
    order=30,
)
@tensors
def query(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    grads: None = None,
    patch: int = 0,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
    rolled: bool = False,
    discard: float = 0.0,
    start_layer: int = 0,
    end_layer: int = -1,
) -> torch.Tensor:
    """Row ``P + patch`` of ``A_l^h`` (or of the rollout R with ``fusion``, ``discard``,
    ``start_layer``, ``end_layer`` when ``rolled``): ``[..., N]``."""
    check_attn(attn, layout)
    q = layout.num_prefix + patch_index(patch, layout)
    if rolled:
        hat = rollout_layers(
            attn,
            layout,
            fusion=fusion,
            discard=discard,
            start_layer=start_layer,
            end_layer=end_layer,
        )
        onehot = torch.zeros(attn.shape[-1], dtype=hat.dtype, device=hat.device)
        onehot[q] = 1.0
        return rolled_rows(hat, onehot.expand(*hat.shape[:-3], 1, -1))[..., 0, :]
    return select_layer(attn, layer, head, fusion)[..., q, :]


def _keep_mass(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 for the largest entries of the last axis holding ``threshold`` of its mass, else 0."""
    if not 0.0 < threshold <= 1.0:
        raise OptionsError(f"mask threshold must be in (0, 1], got {threshold}")
    flat = wide(values).clamp_min(0)
    total = flat.sum(dim=-1, keepdim=True)
    share = flat / torch.where(total > 0, total, torch.ones_like(total))
    srt, order = share.sort(dim=-1, descending=True)
    before = srt.cumsum(dim=-1) - srt
    keep_sorted = (before < threshold - 1e-9) | (total <= 0)
    return torch.zeros_like(flat).scatter(-1, order, keep_sorted.to(flat.dtype))


@tensors
def threshold_mask(values: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """DINO's mask: the smallest set of cells holding a share ``threshold`` of the mass.

    Works over the last two axes of ``values`` (negative values count as 0). Cells are taken
    from the largest down until their sum reaches ``threshold`` of the total.

    Returns:
        Float mask of the same shape (1 kept, 0 dropped).
    """
    flat = values.reshape(*values.shape[:-2], -1)
    return _keep_mass(flat, threshold).reshape(values.shape)


THRESHOLD = Option(
    "threshold",
    "number",
    0.6,
    "share of the map's mass the kept patches hold",
    0.1,
    1.0,
    0.05,
    label="Mass kept",
)
SOURCE = Option(
    "source",
    "choice",
    "attention",
    "map to threshold",
    choices=("attention", "rollout"),
    label="Mask of",
)


@register(
    "mask",
    "DINO-style mask",
    "smallest set of patches holding a share of the map's mass (DINO)",
    (THRESHOLD, SOURCE, LAYER, HEAD, FUSION, DISCARD, START_LAYER, END_LAYER),
    kind="mask",
    order=40,
)
@tensors
def mask(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    grads: None = None,
    threshold: float = 0.6,
    source: Literal["attention", "rollout"] = "attention",
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
    end_layer: int = -1,
) -> torch.Tensor:
    """Thresholded mask of the readout's row (DINO shows the last layer's, the default).

    Args:
        threshold: share of the map's mass the kept patches hold (DINO uses 0.6).
        source: "attention" (one layer's readout row) or "rollout".

    Returns:
        ``[..., N]``: 1 for kept patches, 0 for the others and for the prefix tokens.
    """
    if source == "attention":
        row = raw_attention(attn, layout, layer=layer, head=head, fusion=fusion)
    elif source == "rollout":
        row = attention_rollout(
            attn,
            layout,
            fusion=fusion,
            discard=discard,
            start_layer=start_layer,
            end_layer=end_layer,
        )
    else:
        raise OptionsError(f"unknown mask source {source!r}: choose 'attention' or 'rollout'")
    out = torch.zeros_like(wide(row))
    out[..., layout.num_prefix :] = _keep_mass(row[..., layout.num_prefix :], threshold)
    return out


@tensors
def head_rows(attn: torch.Tensor, layout: TokenLayout, *, patch: int | None = None) -> torch.Tensor:
    """Every layer's rows at once: ``[..., L, H + 3, N]``.

    Slot h < H is head h's row; slots H, H+1, H+2 are the heads fused by mean, max and min
    (:data:`~vitviz.methods.FUSIONS`). The row is the readout's (``patch`` None, what
    :func:`raw_attention` gives) or patch ``patch``'s query row (what :func:`query` gives):
    a browser can then show any layer, head and fusion without asking the server again.
    """
    check_attn(attn, layout)
    if patch is None:
        w = readout_weights(layout, wide(attn))
        rows = torch.einsum("n,...nm->...m", w, wide(attn))  # [..., L, H, N]
        fused = torch.stack(
            [torch.einsum("n,...nm->...m", w, fuse_heads(attn, f)) for f in ("mean", "max", "min")],
            dim=-2,
        )
    else:
        q = layout.num_prefix + patch_index(patch, layout)
        rows = wide(attn[..., q, :])  # [..., L, H, N]
        fused = torch.stack(
            [fuse_heads(attn, f)[..., q, :] for f in ("mean", "max", "min")], dim=-2
        )
    return torch.cat([rows, fused], dim=-2)


def head_slot(heads: int, head: int, fusion: str = "mean") -> int:
    """Where :func:`head_rows` keeps head ``head`` (-1: the heads fused by ``fusion``)."""
    if head >= 0:
        return head
    if fusion not in FUSIONS:
        raise OptionsError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    return heads + FUSIONS.index(fusion)
