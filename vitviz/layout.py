"""Token layout: which tokens a ViT's sequence holds, in which order, and what the head reads.

timm orders a ViT's tokens ``[prefix tokens…, patch tokens…]``. The prefix is the class token
(if any), then the distillation token (DeiT-distilled) or the register tokens (DINOv2-reg,
``*_reg4`` models). The *readout* is what the classifier reads: the class token, the mean of
class and distillation token for distilled DeiT, or the mean over patch tokens for
``global_pool='avg'`` models. A map is the readout's attention over the patch tokens.

The layout is read from the model (``num_prefix_tokens``, ``patch_embed.grid_size``,
``patch_embed.patch_size``), never guessed from the token count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

PrefixKind = Literal["cls", "dist", "reg"]
Readout = Literal["cls", "cls+dist", "avg", "avg+prefix"]


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence of one forward pass.

    Attributes:
        prefix: kind of each prefix token in sequence order ("cls", "dist", "reg").
        grid: patch grid (rows, columns) of this input.
        patch_size: patch (height, width) in pixels of the model's input.
        readout: what the classifier reads: "cls", "cls+dist" (mean of the two), "avg" (mean
            over patch tokens) or "avg+prefix" (mean over all tokens).
    """

    prefix: tuple[PrefixKind, ...]
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    readout: Readout

    def __post_init__(self) -> None:
        if self.grid[0] < 1 or self.grid[1] < 1:
            raise ValueError(f"grid must be positive, got {self.grid}")
        if self.readout in ("cls", "cls+dist") and "cls" not in self.prefix:
            raise ValueError(f"readout {self.readout!r} needs a class token, prefix={self.prefix}")
        if self.readout == "cls+dist" and "dist" not in self.prefix:
            raise ValueError("readout 'cls+dist' needs a distillation token")

    @property
    def num_prefix(self) -> int:
        """Number of prefix tokens P (patch tokens start at index P)."""
        return len(self.prefix)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens (grid rows × columns)."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """Sequence length N = P + patches."""
        return self.num_prefix + self.num_patches

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the input the grid covers."""
        return self.grid[0] * self.patch_size[0], self.grid[1] * self.patch_size[1]

    def token_indices(self, kind: PrefixKind) -> list[int]:
        """Sequence indices of the prefix tokens of one kind."""
        return [i for i, k in enumerate(self.prefix) if k == kind]

    @property
    def readout_tokens(self) -> list[int]:
        """Indices of the prefix tokens that feed the classifier (empty for pooled readouts)."""
        if self.readout == "cls":
            return self.token_indices("cls")
        if self.readout == "cls+dist":
            return self.token_indices("cls") + self.token_indices("dist")
        return []

    def readout_weights(self) -> np.ndarray:
        """Weights w (length N, summing to 1) with readout row = w @ A."""
        w = np.zeros(self.num_tokens, dtype=np.float64)
        if self.readout == "avg":
            w[self.num_prefix :] = 1.0 / self.num_patches
        elif self.readout == "avg+prefix":
            w[:] = 1.0 / self.num_tokens
        else:
            idx = self.readout_tokens
            w[idx] = 1.0 / len(idx)
        return w

    def patch_centers(self) -> np.ndarray:
        """Pixel (y, x) centre of every patch, row-major, shape (num_patches, 2)."""
        ph, pw = self.patch_size
        ys = (np.arange(self.grid[0]) + 0.5) * ph
        xs = (np.arange(self.grid[1]) + 0.5) * pw
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (with derived counts) for outputs and the HTTP API."""
        d = asdict(self)
        d.update(
            num_prefix=self.num_prefix,
            num_patches=self.num_patches,
            num_tokens=self.num_tokens,
            readout_tokens=self.readout_tokens,
            image_size=list(self.image_size),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenLayout:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        return cls(
            prefix=tuple(d["prefix"]),
            grid=tuple(d["grid"]),
            patch_size=tuple(d["patch_size"]),
            readout=d["readout"],
        )
