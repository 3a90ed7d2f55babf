"""The names of what a backend may offer (:meth:`vitviz.backends.Backend.offers`), declared once.

Torch- and HTTP-free: the protocol, both backends and the server import it.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["CAPABILITIES", "SERVED", "SERVED_SINCE", "Capability", "check_capability"]

Capability = Literal[
    "explain",  # explain: predictions and the full attention
    "class_relevance",  # explain_classes: each class's relevance (∂y_c/∂A)
    "anatomy",  # anatomy: patch filters and position similarity
    "embeddings",  # embeddings: the lesson's patch, position and token vectors
    "features",  # features: token features after the last block
    "readout",  # readout: predictions and the readout's attention rows (the light answer)
    "text_relevance",  # text_relevance: a CLIP caption's token relevance
    "trust",  # trust: deletion/insertion curves and occlusion of a map
    "typed_labels",  # with_labels: CLIP classes typed in this process
    "live_maps",  # every live-view map per video frame (full attention each frame, here)
    "block_steps",  # block_steps: the lesson's look inside the encoder blocks (modules read)
    "parameter_parts",  # parameter_parts: the model's parameters counted by part
    "head_ablation",  # ablate_heads: each head's effect on a class when removed
    "logit_lens",  # logit_lens: the final norm and head read after every block
    "token_norms",  # token_norms: residual-stream norms and their high-norm outliers
]
"""The name of each call a backend may offer (:meth:`Backend.offers`)."""
CAPABILITIES: tuple[Capability, ...] = get_args(Capability)
SERVED: tuple[Capability, ...] = (
    "explain",
    "class_relevance",
    "anatomy",
    "embeddings",
    "features",
    "readout",
    "text_relevance",
    "trust",
    "head_ablation",
    "logit_lens",
    "token_norms",
)
"""The capabilities a vitviz server can offer over HTTP (typed labels, per-frame live maps and
the lesson's look inside the blocks need the model in this process)."""
SERVED_SINCE: dict[Capability, int] = {"head_ablation": 5, "logit_lens": 5, "token_norms": 5}
"""The API version that brought each served capability (those absent: version 4 or before);
a client never offers one that its server's version cannot carry."""


def check_capability(name: str) -> None:
    """A ``ValueError`` unless ``name`` is one of :data:`CAPABILITIES` (a misspelt name must
    not quietly hide a feature)."""
    if name not in CAPABILITIES:
        raise ValueError(f"unknown capability {name!r}: one of {', '.join(CAPABILITIES)}")
