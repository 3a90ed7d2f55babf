"""``python -m vitviz lens IMG [--top K]``: the logit lens. The model's own final norm and head
read the residual stream after every block (:mod:`vitviz.engine.lens`), as if the network
stopped there.

The last layer's row is the model's output; the rows before it are an approximation (the norm
and head were trained on the last layer's stream only). Writes ``NAME.lens.csv``, ``.npz`` and
``.svg`` (:mod:`vitviz.output.research`) and prints each layer's top class and the final
class's probability and rank (or, with ``--json``, the result and the files).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import TYPE_CHECKING

from vitviz.cli import _research as common
from vitviz.cli.arguments import add_research_model
from vitviz.cli.common import EXIT_OK, output_folder
from vitviz.errors import OptionsError
from vitviz.memory.cost import lens_cost

if TYPE_CHECKING:
    from vitviz.results import LogitLens

NAME = "lens"
HELP = "the logit lens: the final head read after every layer (an approximation before the last)"
ORDER = 64  # its place in --help

DEFAULT_TOP = 5
MAX_TOP = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The image, the classes kept per layer, and the model."""
    parser.add_argument("image", help="an image file")
    parser.add_argument(
        "--top",
        type=int,
        default=DEFAULT_TOP,
        help=f"classes kept per layer, 1 to {MAX_TOP} (default {DEFAULT_TOP})",
    )
    add_research_model(parser)


def run(args: argparse.Namespace) -> int:
    """Read the lens, write the files, print the table (or JSON)."""
    from vitviz.output import research

    if not 1 <= args.top <= MAX_TOP:
        raise OptionsError(f"--top must be from 1 to {MAX_TOP}, got {args.top}")
    common.check_server_arguments(args)
    out = output_folder(args.out)
    path, image = common.read_image(args.image)
    backend = common.research_backend(args, "logit_lens", "the logit lens")
    info = backend.info()
    labels = list(backend.labels or [])
    item = common.model_input(backend, path, image)
    common.check_memory(backend, item, partial(lens_cost, classes=info.classes))
    common.warn_weights(info)
    result = backend.logit_lens(item.seen, top_k=args.top)
    settings = common.settings(info, path, "logit lens", {"top": args.top})
    files = common.write_files(
        out,
        item.stem,
        "lens",
        {
            "csv": research.lens_csv(result, labels, settings),
            "npz": research.research_npz(result, settings),
            "svg": research.lens_svg(result, labels, title=f"Logit lens, {path.name}"),
        },
    )
    if args.json:
        final_label = _label(labels, result.final)
        common.print_json(
            {"settings": settings, "final_label": final_label, **result.to_dict(), "files": files}
        )
        return EXIT_OK
    print(summary(result, labels, path.name))
    print(f"→ {', '.join(files.values())}", file=sys.stderr)
    return EXIT_OK


def _label(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


def summary(result: LogitLens, labels: list[str], image: str) -> str:
    """Each layer's top-1 class, and the model's class's probability and rank there."""
    final = _label(labels, result.final)
    head = (
        f"{image}: logit lens; the model's class is {result.final} "
        f"{common.printable(final)!r}\n"
        "rows before the last are an approximation: the final norm and head read a stream "
        "they were not trained on"
    )
    rows = []
    layers = len(result.final_rank)
    for layer in range(layers):
        top = int(result.top[layer, 0])
        rows.append(
            [
                f"{layer}{' (output)' if layer == layers - 1 else ''}",
                f"{result.final_probability[layer]:.4f}",
                int(result.final_rank[layer]),
                f"{result.top_probability[layer, 0]:.4f}",
                f"{top} {_label(labels, top)}",
            ]
        )
    body = common.table(
        ["layer", "p(model's class)", "its rank", "p(top-1)", "top-1 class"], rows, text_last=True
    )
    return f"{head}\n\n{body}"
