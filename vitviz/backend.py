"""Backends: where explanations are computed. ``LocalBackend`` runs the engine in-process.

A backend turns images into :class:`ImageExplanation` objects: predictions, the token layout,
the image as the model saw it and the full attention tensor. Maps are then computed from the
attention with :mod:`vitviz.methods`, so changing a view never runs the model again. A remote
backend (HTTP client) implements the same :class:`Backend` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from vitviz.capture import capture_seen
from vitviz.layout import TokenLayout
from vitviz.models import LoadedModel, load_model


@dataclass(frozen=True)
class Prediction:
    """One class prediction."""

    index: int
    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"index": self.index, "label": self.label, "probability": self.probability}


@dataclass
class ImageExplanation:
    """Everything one image's forward pass gives.

    Attributes:
        image: RGB uint8 ``H×W×3``, exactly the pixels the model saw.
        layout: token layout of this input.
        attention: ``[L, H, N, N]`` attention probabilities (float32, rows sum to 1).
        logits: ``[C]`` pre-softmax scores, or None without a classifier.
        predictions: top-k classes (empty without a classifier).
    """

    image: np.ndarray
    layout: TokenLayout
    attention: np.ndarray
    logits: np.ndarray | None
    predictions: list[Prediction] = field(default_factory=list)


class Backend(Protocol):
    """What the CLI and the app need from an engine, local or remote."""

    def info(self) -> dict[str, Any]:
        """Model name, weights source, device, layers, heads, classes, input config."""
        ...

    def explain(self, images: Sequence[Image.Image], *, top_k: int = 5) -> list[ImageExplanation]:
        """One explanation per image, in order."""
        ...


def top_predictions(logits: torch.Tensor, labels: Sequence[str], k: int = 5) -> list[Prediction]:
    """The ``k`` most probable classes of one logits vector."""
    probs = logits.float().softmax(dim=-1)
    values, indices = probs.topk(min(k, probs.shape[-1]))
    return [
        Prediction(int(i), labels[int(i)], float(v))
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


class LocalBackend:
    """The engine in this process: one loaded model, batched captures."""

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 8) -> None:
        self.loaded = loaded
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_name(cls, name: str, *, batch_size: int = 8, **load_kwargs: Any) -> LocalBackend:
        """Load a model by name (see :func:`vitviz.models.load_model`) and wrap it."""
        return cls(load_model(name, **load_kwargs), batch_size=batch_size)

    def info(self) -> dict[str, Any]:
        """Model description (see :meth:`LoadedModel.describe`)."""
        return self.loaded.describe()

    def explain(self, images: Sequence[Image.Image], *, top_k: int = 5) -> list[ImageExplanation]:
        """Explain images in batches; images of different input sizes go in separate batches."""
        seen = [self.loaded.seen_image(im) for im in images]
        out: list[ImageExplanation | None] = [None] * len(images)
        for size in dict.fromkeys(im.size for im in seen):
            group = [i for i, im in enumerate(seen) if im.size == size]
            for start in range(0, len(group), self.batch_size):
                idx = group[start : start + self.batch_size]
                cap = capture_seen(self.loaded, [seen[i] for i in idx])
                attention = cap.attention.cpu().numpy()
                logits = None if cap.logits is None else cap.logits.cpu()
                for j, i in enumerate(idx):
                    preds = []
                    if logits is not None and self.loaded.labels is not None:
                        preds = top_predictions(logits[j], self.loaded.labels, top_k)
                    out[i] = ImageExplanation(
                        image=cap.images[j],
                        layout=cap.layout,
                        attention=attention[j],
                        logits=None if logits is None else logits[j].numpy(),
                        predictions=preds,
                    )
        return [e for e in out if e is not None]
