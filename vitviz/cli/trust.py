"""``python -m vitviz trust IMG --method M [--class C] --out DIR``: how far to trust a map.

Runs the model once on the image, computes the chosen map and every other whole-image map
(raw attention, rollout, and the class-specific ones for the class), then the deletion and
insertion curves of the chosen map with their random baseline and patch occlusion
(:mod:`vitviz.analysis.trust`), and writes one JSON file per image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vitviz import methods
from vitviz.cli.arguments import (
    add_class,
    add_method_arguments,
    add_model_arguments,
    chosen_method_options,
)
from vitviz.cli.common import EXIT_OK, local_backend, output_folder
from vitviz.errors import OptionsError
from vitviz.inputs.classes import resolve_class

NAME = "trust"
HELP = "how far to trust a map: deletion/insertion curves, occlusion (JSON)"
ORDER = 30  # its place in --help


def compared_methods() -> list[str]:
    """The maps compared with occlusion: every whole-image graded map of the registry
    (class-agnostic and class-specific; a query map is one patch's, a mask is binary)."""
    return list(methods.of_kind(*methods.WHOLE_IMAGE))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The image, the curves' steps and seeds, the model, the method and the class."""
    parser.add_argument("image", help="an image file")
    parser.add_argument("--steps", type=int, default=16, help="curve steps (default 16)")
    parser.add_argument("--seeds", type=int, default=3, help="random orders for the baseline")
    add_model_arguments(parser, batch_size=16)
    add_method_arguments(parser)
    add_class(parser)


def run(args: argparse.Namespace) -> int:
    """Compute and write the report; print the AUCs."""
    from vitviz.inputs.images import load_image_file

    options = chosen_method_options(args)
    out = output_folder(args.out)
    if methods.METHODS[args.method].negative(options):
        raise OptionsError(
            "trust curves measure how the map's patches hold up the class probability; a "
            "'why not' map (--negative) lowers it by design, so it is not judged: leave out "
            "--negative"
        )
    if args.steps < 1 or args.seeds < 1 or args.batch_size < 1:
        raise OptionsError("--steps, --seeds and --batch-size must be at least 1")
    backend = local_backend(args)
    info = backend.info()
    if not info.classes:
        raise OptionsError(f"trust curves need a classifier, and {info.name} has none")
    methods.check_options(options, info.layers, info.heads)
    seen = backend.geometry(load_image_file(Path(args.image)).image)
    expl = backend.explain([seen], seen=True)[0]
    labels = backend.labels or []
    target = (
        resolve_class(args.target_class, labels)
        if args.target_class is not None
        else expl.predictions[0].index
    )
    rel = backend.explain_classes([seen], [[target]], seen=True)[0].relevance[0]
    maps = {}
    for name in compared_methods():
        grads = rel if methods.METHODS[name].needs_gradients else None
        maps[name] = methods.compute_map(name, expl.attention, expl.layout, grads=grads)
    spec = methods.METHODS[args.method]
    grads = rel if spec.needs_gradients else None
    maps[args.method] = methods.compute_map(
        args.method, expl.attention, expl.layout, grads=grads, **options
    )
    report = backend.trust(
        seen,
        target,
        maps,
        args.method,
        steps=args.steps,
        seeds=args.seeds,
        batch=args.batch_size,
        seen=True,
    )
    data = {
        "image": Path(args.image).name,
        "model": info.name,
        "timm_name": info.timm_name,
        "weights": info.weights.source,
        "method": args.method,
        "options": options,
        "class_label": labels[target] if target < len(labels) else str(target),
        "steps": args.steps,
        "seeds": args.seeds,
        **report.to_dict(),
    }
    path = out / f"{Path(args.image).stem}-trust-{args.method}.json"
    path.write_text(json.dumps(data, indent=2, default=_plain))
    r = report
    print(
        f"{Path(args.image).name}: {args.method} for {data['class_label']!r}: "
        f"deletion AUC {r.deletion.auc:.3f} (random {r.random_deletion.auc:.3f}, lower is "
        f"better), insertion AUC {r.insertion.auc:.3f} (random {r.random_insertion.auc:.3f}, "
        f"higher is better), Spearman with occlusion {r.correlations[args.method]:.2f} → {path}",
        file=sys.stderr,
    )
    return EXIT_OK


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
