"""``python -m vitviz compare IMG [--model-b M | --image-b IMG | --method-b M] --out DIR``.

Two maps side by side, as the page's Compare view: two models on one image, two images on one
model, or two methods; one set of method options, carried to the second model by relative
depth (:mod:`vitviz.analysis.comparison`). Writes ``NAME-compare.png`` (both figures with their
colour legend and settings caption), ``NAME-compare.npz`` (both maps' values) and
``NAME-compare.json`` (both sides' settings, the options each side used).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from vitviz.cli.arguments import (
    add_alpha,
    add_class,
    add_colormap,
    add_method_arguments,
    add_model_arguments,
    chosen_method_options,
    method_choices,
)
from vitviz.cli.common import EXIT_OK, local_backend, output_folder
from vitviz.errors import OptionsError

NAME = "compare"
HELP = "two maps side by side: two models, two images or two methods"
ORDER = 50  # its place in --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Side A's image, what side B changes, the picture, the model, the method and the class."""
    parser.add_argument("image", help="an image file (side A; side B too unless --image-b)")
    parser.add_argument("--image-b", help="side B's image (two images on one model)")
    parser.add_argument("--model-b", help="side B's model (two models on one image)")
    parser.add_argument(
        "--random-weights-b", action="store_true", help="side B's model with random weights"
    )
    parser.add_argument(
        "--method-b", choices=method_choices(), help="side B's method (two methods)"
    )
    add_colormap(parser, checked_by_argparse=False)  # checked by run, as an OptionsError
    add_alpha(parser)
    add_model_arguments(parser)
    add_method_arguments(parser)
    add_class(parser)


def run(args: argparse.Namespace) -> int:
    """Compute both maps and write the files; print where they went."""
    from vitviz.analysis.comparison import Side, compare
    from vitviz.inputs.classes import resolve_class
    from vitviz.inputs.images import load_image_file
    from vitviz.models.families import lookup
    from vitviz.output import exports, render
    from vitviz.output.provenance import public_info

    options = chosen_method_options(args)
    out = output_folder(args.out)
    if not (args.model_b or args.image_b or args.method_b):
        raise OptionsError(
            "say what to compare: --model-b (two models), --image-b (two images) or "
            "--method-b (two methods)"
        )
    if not 0.0 <= args.alpha <= 1.0:
        raise OptionsError(f"--alpha must be in [0, 1], got {args.alpha}")
    render.colormap_lut(args.colormap)  # an unknown colormap fails before any model work

    side_a = argparse.Namespace(**vars(args))
    b_typed = args.model_b is not None and lookup(args.model_b)[0].typed_labels
    if b_typed and not lookup(args.model or "vit-b16")[0].typed_labels:
        side_a.labels = side_a.template = None  # the typed classes are side B's
    backend_a = local_backend(side_a)
    backend_b = backend_a
    if args.model_b is not None:  # side B: its own model, with or without trained weights
        side_b = argparse.Namespace(**vars(args))
        side_b.model, side_b.weights = args.model_b, None
        side_b.random_weights = args.random_weights_b
        if not lookup(args.model_b)[0].typed_labels:  # typed labels: for CLIP models only
            side_b.labels = side_b.template = None
        backend_b = local_backend(side_b)
    image_a = load_image_file(Path(args.image)).image
    image_b = load_image_file(Path(args.image_b)).image if args.image_b else image_a
    target = None
    if args.target_class is not None:
        target = resolve_class(args.target_class, backend_a.labels or [])
    a = Side(backend_a, image_a, args.method, target)
    b = Side(backend_b, image_b, args.method_b or args.method, target if not args.model_b else None)
    first, second = compare(a, b, options)
    names = (Path(args.image).name, Path(args.image_b).name if args.image_b else None)
    figures, settings = [], []
    for side, result, name in ((a, first, names[0]), (b, second, names[1] or names[0])):
        info = public_info(side.backend.info())
        s = exports.make_settings(
            info,
            image=name,
            method=side.method,
            options=result.options,
            layout=result.explanation.layout,
            target=result.target,
            colormap=args.colormap,
            alpha=args.alpha,
        )
        settings.append(s)
        figures.append(exports.figure(result.values, result.explanation.image, s))
    stem = Path(args.image).stem
    png = out / f"{stem}-compare.png"
    png.write_bytes(render.to_png(render.side_by_side(*figures)))
    buf = io.BytesIO()
    np.savez(buf, values_a=first.values, values_b=second.values)
    (out / f"{stem}-compare.npz").write_bytes(buf.getvalue())
    (out / f"{stem}-compare.json").write_text(
        json.dumps({"a": settings[0], "b": settings[1]}, indent=2, ensure_ascii=False)
    )
    print(
        f"{stem}: {exports.caption(settings[0])}  ↔  {exports.caption(settings[1])} → {png}",
        file=sys.stderr,
    )
    return EXIT_OK
