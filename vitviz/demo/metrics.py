"""Faithfulness metrics: how well a map finds objects whose pixels the generator knows.

All functions are pure numpy on one map (``gh × gw``, the patch grid) and pixel masks of the
input size. A map's *mass* is its values clamped at 0.
"""

from __future__ import annotations

import numpy as np


def patch_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Share of each patch's pixels inside ``mask`` (``H×W`` bool) → ``gh × gw`` in [0, 1]."""
    gh, gw = grid
    h, w = mask.shape
    if h % gh or w % gw:
        raise ValueError(f"mask {h}×{w} does not split into a {gh}×{gw} grid")
    return mask.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3))


def _mass(values: np.ndarray) -> np.ndarray:
    m = np.clip(np.asarray(values, dtype=np.float64), 0, None)
    if not np.isfinite(m).all():
        raise ValueError("map holds NaN or infinite values")
    return m


def pointing_hit(values: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum falls on the object, dilated by one patch.

    The object's patches are those holding any of its pixels; dilation adds their 8
    neighbours. With several equal maxima the first in row-major order counts.
    """
    cov = patch_coverage(mask, values.shape) > 0
    padded = np.pad(cov, 1)
    gh, gw = cov.shape
    dilated = np.zeros_like(cov)
    for dy in range(3):
        for dx in range(3):
            dilated |= padded[dy : dy + gh, dx : dx + gw]
    return bool(dilated.flat[int(np.argmax(values))])


def mass_in_mask(values: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass on the object (each patch weighted by its pixel coverage)."""
    m = _mass(values)
    total = m.sum()
    if total <= 0:
        return float(mask_baseline(mask, values.shape))
    return float((m * patch_coverage(mask, values.shape)).sum() / total)


def mask_baseline(mask: np.ndarray, grid: tuple[int, int]) -> float:
    """What a uniform map scores in :func:`mass_in_mask`: the object's share of the patches."""
    return float(patch_coverage(mask, grid).mean())


def right_object_wins(values: np.ndarray, right: np.ndarray, other: np.ndarray) -> float:
    """1 if the map puts more mass on ``right`` than on ``other``, 0 if less, 0.5 on a tie."""
    a, b = mass_in_mask(values, right), mass_in_mask(values, other)
    return 1.0 if a > b else 0.0 if a < b else 0.5
