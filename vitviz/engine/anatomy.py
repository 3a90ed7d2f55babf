"""What a ViT is made of, computed from its weights alone (no image needed).

Patch-embedding filters: principal components of the first layer's weights (Dosovitskiy et
al., ICLR 2021, Fig. 7 left); the position-embedding similarity map (Fig. 7 centre).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vitviz.results import Anatomy

__all__ = ["Anatomy", "anatomy", "patch_filters", "position_similarity"]


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
