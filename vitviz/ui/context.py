"""What every view gets: the backend, the model, the image and its cached explanation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitviz.backends import Backend
from vitviz.inputs.images import DecodedImage
from vitviz.layout import TokenLayout
from vitviz.results import ClassRelevance, ImageExplanation, ModelInfo
from vitviz.ui.state import Entry


@dataclass
class ViewContext:
    """One page run's model, image and explanation (a view reads; it never runs the model
    except through :mod:`vitviz.ui.resources`)."""

    backend: Backend
    info: ModelInfo
    model_id: str
    image_digest: str
    image_name: str
    decoded: DecodedImage
    entry: Entry
    source: bytes = b""  # the image as sent (another model decodes it for its own input)

    def release(self) -> None:
        """The page run is over: hold the explanation no longer (:meth:`Entry.unpin`)."""
        self.entry.unpin()

    @property
    def expl(self) -> ImageExplanation:
        """The explanation (predictions, layout, input image, attention)."""
        return self.entry.explanation

    @property
    def layout(self) -> TokenLayout:
        """The token layout of this input."""
        return self.entry.explanation.layout

    @property
    def attn(self) -> np.ndarray:
        """``[L, H, N, N]`` attention."""
        return self.entry.explanation.attention

    def query_rows(self, patch: int) -> np.ndarray:
        """What patch ``patch`` attends to in every layer, head and fusion ``[L, H + 3, N]``
        (:func:`vitviz.methods.head_rows`), cached with the explanation."""
        from vitviz import methods

        return self.entry.get(
            ("query-rows", patch), lambda: methods.head_rows(self.attn, self.layout, patch=patch)
        )

    @property
    def labels(self) -> list[str]:
        """Class names (empty without a classifier)."""
        return list(self.backend.labels or [])

    def relevance(self, cls: int, negative: bool = False, *, alone: bool = False) -> ClassRelevance:
        """What the class maps read of ``∂y_c/∂A`` for class ``cls`` of this image (``negative``:
        "why not"), cached by :func:`vitviz.ui.resources.class_relevance`. The top classes
        come with it (one backward pass each, so a class picker switches at once) unless
        ``alone`` (a page that shows one class only, e.g. the lesson)."""
        from vitviz.ui import resources

        return resources.class_relevance(
            self.model_id,
            self.image_digest,
            self.backend,
            self.decoded.image,
            cls,
            [] if alone else self.top_classes,
            negative,
        )

    def class_title(self, cls: int) -> str:
        """A class as the page names it (the class-free target of a backbone in words)."""
        from vitviz.ui.i18n import class_label, t

        labels = self.labels
        if not 0 <= cls < len(labels):
            return t("widgets.feature_norm")
        return class_label(labels[cls], cls, short=not self.info.label_set)  # typed: whole

    @property
    def top_classes(self) -> list[int]:
        """The predicted classes, most probable first."""
        return [p.index for p in self.entry.explanation.predictions]

    @property
    def stem(self) -> str:
        """A file-name stem for downloads: image and model."""
        from vitviz.ui.downloads import safe_stem

        return f"{safe_stem(self.image_name)}-{safe_stem(self.info.name)}"
