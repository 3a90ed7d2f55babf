"""What the last layer's token features show without any classifier: the PCA picture and patch
similarity (the pictures people make of self-supervised backbones, DINO and DINOv2).

* :func:`pca_rgb`: the first three principal components of the patch features as R, G, B
  (Oquab et al., "DINOv2", 2023, Fig. 1 and its demo), optionally with the background removed
  by the first component's sign and the PCA recomputed on the foreground.
* :func:`patch_similarity`: the cosine similarity of one patch's feature to every patch's.

Both take arrays (numpy or torch, any float dtype); they never see a model.

**The signs of the components.** A principal component's sign is arbitrary (the SVD may return
``-v`` as well as ``v``), and the picture's colours and the foreground split depend on it. So
every component is oriented by one documented rule, which makes the picture a function of the
features alone (negating or rotating the features changes nothing):

1. the first component is oriented so that its scores correlate positively with ``orient``
   when it is given (the page passes the readout token's last-layer attention over the patches:
   the patches the [CLS] token looks at are the foreground);
2. otherwise (no ``orient``, or one uncorrelated with the component), and for the second and
   third components always, the positive side is the minority: fewer patches score above 0
   than below (the foreground is usually the smaller part of a photo);
3. on a tie, the patch with the largest absolute score is made positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitviz.errors import OptionsError
from vitviz.methods.arrays import tensors, wide


@dataclass(frozen=True)
class FeaturePCA:
    """The PCA picture of one image's patch features.

    Attributes:
        rgb: ``[gh, gw, 3]`` float32 in [0, 1]: components 1–3, each min–max scaled over the
            patches it colours, as R, G, B (black where the background was removed).
        foreground: ``[gh, gw]`` bool, patches whose oriented first component (over all
            patches) lies above the threshold.
        variance: ``[3]`` float32, the share of the variance each of the three components
            explains, in the PCA that coloured the picture (the foreground's when the
            background was removed); 0 for components the data does not have.
        background_removed: whether the background is black and the PCA the foreground's.
    """

    rgb: np.ndarray
    foreground: np.ndarray
    variance: np.ndarray
    background_removed: bool


def _numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A float64 numpy copy of a 2-D array or tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise OptionsError(f"{name} must be [patches, width], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise OptionsError(f"{name} holds values that are not finite")
    return arr


def _orient(scores: np.ndarray, orient: np.ndarray | None = None) -> np.ndarray:
    """``scores`` or ``-scores`` by the module's sign rule (``orient``: rule 1)."""
    if orient is not None and orient.std() > 0 and scores.std() > 0:
        corr = float(np.dot(scores - scores.mean(), orient - orient.mean()))
        if abs(corr) > 1e-12 * np.linalg.norm(scores) * np.linalg.norm(orient - orient.mean()):
            return scores if corr > 0 else -scores
    above, below = int((scores > 0).sum()), int((scores < 0).sum())
    if above != below:
        return scores if above < below else -scores
    peak = scores[np.argmax(np.abs(scores))] if scores.size else 0.0
    return scores if peak >= 0 else -scores


def _principal(
    x: np.ndarray, orient: np.ndarray | None, k: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Oriented scores ``[n, k]`` of the first ``k`` principal components of the rows of ``x``
    and the share of the variance each explains ``[k]`` (zero columns past the data's rank)."""
    n = x.shape[0]
    scores, ratio = np.zeros((n, k)), np.zeros(k)
    if n < 2:
        return scores, ratio
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    total = float((s**2).sum())
    if total <= 0:
        return scores, ratio
    m = min(k, s.size)
    ratio[:m] = s[:m] ** 2 / total
    for i in range(m):
        if s[i] > 1e-12 * s[0]:
            scores[:, i] = _orient(u[:, i] * s[i], orient if i == 0 else None)
    return scores, ratio


def _minmax(scores: np.ndarray) -> np.ndarray:
    """Each column scaled to [0, 1] (a constant column becomes 0)."""
    lo, hi = scores.min(axis=0, keepdims=True), scores.max(axis=0, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1.0), 0.0)


def pca_rgb(
    patch_features: np.ndarray | torch.Tensor,
    grid: tuple[int, int],
    *,
    drop_background: bool = False,
    threshold: float = 0.0,
    orient: np.ndarray | torch.Tensor | None = None,
) -> FeaturePCA:
    """The DINOv2 picture: the first three principal components of the patch features as RGB.

    The features are centred and decomposed (SVD); each of the first three components' scores
    is oriented (see the module's sign rule) and min–max scaled to [0, 1] as R, G and B. The
    foreground is where the oriented first component exceeds ``threshold`` standard deviations
    of itself (0: its sign, as in DINOv2's demo). With ``drop_background`` the PCA is computed
    again on the foreground patches only and the background is painted black.

    Args:
        patch_features: ``[N, D]`` patch tokens' features, row by row over ``grid``.
        grid: (rows, columns) of the patch grid, ``rows · columns = N``.
        drop_background: black background, PCA of the foreground.
        threshold: where the foreground starts, in standard deviations of component 1.
        orient: ``[N]`` a map the first component should agree with (e.g. the readout token's
            last-layer attention over the patches), or None.

    Raises:
        OptionsError: shapes that do not fit, or values that are not finite.
    """
    x = _numpy(patch_features, "patch features")
    gh, gw = (int(g) for g in grid)
    n = x.shape[0]
    if gh < 1 or gw < 1 or gh * gw != n:
        raise OptionsError(f"{n} patch features do not fill a {gh}×{gw} grid")
    row = None
    if orient is not None:
        row = _numpy(orient.reshape(1, -1), "orient")[0]
        if row.size != n:
            raise OptionsError(f"orient has {row.size} values for {n} patches")
    scores, ratio = _principal(x, row)
    first = scores[:, 0]
    spread = float(first.std())
    foreground = first > float(threshold) * spread if spread > 0 else np.ones(n, dtype=bool)
    if drop_background:
        rgb = np.zeros((n, 3))
        keep = np.flatnonzero(foreground)
        if keep.size:
            fg_scores, ratio = _principal(x[keep], None if row is None else row[keep])
            rgb[keep] = _minmax(fg_scores)
        else:
            ratio = np.zeros(3)
    else:
        rgb = _minmax(scores)
    return FeaturePCA(
        rgb=rgb.reshape(gh, gw, 3).astype(np.float32),
        foreground=foreground.reshape(gh, gw),
        variance=ratio.astype(np.float32),
        background_removed=bool(drop_background),
    )


@tensors
def patch_similarity(patch_features: torch.Tensor, index: int) -> torch.Tensor:
    """Cosine similarity of row ``index``'s feature to every row's: ``[N]`` in [-1, 1].

    Works on any token rows (patches, or all tokens with the prefix). A zero vector is
    similar to nothing: its similarity to every row (itself included) is 0.
    """
    if patch_features.ndim != 2:
        raise OptionsError(f"features must be [tokens, width], got shape {patch_features.shape}")
    n = patch_features.shape[0]
    if not -n <= index < n:
        raise OptionsError(f"row {index} is out of range: there are {n} rows (0–{n - 1})")
    x = wide(patch_features)
    if x.dtype == torch.float32:
        x = x.double()  # the norms of wide features lose digits in fp32
    norms = torch.linalg.vector_norm(x, dim=-1)
    ref, ref_norm = x[index], norms[index]
    denom = norms * ref_norm
    sims = (x @ ref) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, sims, torch.zeros_like(sims)).clamp(-1.0, 1.0).float()
