"""High-norm outlier tokens in the residual stream (Darcet, Oquab, Mairal & Bojanowski, "Vision
Transformers Need Registers", ICLR 2024). Pure numpy: the norms come from
:func:`vitviz.engine.lens.stream_norms_of`.

Darcet et al. find that large ViTs (DINOv2, OpenCLIP, DeiT-III) repurpose a few patch tokens,
mostly in redundant background, as scratch space for global information. The distribution of
the output norms is bimodal; for DINOv2 ViT-g they call a token high-norm (an outlier) when its
norm is above 150, and such tokens appear from about layer 15 of 40, after about a third of
training, and only in the large models (ViT-L, -H, -g). They hold little local information
(position and pixels are predicted worse from them) but global information (a linear probe
classifies the image better from them), and the class token attends to them strongly.
Registers — extra prefix tokens — take that role and the outliers vanish. (Checked against
summaries of the paper; the share of outlier tokens, "about 2 %", is from memory of the paper
and was not re-checked.)

**The rule.** An absolute cutoff such as 150 fits one model only, so a relative one is used:
at layer l, a patch token is an *outlier* when ``‖x_l[n]‖₂ > k · median_patches ‖x_l‖₂``. The
median (not the mean) is what a few outliers cannot move. Default ``k = 3`` (:data:`DEFAULT_K`):
the two modes are far apart (the outliers several times the typical norm, the normal tokens
within a small factor of the median), and a factor of 3 sits between them; a lower k (2)
starts to flag the upper tail of normal tokens in models without outliers, a higher one (5)
misses weaker outliers of smaller models. The page and the CLI let the researcher change k.

**Against vit-xray** (PyPI 0.1.0, a test-only requirement): it reads the same norm, the L2 norm
of each patch token at a block's output before the final norm, and its ``outlier_frac`` is the
same rule with the same factor (``> 3 × median``); it also fits two Gaussians to the norms for
an "artifact score", which vitviz does not. ``tests/test_vit_xray.py`` runs vit-xray's own
``analyze`` and :func:`token_norms` on one model and input (four registers, one planted
high-norm patch): norms, outlier shares and the [CLS] attention to the outliers agree.
"""

from __future__ import annotations

import numpy as np

from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout
from vitviz.results import TokenNorms

__all__ = ["DEFAULT_K", "TokenNorms", "outliers", "token_norms"]

DEFAULT_K = 3.0
"""The outlier factor: a token above ``k ×`` the median patch norm of its layer (see above)."""


def outliers(norms: np.ndarray, k: float = DEFAULT_K) -> np.ndarray:
    """Whether each value of ``norms`` (``[..., M]``, one row per layer) exceeds ``k ×`` the
    median of its row (a boolean array of the same shape).

    Raises:
        OptionsError: k not positive and finite, or an empty row.
    """
    values = np.asarray(norms, np.float64)
    if not np.isfinite(k) or k <= 0:
        raise OptionsError(f"k must be a positive number, got {k}")
    if values.ndim < 1 or values.shape[-1] == 0:
        raise OptionsError("there are no tokens to look for outliers among")
    return values > k * np.median(values, axis=-1, keepdims=True)


def token_norms(
    norms: np.ndarray,
    layout: TokenLayout,
    *,
    k: float = DEFAULT_K,
    attention: np.ndarray | None = None,
) -> TokenNorms:
    """Outliers, their share per layer and of the readout's attention, and register norms.

    Args:
        norms: ``[L, N]`` every token's residual-stream norm after each block.
        layout: the token layout of the input.
        k: the outlier factor (see :func:`outliers`).
        attention: the last layer's attention ``[H, N, N]`` (or all layers ``[L, H, N, N]``,
            the last one read), captured in the same forward; the readout's row (mean over
            heads) gives the outliers' share of the readout's attention.

    Raises:
        OptionsError: shapes that do not match the layout, or a bad k.
    """
    values = np.asarray(norms, np.float64)
    n, p = layout.num_tokens, layout.num_prefix
    if values.ndim != 2 or values.shape[1] != n:
        raise OptionsError(f"norms must be [layers, {n} tokens], got {values.shape}")
    mask = outliers(values[:, p:], k)
    share = None
    if attention is not None:
        att = np.asarray(attention, np.float64)
        att = att[-1] if att.ndim == 4 else att
        if att.ndim != 3 or att.shape[1:] != (n, n):
            raise OptionsError(f"attention must be [heads, {n}, {n}], got {att.shape}")
        row = layout.readout_weights() @ att.mean(axis=0)  # [N], sums to 1
        share = float(row[p:][mask[-1]].sum())
    registers = layout.token_indices("reg")
    return TokenNorms(
        norms=values.astype(np.float32),
        k=float(k),
        outliers=mask,
        share=mask.mean(axis=1),
        attention_share=share,
        registers=values[:, registers].astype(np.float32),
        num_prefix=p,
    )
