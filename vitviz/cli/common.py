"""What the commands share at run time: exit statuses, the warning banner, the ``--out``
folder, and the model a local command names (``--model``, ``--weights``/``--random-weights``,
``--device``, ``--precision``, ``--labels``/``--template``), loaded in this process."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitviz.errors import OptionsError

if TYPE_CHECKING:
    from vitviz.backends.local import LocalBackend

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130


def banner(text: str) -> str:
    """``text`` framed in exclamation marks (random weights, a fallback model…)."""
    line = "!" * (len(text) + 8)
    return f"{line}\n!!! {text} !!!\n{line}"


def output_folder(name: str) -> Path:
    """The ``--out`` folder, created and checked writable before any model work."""
    import tempfile

    out = Path(name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise OptionsError(
            f"--out {name}: cannot write output files there ({why}); "
            "give a folder you can write to (it is created if missing)"
        ) from None
    return out


def typed_labels(args: argparse.Namespace, name: str) -> tuple[list[str] | None, str | None]:
    """``--labels`` and ``--template``, checked before any model work: the classes a CLIP
    model scores (an :class:`OptionsError` for models with fixed classes)."""
    from vitviz.inputs.prompts import check_template, read_labels

    text, template = getattr(args, "labels", None), getattr(args, "template", None)
    if text is None and template is None:
        return None, None
    from vitviz.models.families import lookup

    if not lookup(name)[0].typed_labels:
        raise OptionsError(
            f"--labels and --template type the classes of a CLIP model (e.g. --model clip-b32); "
            f"{name} has fixed classes"
        )
    labels = read_labels(text) if text is not None else None
    return labels, None if template is None else check_template(template)


def local_backend(args: argparse.Namespace, **extra: Any) -> LocalBackend:
    """Load the model the command line names (default ViT-B/16); ``extra`` goes to the loader
    (``batch_size``, ``keep_aspect``). A CLIP model scores ``--labels`` with ``--template``."""
    from vitviz.backends import local_backend as in_process

    name = args.model or "vit-b16"
    labels, template = typed_labels(args, name)
    backend = in_process(
        name,
        batch_size=extra.pop("batch_size", 8),
        weights=getattr(args, "weights", None),
        random_weights=getattr(args, "random_weights", False),
        device=args.device,
        precision=args.precision,
        **extra,
    )
    if labels is not None or template is not None:
        backend = backend.with_labels(labels, template)  # type: ignore[arg-type]
    return backend
