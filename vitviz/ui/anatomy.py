"""What a ViT is made of, for the "How ViT sees this image" view.

Patch-embedding filters (principal components of the first layer's weights, as in the ViT
paper's Fig. 7 left), the position-embedding similarity map (Fig. 7 centre) and a short
summary of the architecture. All computed from the model's weights, no image needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Anatomy:
    """Facts about one model that do not depend on the image.

    Attributes:
        width: embedding width D.
        patch_size: (height, width) of a patch in input pixels.
        filters: ``[k, ph, pw, 3]`` uint8 principal components of the patch embedding, or
            None when patches are embedded through a CNN (hybrid models).
        filter_variance: share of the weights' variance each component explains.
        position_similarity: ``[gh·gw, gh, gw]`` cosine similarity of every patch's position
            embedding with all others, or None when the model has no learned positions.
        position_grid: the grid the position embeddings were learned for.
    """

    width: int
    patch_size: tuple[int, int]
    filters: np.ndarray | None
    filter_variance: np.ndarray | None
    position_similarity: np.ndarray | None
    position_grid: tuple[int, int] | None


def patch_filters(model: nn.Module, count: int = 28) -> tuple[np.ndarray, np.ndarray] | None:
    """The first ``count`` principal components of the patch-embedding filters.

    Each of the D filters ``[3, ph, pw]`` is one sample; components are scaled to [0, 255]
    one by one (their sign is arbitrary). Returns (``[k, ph, pw, 3]`` uint8, variance shares)
    or None when the first layer is not a conv over RGB patches.
    """
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    weight = getattr(proj, "weight", None)
    if not isinstance(proj, nn.Conv2d) or weight is None or weight.shape[1] != 3:
        return None
    if tuple(proj.kernel_size) != tuple(proj.stride) or proj.kernel_size[0] < 2:
        return None
    w = weight.detach().float().cpu()
    d, c, ph, pw = w.shape
    flat = w.reshape(d, c * ph * pw)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    k = min(count, vh.shape[0])
    comps = vh[:k].reshape(k, c, ph, pw).permute(0, 2, 3, 1).numpy()
    lo = comps.reshape(k, -1).min(axis=1)[:, None, None, None]
    hi = comps.reshape(k, -1).max(axis=1)[:, None, None, None]
    scaled = (comps - lo) / np.where(hi > lo, hi - lo, 1.0)
    var = (s**2 / (s**2).sum()).numpy()[:k]
    return np.rint(scaled * 255).astype(np.uint8), var


def position_similarity(model: nn.Module) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Cosine similarity of the patch position embeddings: ``[gh·gw, gh, gw]`` and the grid.

    Row i, reshaped to the grid, shows how similar patch i's position embedding is to every
    other patch's. None when the model has no learned absolute position embedding.
    """
    pos = getattr(model, "pos_embed", None)
    pe = getattr(model, "patch_embed", None)
    grid = getattr(pe, "grid_size", None)
    if not isinstance(pos, torch.Tensor) or grid is None:
        return None
    gh, gw = int(grid[0]), int(grid[1])
    p = pos.detach().float().cpu().reshape(-1, pos.shape[-1])
    if p.shape[0] < gh * gw:
        return None
    p = p[-gh * gw :]  # patch rows come after any prefix rows
    p = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (p @ p.T).reshape(gh * gw, gh, gw).numpy(), (gh, gw)


def anatomy(model: nn.Module) -> Anatomy:
    """Everything :class:`Anatomy` holds, for a timm ViT."""
    filt = patch_filters(model)
    pos = position_similarity(model)
    ps = getattr(model.patch_embed, "patch_size", (16, 16))
    return Anatomy(
        width=int(getattr(model, "embed_dim", 0) or getattr(model, "num_features", 0)),
        patch_size=(int(ps[0]), int(ps[1])),
        filters=None if filt is None else filt[0],
        filter_variance=None if filt is None else filt[1],
        position_similarity=None if pos is None else pos[0],
        position_grid=None if pos is None else pos[1],
    )


def pipeline_dot(info: dict[str, Any], layout: Any, width: int, top: str | None) -> str:
    """Graphviz source of the encoder → readout → head diagram for one model and input."""
    h, w = layout.image_size
    ph, pw = layout.patch_size
    n = layout.num_patches
    prefix = ", ".join(f"[{k.upper()}]" for k in layout.prefix) or "no extra tokens"
    readout = {
        "cls": "the [CLS] token's output",
        "cls+dist": "mean of the [CLS] and [DIST] heads",
        "avg": "mean of all patch tokens",
        "avg+prefix": "mean of all tokens",
    }[layout.readout]
    classes = int(info.get("classes") or 0)
    head = f"Linear {width} → {classes} classes" if classes else "no classifier (backbone)"
    steps = [
        f"Input image\\n{h}×{w} px",
        f"Cut into {layout.grid[0]}×{layout.grid[1]} = {n} patches\\nof {ph}×{pw} px",
        f"Patch embedding\\neach patch → {width} numbers",
        f"Add position embeddings\\nprepend {prefix}",
        f"Encoder\\n{info.get('layers')} blocks × {info.get('heads')} attention heads",
        f"Readout\\n{readout}",
        f"Head\\n{head}",
    ]
    if top:
        steps.append(f"Prediction\\n{top}")
    lines = ["digraph G {", "rankdir=LR;", 'node [shape=box, style="rounded,filled"];']
    lines += ['node [fillcolor="#eef3fb", fontname="Helvetica", fontsize=11];']
    for i, text in enumerate(steps):
        label = text.replace('"', '\\"')
        lines.append(f'n{i} [label="{label}"];')
    lines += [f"n{i} -> n{i + 1};" for i in range(len(steps) - 1)]
    lines.append("}")
    return "\n".join(lines)
