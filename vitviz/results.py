"""Result types that cross boundaries (engine → page, server → client), numpy only.

:class:`ClassRelevance` is what the class-specific methods read of one class's attention
gradients ``G = ∂y_c/∂A``. The full ``[L, H, N, N]`` gradient is H·N/… times larger than
what the maps need (H/3 times: 4× for ViT-B/16's 12 heads), so the engine reduces it right
after each backward pass and only this travels and is cached:

* ``chefer``: the readout row of Chefer et al.'s relevance (the method has no options);
* ``fused[f, l]``: ``fuse_f(A_l ⊙ G_l)⁺`` for each head fusion f (mean, max, min): what
  gradient rollout multiplies through the layers (discard and start layer are applied later);
* ``heads[l, h]``: the readout row of ``(A_l^h ⊙ G_l^h)⁺`` (attention × gradient, one head);
* ``fused_rows[f, l]``: the readout row of ``fuse_f((A_l ⊙ G_l)⁺)`` (attention × gradient,
  heads fused after the clamp).

For ViT-B/16 that is 5.7 MB per class in float32 instead of 22 MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FUSION_ORDER: tuple[str, ...] = ("mean", "max", "min")
"""The order of the fusion axis of :attr:`ClassRelevance.fused` and ``fused_rows``."""


@dataclass
class ClassRelevance:
    """The parts of ``∂y_c/∂A`` (with the attention) that the class-specific maps read.

    Attributes:
        index: the class explained.
        label: its name.
        layers: the layers whose gradients were computed (the others hold zeros).
        chefer: ``[N]`` readout row of Chefer's relevance, or None unless every layer was
            computed.
        fused: ``[3, L, N, N]`` ``fuse_f(A ⊙ G)`` clamped at 0, f in :data:`FUSION_ORDER`.
        heads: ``[L, H, N]`` readout rows of ``(A ⊙ G)⁺`` per head.
        fused_rows: ``[3, L, N]`` readout rows of ``fuse_f((A ⊙ G)⁺)``.
    """

    index: int
    label: str
    layers: tuple[int, ...]
    chefer: np.ndarray | None
    fused: np.ndarray
    heads: np.ndarray
    fused_rows: np.ndarray

    @property
    def num_layers(self) -> int:
        """Layers of the model (computed or not)."""
        return int(self.heads.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        arrays = (self.chefer, self.fused, self.heads, self.fused_rows)
        return sum(int(a.nbytes) for a in arrays if a is not None)

    def only(self, layers: list[int] | tuple[int, ...]) -> ClassRelevance:
        """A copy restricted to ``layers`` (the others zeroed, Chefer's row dropped unless all)."""
        keep = tuple(sorted(set(layers) & set(self.layers)))
        mask = np.zeros(self.num_layers, dtype=bool)
        mask[list(keep)] = True
        return ClassRelevance(
            index=self.index,
            label=self.label,
            layers=keep,
            chefer=self.chefer if len(keep) == self.num_layers else None,
            fused=np.where(mask[None, :, None, None], self.fused, 0).astype(self.fused.dtype),
            heads=np.where(mask[:, None, None], self.heads, 0).astype(self.heads.dtype),
            fused_rows=np.where(mask[None, :, None], self.fused_rows, 0).astype(
                self.fused_rows.dtype
            ),
        )
