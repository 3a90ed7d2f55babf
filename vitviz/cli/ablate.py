"""``python -m vitviz ablate IMG [--class C] [--kind zero|mean] [--batch B]``: does a head
matter? Removes each attention head, then each whole layer's attention, and reads how one
class's logit and probability change (Michel et al., NeurIPS 2019;
:mod:`vitviz.engine.ablation`).

Every Δ is *ablated − clean*: a head the class needs has a negative Δ. Writes
``NAME.ablation.csv``, ``.npz`` and ``.svg`` (:mod:`vitviz.output.research`) and prints the ten
most needed heads and every layer's Δ (or, with ``--json``, the result and the files).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from vitviz.cli import _research as common
from vitviz.cli.arguments import add_class, add_research_model
from vitviz.cli.common import EXIT_OK, output_folder
from vitviz.errors import OptionsError
from vitviz.memory.cost import ablation_cost, explanation_cost

if TYPE_CHECKING:
    from vitviz.results import HeadAblation

NAME = "ablate"
HELP = "does a head matter? each head's and layer's effect on a class when removed"
ORDER = 62  # its place in --help

KINDS = ("zero", "mean")
DEFAULT_BATCH = 16
SHOWN = 10  # heads in the printed table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The image, the class, the ablation, its batch, and the model."""
    parser.add_argument("image", help="an image file")
    add_class(parser, help="the class whose logit is read: index or name (default: top)")
    parser.add_argument(
        "--kind",
        default="zero",
        help="zero: a removed head's output is 0; mean: its mean over the image's tokens "
        "(default zero)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"ablated copies of the image per forward (default {DEFAULT_BATCH})",
    )
    add_research_model(parser)


def run(args: argparse.Namespace) -> int:
    """Ablate, write the files, print the table (or JSON)."""
    from vitviz.inputs.classes import resolve_class
    from vitviz.output import research

    if args.kind not in KINDS:
        raise OptionsError(f"--kind must be zero or mean, got {args.kind!r}")
    if args.batch < 1:
        raise OptionsError(f"--batch must be at least 1, got {args.batch}")
    common.check_server_arguments(args)
    out = output_folder(args.out)
    path, image = common.read_image(args.image)
    backend = common.research_backend(args, "head_ablation", "head ablation")
    info = backend.info()
    labels = backend.labels or []
    item = common.model_input(backend, path, image)
    if args.target_class is not None:
        target = resolve_class(args.target_class, labels)
    else:  # the top class: one plain explanation first
        common.check_memory(backend, item, explanation_cost)
        target = backend.explain([item.seen], top_k=1, seen=True)[0].predictions[0].index
    common.check_memory(backend, item, partial(ablation_cost, batch=args.batch))
    common.warn_weights(info)
    result = backend.ablate_heads(
        item.seen, target, kind=args.kind, batch=args.batch, progress=_progress(args.json)
    )
    label = labels[target] if target < len(labels) else str(target)
    settings = common.settings(
        info,
        path,
        "head ablation",
        {"class": target, "class_label": label, "kind": args.kind, "batch": args.batch},
    )
    files = common.write_files(
        out,
        item.stem,
        "ablation",
        {
            "csv": research.ablation_csv(result, settings),
            "npz": research.research_npz(result, settings),
            "svg": research.ablation_svg(
                result, title=f"Head ablation ({args.kind}) of {label!r}, {path.name}"
            ),
        },
    )
    if args.json:
        common.print_json(
            {"settings": settings, "class_label": label, **result.to_dict(), "files": files}
        )
        return EXIT_OK
    print(summary(result, label, path.name))
    print(f"→ {', '.join(files.values())}", file=sys.stderr)
    return EXIT_OK


def _progress(quiet: bool) -> Callable[[int, int], None] | None:
    """A progress line on stderr (ablated copies done of all), or nothing."""
    if quiet:
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\rablating: {done}/{total} copies", end=end, file=sys.stderr, flush=True)

    return show


def summary(result: HeadAblation, label: str, image: str) -> str:
    """The ten most needed heads and every whole layer's Δ, as text tables."""
    head = (
        f"{image}: head ablation ({result.kind}) of class {result.target} "
        f"{common.printable(label)!r}: clean logit {result.clean_logit:.4g}, probability "
        f"{result.clean_probability:.4g}\n"
        "Δ = ablated − clean: a head the class needs has a negative Δ"
    )
    rows = []
    for rank, (layer, h, d) in enumerate(result.ranked()[:SHOWN], 1):
        rows.append([rank, layer, h, f"{d:+.4f}", f"{result.probability[layer, h]:+.4f}"])
    heads = common.table(["rank", "layer", "head", "Δlogit", "Δprobability"], rows)
    rows = [
        [layer, f"{result.layer_logit[layer]:+.4f}", f"{result.layer_probability[layer]:+.4f}"]
        for layer in range(len(result.layer_logit))
    ]
    layers = common.table(["layer", "Δlogit", "Δprobability"], rows)
    return (
        f"{head}\n\nthe {min(SHOWN, result.logit.size)} most needed heads:\n{heads}\n\n"
        f"whole layers (every head removed):\n{layers}"
    )
