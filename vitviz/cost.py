"""What attention costs: tokens and attention entries for an image and patch size.

A ViT of patch size P on an H×W image has N = (H/P)·(W/P) patch tokens plus its prefix tokens
([CLS] …); every head of every layer scores every token against every token, T² entries. Pixels
as tokens would make N = H·W (the lesson's "why patches" step).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenCost:
    """Tokens and attention size of one input.

    Attributes:
        patches: N = (H/P)·(W/P), patches that fit (a partial patch at the edge is dropped,
            as a strided convolution does).
        tokens: T = N + prefix tokens.
        entries: T², attention entries per head and layer.
        attention_bytes: float32 attention of all layers and heads: L·H·T²·4.
    """

    patches: int
    tokens: int
    entries: int
    attention_bytes: int


def token_cost(
    image: tuple[int, int],
    patch: tuple[int, int],
    prefix: int = 1,
    layers: int = 12,
    heads: int = 12,
    bytes_per_value: int = 4,
) -> TokenCost:
    """:class:`TokenCost` of an ``image`` (H, W) cut into ``patch`` (P_h, P_w) patches."""
    (h, w), (ph, pw) = image, patch
    if min(h, w, ph, pw) <= 0:
        raise ValueError("image and patch sizes must be positive")
    n = (h // ph) * (w // pw)
    t = n + int(prefix)
    return TokenCost(n, t, t * t, int(layers) * int(heads) * t * t * int(bytes_per_value))
