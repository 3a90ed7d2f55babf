"""What ``ablate``, ``lens`` and ``norms`` share at run time: the image, the backend (in this
process or on ``--server``, refused with one line where it lacks the capability), the memory
check before the work, the settings written beside the numbers, and the three files."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitviz.errors import MemoryRefused, OptionsError

if TYPE_CHECKING:
    from PIL import Image

    from vitviz.backends import Backend
    from vitviz.backends.capabilities import Capability
    from vitviz.memory.cost import WorkCost
    from vitviz.results import ModelInfo


@dataclass(frozen=True)
class Input:
    """One image ready for the model: its file, its stem for the output names, and the pixels
    the model sees (resized and cropped)."""

    path: Path
    stem: str
    seen: Image.Image


def check_server_arguments(args: argparse.Namespace) -> None:
    """``--weights``/``--random-weights`` are the server's choice, not the client's."""
    if args.server and (args.weights or args.random_weights):
        raise OptionsError(
            "--weights and --random-weights are the server's choice: start the server with them"
        )


def research_backend(args: argparse.Namespace, capability: Capability, what: str) -> Backend:
    """The model in this process or on ``--server``; an :class:`OptionsError` (one line, exit
    status 2) where it does not offer ``capability`` (``what``: the work in words)."""
    if args.server:
        from vitviz.backends.remote import RemoteBackend

        backend: Backend = RemoteBackend(args.server, token=args.token)
        served = backend.info().name
        if args.model and args.model != served:
            raise OptionsError(
                f"the server at {args.server} serves {served!r}, not {args.model!r}; "
                "leave out --model or start a server with that model"
            )
        if not backend.offers(capability):
            raise OptionsError(
                f"the vitviz server at {args.server} does not offer {what}: run it in this "
                "process (leave out --server)"
            )
        return backend
    from vitviz.cli.common import local_backend

    backend = local_backend(args)
    if not backend.offers(capability):
        info = backend.info()
        raise OptionsError(f"{info.name} does not offer {what}: {why_not(capability)}")
    return backend


def why_not(capability: str) -> str:
    """Why an in-process model lacks one of the research capabilities."""
    if capability == "head_ablation":
        return "it needs a classifier and timm attention blocks whose heads reach a linear proj"
    if capability == "logit_lens":
        return "it needs a timm classifier read through model.norm and model.forward_head"
    return "its blocks cannot be read"


def read_image(name: str) -> tuple[Path, Any]:
    """The decoded image file (an :class:`~vitviz.errors.ImageError`, one line, when it is
    missing or not an image), read before any model work."""
    from vitviz.inputs.images import load_image_file

    path = Path(name)
    return path, load_image_file(path).image


def model_input(backend: Backend, path: Path, image: Image.Image) -> Input:
    """The image as the model sees it (its resize and crop)."""
    return Input(path, path.stem or "image", backend.geometry(image))


def check_memory(
    backend: Backend, item: Input, cost_of: Callable[[Any, tuple[int, int]], WorkCost]
) -> None:
    """Refuse work that would not fit in this machine's free memory, before it runs.

    ``cost_of(shape, input_hw)`` is the work's :class:`~vitviz.memory.cost.WorkCost` for the
    model input ``item``; the free memory is the machine's (or the cgroup's) less what this
    process holds now, the model included. A model on a server is the server's to check (it
    has no shape here)."""
    shape = backend.memory_shape()
    if shape is None:
        return
    from vitviz.memory.admission import machine_memory, process_rss
    from vitviz.memory.cost import size_text

    cost = cost_of(shape, (item.seen.height, item.seen.width))
    total = machine_memory()
    available = max(0, total - process_rss())
    if cost.peak > available:
        raise MemoryRefused(
            f"{cost.what} would hold {cost.describe()}, more than the {size_text(available)} "
            f"free on this machine (of {size_text(total)})"
            + (": use a smaller --batch" if "ablation" in cost.what else ""),
            cost.what,
            int(cost.peak),
            available,
            total,
        )


def settings(
    info: ModelInfo, image: Path, analysis: str, options: Mapping[str, Any]
) -> dict[str, Any]:
    """What the files say about how they were made: the model, its weights, the image's name
    (not its path) and the analysis with its options."""
    return {
        "model": info.name,
        "timm_name": info.timm_name,
        "weights": info.weights.source,
        "precision": info.precision,
        "image": image.name,
        "analysis": analysis,
        "options": dict(options),
    }


def write_files(
    out: Path, stem: str, kind: str, files: Mapping[str, str | bytes]
) -> dict[str, str]:
    """Write ``out/STEM.KIND.EXT`` for each ``EXT → content``; returns ``EXT → path``."""
    written = {}
    for ext, content in files.items():
        path = out / f"{stem}.{kind}.{ext}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        written[ext] = str(path)
    return written


def print_json(data: Mapping[str, Any]) -> None:
    """``data`` as JSON on stdout (numpy numbers as plain numbers)."""
    print(json.dumps(data, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def warn_weights(info: ModelInfo) -> None:
    """The weights' warning (random weights, a fallback) on stderr."""
    from vitviz.cli.common import banner

    if info.weights.warning:
        print(banner(info.weights.warning), file=sys.stderr)


def table(header: list[str], rows: list[list[Any]], *, text_last: bool = False) -> str:
    """A plain text table, columns right-aligned (the last left-aligned with ``text_last``)."""
    cells = [header] + [[printable(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) for c, w in zip(r, widths, strict=True)]
        if text_last:
            parts[-1] = r[-1]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def printable(text: Any) -> str:
    """``text`` for a terminal: control characters (escape sequences, line breaks) as spaces,
    so a label from a model or a server cannot move the cursor or fake a line."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in str(text))
