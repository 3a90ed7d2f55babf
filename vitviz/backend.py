"""Backends: where explanations are computed. ``LocalBackend`` runs the engine in-process.

A backend turns images into :class:`ImageExplanation` objects: predictions, the token layout,
the image as the model saw it and the full attention tensor. Maps are then computed from the
attention with :mod:`vitviz.methods`, so changing a view never runs the model again.
``RemoteBackend`` (:mod:`vitviz.remote`) implements the same :class:`Backend` protocol over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from vitviz.capture import capture_seen
from vitviz.errors import OptionsError
from vitviz.gradients import attention_relevance
from vitviz.layout import TokenLayout
from vitviz.models import InputGeometry, LoadedModel, load_model
from vitviz.results import ClassRelevance
from vitviz.ui.anatomy import Anatomy, anatomy


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


@dataclass
class ClassExplanation:
    """An explanation plus what the class-specific methods need for some of its classes.

    Attributes:
        explanation: predictions, layout, image and attention of the same forward pass.
        classes: the class indices explained, in order.
        labels: their names.
        relevance: one :class:`~vitviz.results.ClassRelevance` per class: the parts of
            ``∂y_c/∂A`` the maps read (pass it as ``grads`` to any class-specific method).
        gradients: ``[K, L, H, N, N]`` float32 ``∂y_c/∂A`` for each class (pre-softmax logit;
            layers not asked for are 0), only when asked for (``full_gradients=True``):
            about H/3 times the size of the relevance (4× for 12 heads).
    """

    explanation: ImageExplanation
    classes: list[int]
    labels: list[str]
    relevance: list[ClassRelevance]
    gradients: np.ndarray | None = None


class Backend(Protocol):
    """What the CLI and the app need from an engine, local or remote."""

    batch_size: int

    def info(self) -> dict[str, Any]:
        """Model name, weights source, device, layers, heads, classes, input config."""
        ...

    @property
    def labels(self) -> list[str] | None:
        """Class names (None for a backbone without a classifier)."""
        ...

    def anatomy(self) -> Anatomy:
        """Patch-embedding filters and position-embedding similarity of the model."""
        ...

    @property
    def geometry(self) -> InputGeometry:
        """The model's resize and crop (what :meth:`explain` applies unless ``seen``)."""
        ...

    def explain(
        self, images: Sequence[Image.Image], *, top_k: int = 5, seen: bool = False
    ) -> list[ImageExplanation]:
        """One explanation per image, in order (``seen``: already resized and cropped)."""
        ...

    def explain_classes(
        self,
        images: Sequence[Image.Image],
        classes: Sequence[Sequence[int | None]],
        *,
        layers: Sequence[int] | None = None,
        top_k: int = 5,
        seen: bool = False,
        full_gradients: bool = False,
    ) -> list[ClassExplanation]:
        """Explanations with the class relevance for the given classes of each image."""
        ...


def top_predictions(logits: torch.Tensor, labels: Sequence[str], k: int = 5) -> list[Prediction]:
    """The ``k`` most probable classes of one logits vector."""
    probs = logits.float().softmax(dim=-1)
    values, indices = probs.topk(min(k, probs.shape[-1]))
    return [
        Prediction(int(i), labels[int(i)], float(v))
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def resolve_class(spec: str | int, labels: Sequence[str]) -> int:
    """A class given as an index or a name (case-insensitive; a unique part of one works)."""
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(labels):
            raise OptionsError(f"class {index} does not exist: the model has {len(labels)}")
        return index
    low = text.lower()
    exact = [i for i, name in enumerate(labels) if name.lower() == low]
    if exact:
        return exact[0]
    partial = [i for i, name in enumerate(labels) if low in name.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(repr(labels[i]) for i in partial[:6])
        raise OptionsError(f"class {text!r} matches several classes ({names}…): be more precise")
    raise OptionsError(f"no class named {text!r}: give a class index or part of a class name")


class LocalBackend:
    """The engine in this process: one loaded model, batched captures."""

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 8) -> None:
        self.loaded = loaded
        self.batch_size = max(1, int(batch_size))
        self._anatomy: Anatomy | None = None

    @classmethod
    def from_name(cls, name: str, *, batch_size: int = 8, **load_kwargs: Any) -> LocalBackend:
        """Load a model by name (see :func:`vitviz.models.load_model`) and wrap it."""
        return cls(load_model(name, **load_kwargs), batch_size=batch_size)

    def info(self) -> dict[str, Any]:
        """Model description (see :meth:`LoadedModel.describe`)."""
        return {**self.loaded.describe(), "backend": "in-process"}

    @property
    def labels(self) -> list[str] | None:
        """Class names (None for a backbone without a classifier)."""
        return self.loaded.labels

    def anatomy(self) -> Anatomy:
        """Patch-embedding filters and position similarity (computed once)."""
        if self._anatomy is None:
            self._anatomy = anatomy(self.loaded.model)
        return self._anatomy

    @property
    def geometry(self) -> InputGeometry:
        """The model's resize and crop."""
        return self.loaded.geometry

    def _seen(self, images: Sequence[Image.Image], seen: bool) -> list[Image.Image]:
        if not seen:
            return [self.loaded.seen_image(im) for im in images]
        for im in images:
            if not self.loaded.geometry.is_seen(im):
                raise OptionsError(
                    f"an image of {im.size[0]}×{im.size[1]} px is not a resized and cropped input "
                    "of this model; send the original image instead"
                )
        return [im.convert("RGB") for im in images]

    def _batches(self, seen: Sequence[Image.Image]) -> Iterator[list[int]]:
        """Indices of ``seen`` in batches of at most ``batch_size`` images of one input size."""
        for size in dict.fromkeys(im.size for im in seen):
            group = [i for i, im in enumerate(seen) if im.size == size]
            for start in range(0, len(group), self.batch_size):
                yield group[start : start + self.batch_size]

    def explain(
        self, images: Sequence[Image.Image], *, top_k: int = 5, seen: bool = False
    ) -> list[ImageExplanation]:
        """Explain images in batches; images of different input sizes go in separate batches.

        ``seen=True``: the images are already resized and cropped for this model.
        """
        seen_images = self._seen(images, seen)
        out: list[ImageExplanation | None] = [None] * len(images)
        for idx in self._batches(seen_images):
            cap = capture_seen(self.loaded, [seen_images[i] for i in idx])
            attention = cap.attention.cpu().numpy()
            logits = None if cap.logits is None else cap.logits.cpu()
            for j, i in enumerate(idx):
                preds = []
                if logits is not None and self.loaded.labels is not None:
                    preds = top_predictions(logits[j], self.loaded.labels, top_k)
                out[i] = ImageExplanation(
                    image=cap.images[j],
                    layout=cap.layout,
                    attention=attention[j] if len(idx) == 1 else attention[j].copy(),
                    logits=None if logits is None else logits[j].numpy(),
                    predictions=preds,
                )
        return [e for e in out if e is not None]

    def explain_classes(
        self,
        images: Sequence[Image.Image],
        classes: Sequence[Sequence[int | None]],
        *,
        layers: Sequence[int] | None = None,
        top_k: int = 5,
        seen: bool = False,
        full_gradients: bool = False,
    ) -> list[ClassExplanation]:
        """Explanations plus each class's relevance, one forward per batch.

        ``classes[i]`` lists the classes of image i (the same count for every image); None
        stands for the image's top prediction. ``layers`` limits which layers' gradients are
        computed (see :meth:`vitviz.methods.Method.gradient_layers`). ``full_gradients`` also
        returns ``∂y_c/∂A`` itself (large: ``[K, L, H, N, N]`` per image).
        """
        if len(classes) != len(images):
            raise OptionsError(f"{len(images)} images but {len(classes)} class lists")
        labels = self.loaded.labels or []
        seen_images = self._seen(images, seen)
        out: list[ClassExplanation | None] = [None] * len(images)
        for idx in self._batches(seen_images):
            x = torch.stack([self.loaded.to_tensor(seen_images[i]) for i in idx])
            res = attention_relevance(
                self.loaded,
                x,
                [list(classes[i]) for i in idx],
                layers=layers,
                keep_gradients=full_gradients,
            )
            attention_np = res.attention.cpu().numpy()
            grads_np = None if res.gradients is None else res.gradients.cpu().numpy()
            for j, i in enumerate(idx):
                logits = res.logits[j].cpu()
                expl = ImageExplanation(
                    image=np.asarray(seen_images[i], dtype=np.uint8).copy(),
                    layout=res.layout,
                    attention=attention_np[j] if len(idx) == 1 else attention_np[j].copy(),
                    logits=logits.numpy(),
                    predictions=top_predictions(logits, labels, top_k) if labels else [],
                )
                out[i] = ClassExplanation(
                    explanation=expl,
                    classes=res.classes[j],
                    labels=[labels[c] if labels else str(c) for c in res.classes[j]],
                    relevance=res.relevance[j],
                    gradients=None if grads_np is None else grads_np[:, j].copy(),
                )
        return [e for e in out if e is not None]


def __getattr__(name: str) -> Any:
    """``vitviz.backend.RemoteBackend`` lives in :mod:`vitviz.remote` (imported on first use)."""
    if name == "RemoteBackend":
        from vitviz.remote import RemoteBackend

        return RemoteBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
