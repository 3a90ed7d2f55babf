"""``python -m vitviz norms IMG [--k 3] [--layer L]``: token norms and high-norm outliers
(Darcet et al., "Vision Transformers Need Registers", ICLR 2024; :mod:`vitviz.analysis.norms`).

A patch token is an outlier at layer l when its residual-stream norm exceeds ``k ×`` the median
patch norm of that layer. Writes ``NAME.norms.csv``, ``.npz`` and ``.svg`` (the picture shows
``--layer``, default the last; :mod:`vitviz.output.research`) and prints the outlier share
per layer, the outliers' share of the readout's attention and the register tokens' norms (or,
with ``--json``, the result and the files).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

import numpy as np

from vitviz.analysis.norms import DEFAULT_K
from vitviz.cli import _research as common
from vitviz.cli.arguments import add_layer, add_research_model
from vitviz.cli.common import EXIT_OK, output_folder
from vitviz.errors import OptionsError
from vitviz.memory.cost import norms_cost

if TYPE_CHECKING:
    from vitviz.results import TokenNorms

NAME = "norms"
HELP = "token norms: high-norm outlier tokens per layer, and the registers"
ORDER = 66  # its place in --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The image, the outlier factor, the layer pictured, and the model."""
    parser.add_argument("image", help="an image file")
    parser.add_argument(
        "--k",
        type=float,
        default=DEFAULT_K,
        help="outlier factor above 1: a patch whose norm exceeds k × its layer's median patch "
        f"norm (default {DEFAULT_K:g})",
    )
    add_layer(parser, help="the layer the picture shows, from 0 (default: the last)")
    add_research_model(parser)


def run(args: argparse.Namespace) -> int:
    """Measure the norms, write the files, print the table (or JSON)."""
    from vitviz.output import research

    if not (math.isfinite(args.k) and args.k > 1):
        raise OptionsError(
            f"--k must be a number above 1 (a token above its layer's median norm), got {args.k:g}"
        )
    common.check_server_arguments(args)
    out = output_folder(args.out)
    path, image = common.read_image(args.image)
    backend = common.research_backend(args, "token_norms", "token norms")
    info = backend.info()
    layer = info.layers - 1 if args.layer is None else args.layer
    if not 0 <= layer < info.layers:
        raise OptionsError(f"--layer must be from 0 to {info.layers - 1}, got {args.layer}")
    item = common.model_input(backend, path, image)
    common.check_memory(backend, item, norms_cost)
    common.warn_weights(info)
    result = backend.token_norms(item.seen, k=args.k)
    ph, pw = info.patch_size
    grid = (item.seen.height // ph, item.seen.width // pw)
    settings = common.settings(info, path, "token norms", {"k": args.k, "layer": layer})
    settings["grid"] = list(grid)
    files = common.write_files(
        out,
        item.stem,
        "norms",
        {
            "csv": research.norms_csv(result, settings),
            "npz": research.research_npz(result, settings),
            "svg": research.norms_svg(
                result, layer, grid, title=f"Token norms, layer {layer}, {path.name}"
            ),
        },
    )
    if args.json:
        common.print_json({"settings": settings, **result.to_dict(), "files": files})
        return EXIT_OK
    print(summary(result, path.name))
    print(f"→ {', '.join(files.values())}", file=sys.stderr)
    return EXIT_OK


def summary(result: TokenNorms, image: str) -> str:
    """Per layer: outlier patches, their share, the median and largest patch norm, and the
    registers' norms; then the outliers' share of the readout's attention."""
    norms = np.asarray(result.norms, np.float64)
    patches = norms[:, result.num_prefix :]
    registers = np.asarray(result.registers, np.float64)
    head = (
        f"{image}: token norms; a patch is an outlier when its norm > {result.k:g} × its "
        "layer's median patch norm"
    )
    rows = []
    for layer in range(norms.shape[0]):
        regs = " ".join(f"{v:.3g}" for v in registers[layer]) if registers.shape[1] else "-"
        rows.append(
            [
                layer,
                int(np.asarray(result.outliers)[layer].sum()),
                f"{result.share[layer]:.2%}",
                f"{np.median(patches[layer]):.4g}",
                f"{patches[layer].max():.4g}",
                regs,
            ]
        )
    body = common.table(
        ["layer", "outliers", "share", "median norm", "max norm", "register norms"],
        rows,
        text_last=True,
    )
    share = result.attention_share
    tail = (
        f"outliers' share of the readout's last-layer attention: {share:.2%}"
        if share is not None
        else "the readout's attention was not captured"
    )
    regs = registers.shape[1]
    about = f"{regs} register token(s)" if regs else "no register tokens"
    return f"{head}\n\n{body}\n\n{tail}; {about}"
