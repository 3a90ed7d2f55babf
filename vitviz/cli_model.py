"""The model a local command names: ``--model``, ``--weights``/``--random-weights``,
``--device`` and ``--precision``, loaded in this process."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitviz.backends.local import LocalBackend


def local_backend(args: argparse.Namespace, **extra: Any) -> LocalBackend:
    """Load the model the command line names (default ViT-B/16); ``extra`` goes to the loader
    (``batch_size``, ``keep_aspect``)."""
    from vitviz.backends.local import LocalBackend

    return LocalBackend.from_name(
        args.model or "vit-b16",
        weights=getattr(args, "weights", None),
        random_weights=getattr(args, "random_weights", False),
        device=args.device,
        precision=args.precision,
        **extra,
    )
