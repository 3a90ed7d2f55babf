"""How far to trust a map: deletion and insertion curves, and patch occlusion, on one image.

**Deletion** (Petsiuk et al., RISE, BMVC 2018), at patch granularity: remove the patches in the
order a map ranks them, most important first, in ``steps`` steps, and record the class's
probability after each step; a map that found what the class needs makes the probability fall
fast (a *low* area under the curve is good). A removed patch takes the value 0 of the normalised
input, i.e. the model's mean colour. **Insertion**: start from the image blurred (a Gaussian of
σ = one patch) and put the patches back in the same order; the probability should rise fast
(a *high* area is good). The baseline is the same two curves for random orders (mean of
``seeds`` orders). Each curve is one batched run of ``steps + 1`` images, not ``steps`` runs.

**Occlusion** is a reference map made by perturbation alone: the probability drop when one
patch is removed (each patch once, batched). Every attention-based map is compared with it by
Spearman's rank correlation.

The functions take any module mapping ``[B, 3, H, W]`` to class logits, so tests can use a toy
model whose right order is known.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from vitviz.errors import OptionsError
from vitviz.results import Curve, TrustReport

__all__ = ["Curve", "TrustReport", "curves", "occlusion", "ranking", "spearman", "trust"]


def ranking(values: np.ndarray) -> np.ndarray:
    """Patch indices from the highest value to the lowest (ties: lower index first)."""
    flat = np.asarray(values, np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        raise OptionsError("the map has non-finite values: it cannot rank patches")
    return np.argsort(-flat, kind="stable")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank); 0 when one side is flat."""
    ra, rb = _ranks(np.asarray(a, np.float64).ravel()), _ranks(np.asarray(b, np.float64).ravel())
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):  # ties: the average of their ranks
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _pixel_ranks(order: np.ndarray, grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """``[H, W]``: each pixel's patch position in ``order`` (0 = first removed)."""
    rank = np.empty(grid[0] * grid[1], np.int64)
    rank[np.asarray(order)] = np.arange(len(order))
    cells = torch.from_numpy(rank.reshape(grid))
    return cells.repeat_interleave(patch[0], 0).repeat_interleave(patch[1], 1)


def _probabilities(model: nn.Module, images: torch.Tensor, target: int, batch: int) -> np.ndarray:
    """Softmax probability of ``target`` for each image, ``batch`` images per forward."""
    param = next(model.parameters())
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch].to(param.device, param.dtype)
            logits = model(chunk).float()
            out.append(logits.softmax(-1)[:, target].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def blurred(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """The insertion curve's start: ``x [3, H, W]`` blurred with σ = one patch."""
    from torchvision.transforms import functional as F

    sigma = float(max(patch))
    size = 2 * int(np.ceil(3 * sigma)) + 1
    size = min(size, 2 * (min(x.shape[-2:]) // 2) - 1)  # the kernel must fit the image
    return F.gaussian_blur(x[None], [size, size], [sigma, sigma])[0]


def curves(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    order: np.ndarray,
    grid: tuple[int, int],
    patch: tuple[int, int],
    steps: int = 16,
    batch: int = 16,
    start: torch.Tensor | None = None,
) -> tuple[Curve, Curve]:
    """Deletion and insertion curves of one patch ``order`` (see the module's docstring).

    ``x`` is the normalised input ``[3, H, W]`` whose top-left ``grid``×``patch`` pixels are
    the patches; ``start`` the insertion's blurred start (computed when not given).
    """
    n = grid[0] * grid[1]
    if steps < 1 or sorted(np.asarray(order).tolist()) != list(range(n)):
        raise OptionsError(f"an order must list each of the {n} patches once; steps ≥ 1")
    counts = np.rint(np.arange(steps + 1) * n / steps).astype(int)
    h, w = grid[0] * patch[0], grid[1] * patch[1]
    rank = _pixel_ranks(order, grid, patch)
    start = blurred(x, patch) if start is None else start
    gone = torch.stack([(rank < c) for c in counts])[:, None]  # [K+1, 1, h, w]
    region = x[:, :h, :w]
    deleted = x[None].repeat(len(counts), 1, 1, 1)
    deleted[:, :, :h, :w] = torch.where(gone, torch.zeros_like(region), region)
    inserted = start[None].repeat(len(counts), 1, 1, 1)
    inserted[:, :, :h, :w] = torch.where(gone, region, start[:, :h, :w])
    probs = _probabilities(model, torch.cat([deleted, inserted]), target, batch)
    fractions = counts / n
    k = len(counts)
    return Curve(fractions, probs[:k]), Curve(fractions, probs[k:])


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    grid: tuple[int, int],
    patch: tuple[int, int],
    batch: int = 16,
) -> np.ndarray:
    """``[gh, gw]``: how much the class probability drops when that one patch is removed."""
    n = grid[0] * grid[1]
    images = x[None].repeat(n + 1, 1, 1, 1)
    for i in range(n):
        r, c = divmod(i, grid[1])
        images[i + 1, :, r * patch[0] : (r + 1) * patch[0], c * patch[1] : (c + 1) * patch[1]] = 0
    probs = _probabilities(model, images, target, batch)
    return (probs[0] - probs[1:]).reshape(grid)


def trust(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    maps: Mapping[str, np.ndarray],
    main: str,
    grid: tuple[int, int],
    patch: tuple[int, int],
    steps: int = 16,
    seeds: int = 3,
    batch: int = 16,
) -> TrustReport:
    """The curves of ``maps[main]``, the random baseline, occlusion and every map's Spearman
    correlation with it (``maps``: name → ``[gh, gw]`` map)."""
    start = blurred(x, patch)
    deletion, insertion = curves(
        model, x, target, ranking(maps[main]), grid, patch, steps, batch, start
    )
    rng = np.random.default_rng(0)
    random = [
        curves(
            model, x, target, rng.permutation(grid[0] * grid[1]), grid, patch, steps, batch, start
        )
        for _ in range(max(1, seeds))
    ]
    fractions = deletion.fractions
    mean_del = Curve(fractions, np.mean([d.probabilities for d, _ in random], axis=0))
    mean_ins = Curve(fractions, np.mean([i.probabilities for _, i in random], axis=0))
    reference = occlusion(model, x, target, grid, patch, batch)
    correlations = {name: spearman(values, reference) for name, values in maps.items()}
    return TrustReport(target, deletion, insertion, mean_del, mean_ins, reference, correlations)
