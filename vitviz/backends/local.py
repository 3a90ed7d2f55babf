"""``LocalBackend``: the :class:`~vitviz.backends.Backend` protocol in this process.

It turns images into :class:`~vitviz.results.ImageExplanation` objects: predictions, the token
layout, the image as the model saw it and the full attention tensor. Maps are then computed
from the attention with :mod:`vitviz.methods`, so changing a view never runs the model again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from vitviz.backends.capabilities import Capability, check_capability
from vitviz.engine.anatomy import anatomy
from vitviz.engine.capture import capture_seen, prepare
from vitviz.engine.gradients import attention_relevance
from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout
from vitviz.models import InputGeometry, LoadedModel, load_model
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
    from vitviz.memory.cost import ModelShape

_CLIP_ONLY = frozenset({"text_relevance", "typed_labels"})  # a CLIP model's text tower
_READS_HEAD = frozenset({"head_ablation", "logit_lens"})  # a timm classifier's own head


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
        self._anatomy: Anatomy | None = None
        prepare(loaded.model, loaded.hook)  # unfused attention, one hook per block

    @classmethod
    def from_name(cls, name: str, *, batch_size: int = 8, **load_kwargs: Any) -> LocalBackend:
        """Load a model by name (see :func:`vitviz.models.load_model`) and wrap it."""
        return cls(load_model(name, **load_kwargs), batch_size=batch_size)

    def info(self) -> ModelInfo:
        """Model description (see :meth:`LoadedModel.describe`)."""
        return self.loaded.describe()

    def offers(self, capability: Capability) -> bool:
        """Every capability, but text relevance and typed labels only for a CLIP model."""
        check_capability(capability)
        if capability in _READS_HEAD:
            return self._reads_head(capability)
        return capability not in _CLIP_ONLY or self.loaded.typed_labels

    @property
    def template(self) -> str | None:
        """A CLIP model's prompt template (None for fixed classes)."""
        value = getattr(self.loaded.model, "template", None)
        return None if value is None else str(value)

    def held_bytes(self) -> int:
        """Bytes the model's parameters and buffers hold (what keeping this backend costs)."""
        from vitviz.memory.cache import nbytes

        return nbytes(self.loaded.model)

    def memory_shape(self) -> ModelShape:
        """What this model's memory use depends on (:attr:`LoadedModel.shape`)."""
        return self.loaded.shape

    def with_labels(self, labels: list[str], template: str | None = None) -> LocalBackend:
        """This CLIP model scoring the typed ``labels`` (sharing the weights); an
        :class:`OptionsError` for a model with fixed classes."""
        return LocalBackend(self.loaded.with_labels(labels, template), batch_size=self.batch_size)

    @property
    def labels(self) -> list[str] | None:
        """Class names (None for a backbone without a classifier)."""
        return self.loaded.labels

    def anatomy(self) -> Anatomy:
        """Patch-embedding filters and position similarity (computed once)."""
        if self._anatomy is None:
            self._anatomy = anatomy(self.loaded.model)
        return self._anatomy

    def embeddings(self, image: Image.Image) -> TokenEmbeddings:
        """One seen image's patch, position and token vectors (:mod:`vitviz.engine.embeddings`)."""
        from vitviz.engine.embeddings import embeddings_of

        (seen,) = self._seen([image], True)
        return embeddings_of(self.loaded, seen)

    def features(self, image: Image.Image) -> TokenFeatures:
        """One seen image's token features after the last block and the final norm (what
        timm's ``forward_features`` returns; :func:`vitviz.engine.embeddings.features_of`)."""
        from vitviz.engine.embeddings import features_of

        (seen,) = self._seen([image], True)
        return features_of(self.loaded, seen)

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
        negative: bool = False,
    ) -> list[ClassExplanation]:
        """Explanations plus each class's relevance, one forward per batch.

        ``classes[i]`` lists the classes of image i (the same count for every image); None
        stands for the image's top prediction (for a backbone without a classifier, the
        class-free target ‖readout feature‖). ``layers`` limits which layers' gradients are
        computed (see :meth:`vitviz.methods.Method.gradient_layers`). ``full_gradients`` also
        returns ``∂y_c/∂A`` itself (large: ``[K, L, H, N, N]`` per image). ``negative``:
        relevance of ``-y_c``, "why not" the class (:meth:`vitviz.methods.Method.negative`).
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
                negative=negative,
            )
            attention_np = res.attention.cpu().numpy()
            grads_np = None if res.gradients is None else res.gradients.cpu().numpy()
            for j, i in enumerate(idx):
                logits = res.logits[j].cpu() if self.loaded.has_classifier else None
                expl = ImageExplanation(
                    image=np.asarray(seen_images[i], dtype=np.uint8).copy(),
                    layout=res.layout,
                    attention=attention_np[j] if len(idx) == 1 else attention_np[j].copy(),
                    logits=None if logits is None else logits.numpy(),
                    predictions=top_predictions(logits, labels, top_k)
                    if labels and logits is not None
                    else [],
                )
                out[i] = ClassExplanation(
                    explanation=expl,
                    classes=res.classes[j],
                    labels=[rel.label for rel in res.relevance[j]]
                    if res.relevance[j]
                    else [labels[c] if labels else str(c) for c in res.classes[j]],
                    relevance=res.relevance[j],
                    gradients=None if grads_np is None else grads_np[:, j].copy(),
                )
        return [e for e in out if e is not None]

    def text_relevance(
        self, image: Image.Image, label: str, *, seen: bool = False, start_layer: int = 0
    ) -> list[tuple[str, float]]:
        """A CLIP model's caption tokens for ``label`` and their share of the relevance for
        the image–text similarity (:func:`vitviz.models.clip_text.text_relevance`), text
        layers from ``start_layer`` on (0: every layer; -1: the last alone).

        Raises:
            OptionsError: not a CLIP model, a bad label or start layer.
        """
        from vitviz.models.clip_text import text_relevance

        (seen_image,) = self._seen([image], seen)
        return text_relevance(self.loaded, seen_image, label, seen=True, start_layer=start_layer)

    def block_steps(
        self,
        image: Image.Image,
        *,
        tokens: Sequence[int] | None = None,
        layer: int = 0,
        token: int | None = None,
        norm: str = "norm1",
    ) -> BlockSteps:
        """Inside the encoder blocks for one seen image, from one forward pass: the residual
        stream of ``tokens``, ``norm`` and the MLP of block ``layer`` on ``token``
        (:func:`vitviz.engine.block.block_steps`)."""
        from vitviz.engine.block import block_steps_of

        (seen,) = self._seen([image], True)
        return block_steps_of(self.loaded, seen, tokens=tokens, layer=layer, token=token, norm=norm)

    def parameter_parts(self) -> ParameterCount:
        """The model's parameters counted by part (:func:`vitviz.engine.sizes.parameter_parts`)."""
        from vitviz.engine.sizes import parameter_parts

        return parameter_parts(self.loaded.model)

    def readout(
        self, image: Image.Image, *, top_k: int = 5, seen: bool = False
    ) -> tuple[list[Prediction], TokenLayout, np.ndarray]:
        """Predictions, the layout and the readout's attention rows ``[L, H, N]`` (what a
        server's ``attention=readout`` answer carries, computed the same way)."""
        (expl,) = self.explain([image], top_k=top_k, seen=seen)
        rows = np.einsum("n,lhnm->lhm", expl.layout.readout_weights(), expl.attention)
        return expl.predictions, expl.layout, np.asarray(rows, dtype=np.float32)

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
        """Deletion and insertion curves of ``maps[main]`` for class ``target``, the random
        baseline, occlusion and each map's Spearman correlation with it
        (:func:`vitviz.analysis.trust.trust` on this model)."""
        from vitviz.analysis.trust import trust

        if main not in maps:
            raise OptionsError(f"the map {main!r} to judge is not among the maps given")
        (seen_image,) = self._seen([image], seen)
        layout = self.loaded.layout((seen_image.size[1], seen_image.size[0]))
        return trust(
            self.loaded.model,
            self.loaded.to_tensor(seen_image),
            int(target),
            maps,
            main,
            layout.grid,
            layout.patch_size,
            steps=steps,
            seeds=seeds,
            batch=batch,
        )

    # -- inside the heads (issue 24)
    def _reads_head(self, capability: str) -> bool:
        """Head ablation needs class logits and per-head ``attn.proj`` inputs; the logit lens
        a timm head (``norm`` + ``forward_head``) with classes."""
        from vitviz.engine.lens import has_lens

        model = self.loaded.model
        if capability == "logit_lens":
            return has_lens(model)
        from vitviz.engine.ablation import ablatable

        return self.loaded.has_classifier and ablatable(model)

    def ablate_heads(
        self,
        image: Image.Image,
        target: int,
        *,
        kind: str = "zero",
        batch: int = 16,
        progress: Callable[[int, int], None] | None = None,
    ) -> HeadAblation:
        """Each head's and each layer's effect on class ``target`` of one seen image when
        removed, ``batch`` ablated copies per forward (:func:`vitviz.engine.ablation.ablate_heads`;
        what it holds: :func:`vitviz.engine.ablation.ablation_cost`)."""
        from vitviz.engine.ablation import ablate_heads_of

        if not self.offers("head_ablation"):
            raise OptionsError(
                "this model's heads cannot be ablated (no classifier, or no "
                "per-head attention output)"
            )
        (seen,) = self._seen([image], True)
        return ablate_heads_of(
            self.loaded, seen, int(target), kind=kind, batch=batch, progress=progress
        )

    def logit_lens(self, image: Image.Image, *, top_k: int = 5) -> LogitLens:
        """The model's final norm and head read after every block, for one seen image
        (:func:`vitviz.engine.lens.logit_lens`; an approximation before the last layer)."""
        from vitviz.engine.lens import logit_lens_of

        if not self.offers("logit_lens"):
            raise OptionsError("the logit lens needs a timm classifier (norm and forward_head)")
        (seen,) = self._seen([image], True)
        return logit_lens_of(self.loaded, seen, top_k=top_k)

    def token_norms(self, image: Image.Image, *, k: float = 3.0) -> TokenNorms:
        """Every token's residual-stream norm per layer of one seen image, its high-norm
        outliers and their share of the readout's last-layer attention, captured in the same
        forward (:func:`vitviz.analysis.norms.token_norms`)."""
        from vitviz.analysis.norms import token_norms
        from vitviz.engine.lens import stream_norms_of

        (seen,) = self._seen([image], True)
        norms, attention, layout = stream_norms_of(self.loaded, seen)
        return token_norms(norms, layout, k=k, attention=attention)
