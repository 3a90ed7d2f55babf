"""Backends: where explanations are computed, behind one protocol.

:class:`Backend` is what the page and the CLI use. :class:`~vitviz.backends.local.LocalBackend`
runs the engine in this process; :class:`~vitviz.backends.remote.RemoteBackend` asks a vitviz
server over HTTP. This module imports neither torch nor HTTP code: the two implementations are
loaded on first use (``vitviz.backends.LocalBackend`` imports torch, ``RemoteBackend`` does not).

Capabilities: not every backend offers every call (a server lists what it offers in its
``/v1/model`` description; typed labels need CLIP in this process). A caller asks
``backend.offers(name)`` with a name of :data:`Capability` before calling; a call that is not
offered raises :class:`~vitviz.errors.OptionsError`. :func:`local_backend` makes an in-process
backend without the caller importing model-loading code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from vitviz.backends.capabilities import CAPABILITIES, SERVED, Capability, check_capability
from vitviz.inputs.geometry import InputGeometry
from vitviz.layout import TokenLayout
from vitviz.results import (
    Anatomy,
    BlockSteps,
    ClassExplanation,
    HeadAblation,
    ImageExplanation,
    LogitLens,
    ModelInfo,
    ParameterCount,
    Prediction,
    TokenEmbeddings,
    TokenFeatures,
    TokenNorms,
    TrustReport,
)

if TYPE_CHECKING:
    from vitviz.backends.local import LocalBackend
    from vitviz.backends.remote import RemoteBackend
    from vitviz.memory.cost import ModelShape

__all__ = [
    "CAPABILITIES",
    "SERVED",
    "Backend",
    "Capability",
    "LocalBackend",
    "RemoteBackend",
    "check_capability",
    "local_backend",
]


class Backend(Protocol):
    """What the CLI and the app need from an engine, local or remote.

    Every call but :meth:`info`, :meth:`offers`, :attr:`labels`, :attr:`geometry`,
    :attr:`template` and :meth:`memory_shape` is a capability (:data:`Capability`): ask
    ``offers(name)`` first; a call not offered raises :class:`~vitviz.errors.OptionsError`.
    """

    batch_size: int

    def offers(self, capability: Capability) -> bool:
        """Whether this backend offers ``capability`` (a name of :data:`Capability`)."""
        ...

    @property
    def template(self) -> str | None:
        """A CLIP model's prompt template for typed labels (None for fixed classes, or where
        the template is not known here)."""
        ...

    def memory_shape(self) -> ModelShape | None:
        """What the model's memory use in this process depends on (None: it runs elsewhere,
        so only its answers are held here)."""
        ...

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

    def readout(
        self, image: Image.Image, *, top_k: int = 5, seen: bool = False
    ) -> tuple[list[Prediction], TokenLayout, np.ndarray]:
        """Predictions, the token layout and the readout's attention rows ``[L, H, N]`` (the
        light answer the live view draws raw attention from)."""
        ...

    def text_relevance(
        self, image: Image.Image, label: str, *, seen: bool = False, start_layer: int = 0
    ) -> list[tuple[str, float]]:
        """A CLIP model's caption tokens for ``label`` and their share of the relevance for the
        image–text similarity (shares sum to 1, or are all 0), text layers from
        ``start_layer`` on (0: every layer; -1: the last alone)."""
        ...

    def trust(
        self,
        image: Image.Image,
        target: int,
        maps: Mapping[str, np.ndarray],
        main: str,
        *,
        steps: int = 16,
        seeds: int = 3,
        batch: int = 16,
        seen: bool = False,
    ) -> TrustReport:
        """Deletion and insertion curves of ``maps[main]`` for class ``target``, their random
        baseline, patch occlusion and every map's Spearman correlation with it
        (:func:`vitviz.analysis.trust.trust`; ``maps``: name → ``[gh, gw]`` map)."""
        ...

    # -- inside the heads (issue 24; in this process only for now: no server endpoint)
    def ablate_heads(
        self,
        image: Image.Image,
        target: int,
        *,
        kind: str = "zero",
        batch: int = 16,
        progress: Callable[[int, int], None] | None = None,
    ) -> HeadAblation:
        """Each head's and each layer's effect on class ``target`` when removed (``zero`` or
        ``mean`` ablation; :func:`vitviz.engine.ablation.ablate_heads`)."""
        ...

    def logit_lens(self, image: Image.Image, *, top_k: int = 5) -> LogitLens:
        """The model's final norm and head read after every block (the logit lens)."""
        ...

    def token_norms(self, image: Image.Image, *, k: float = 3.0) -> TokenNorms:
        """Every token's residual-stream norm per layer and the high-norm outliers
        (:func:`vitviz.analysis.norms.token_norms`)."""
        ...


def local_backend(name: str, *, batch_size: int = 8, **load_kwargs: Any) -> LocalBackend:
    """An in-process backend for the model ``name`` (see :func:`vitviz.models.load_model` for
    ``load_kwargs``); model-loading code is imported here, not by the caller."""
    from vitviz.backends.local import LocalBackend

    return LocalBackend.from_name(name, batch_size=batch_size, **load_kwargs)


def __getattr__(name: str) -> Any:
    """``LocalBackend`` and ``RemoteBackend`` are imported on first use."""
    if name == "LocalBackend":
        from vitviz.backends.local import LocalBackend

        return LocalBackend
    if name == "RemoteBackend":
        from vitviz.backends.remote import RemoteBackend

        return RemoteBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
