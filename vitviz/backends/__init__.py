"""Backends: where explanations are computed, behind one protocol.

:class:`Backend` is what the page and the CLI use. :class:`~vitviz.backends.local.LocalBackend`
runs the engine in this process; :class:`~vitviz.backends.remote.RemoteBackend` asks a vitviz
server over HTTP. This module imports neither torch nor HTTP code: the two implementations are
loaded on first use (``vitviz.backends.LocalBackend`` imports torch, ``RemoteBackend`` does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from vitviz.inputs.geometry import InputGeometry
from vitviz.results import (
    Anatomy,
    BlockSteps,
    ClassExplanation,
    ImageExplanation,
    ModelInfo,
    ParameterCount,
    TokenEmbeddings,
    TokenFeatures,
)

if TYPE_CHECKING:
    from vitviz.backends.local import LocalBackend
    from vitviz.backends.remote import RemoteBackend

__all__ = ["Backend", "LocalBackend", "RemoteBackend"]


class Backend(Protocol):
    """What the CLI and the app need from an engine, local or remote."""

    batch_size: int

    def info(self) -> ModelInfo:
        """Model name, weights source, device, layers, heads, classes, input config."""
        ...

    @property
    def labels(self) -> list[str] | None:
        """Class names (None for a backbone without a classifier)."""
        ...

    @property
    def geometry(self) -> InputGeometry:
        """The model's resize and crop (what :meth:`explain` applies unless ``seen``)."""
        ...

    def anatomy(self) -> Anatomy:
        """Patch-embedding filters and position-embedding similarity of the model."""
        ...

    def embeddings(self, image: Image.Image) -> TokenEmbeddings:
        """One model input's patch, position and token vectors (the lesson's steps 3–5)."""
        ...

    def features(self, image: Image.Image) -> TokenFeatures:
        """One model input's token features after the last block (``forward_features``)."""
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
        negative: bool = False,
    ) -> list[ClassExplanation]:
        """Explanations with the class relevance for the given classes of each image
        (``negative``: of ``-y_c``, "why not" each class)."""
        ...

    # -- the lesson's look inside the blocks (in this process only; a server raises
    # OptionsError: it needs the model in this process)
    def block_steps(
        self,
        image: Image.Image,
        *,
        tokens: Sequence[int] | None = None,
        layer: int = 0,
        token: int | None = None,
        norm: str = "norm1",
    ) -> BlockSteps:
        """One model input's residual stream, one norm and one MLP, step by step."""
        ...

    def parameter_parts(self) -> ParameterCount:
        """The model's parameters counted by part, summing to its total."""
        ...


def __getattr__(name: str) -> Any:
    """``LocalBackend`` and ``RemoteBackend`` are imported on first use."""
    if name == "LocalBackend":
        from vitviz.backends.local import LocalBackend

        return LocalBackend
    if name == "RemoteBackend":
        from vitviz.backends.remote import RemoteBackend

        return RemoteBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
