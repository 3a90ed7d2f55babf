"""``python -m vitviz features IMG [--drop-background] [--patch P] --out DIR``: the last layer's
patch features without a classifier, as the page's Features view shows them.

Writes ``NAME-pca.png`` (the model's input beside the first three principal components of the
patch features as RGB; :func:`vitviz.methods.pca_rgb`), with ``--patch`` also
``NAME-similarity-pP.png`` (the cosine similarity of that patch's feature to every patch, with
its colour legend), and ``NAME-features.npz`` (``tokens`` [T, D], ``rgb``, ``foreground``,
``variance`` and ``similarity`` when asked for).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from vitviz import methods
from vitviz.cli.arguments import add_model_arguments
from vitviz.cli.common import EXIT_OK, local_backend, output_folder
from vitviz.errors import OptionsError

NAME = "features"
HELP = "last-layer patch features: PCA picture and patch similarity"
ORDER = 60  # its place in --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The image, the PCA picture's options, the patch to compare, and the model."""
    parser.add_argument("image", help="an image file")
    parser.add_argument(
        "--drop-background",
        action="store_true",
        help="split the patches by the first component's sign and redo the PCA on the "
        "foreground (DINOv2's picture)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="with --drop-background: the cut on the first component, in standard deviations "
        "(0: its sign)",
    )
    parser.add_argument(
        "--patch", type=int, help="also map the cosine similarity of this patch to every patch"
    )
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Compute and write the files; print the explained variance."""
    from vitviz.inputs.images import load_image_file
    from vitviz.output import exports, render
    from vitviz.output.provenance import public_info

    out = output_folder(args.out)
    backend = local_backend(args)
    seen = backend.geometry(load_image_file(Path(args.image)).image)
    feats = backend.features(seen)
    layout = feats.layout
    if args.patch is not None and not 0 <= args.patch < layout.num_patches:
        raise OptionsError(
            f"--patch {args.patch} is not on this model's {layout.grid[0]}×{layout.grid[1]} grid "
            f"(0–{layout.num_patches - 1})"
        )
    expl = backend.explain([seen], seen=True)[0]
    orient = methods.raw_attention(expl.attention, layout, layer=-1)[layout.num_prefix :]
    pca = methods.pca_rgb(
        feats.patches,
        layout.grid,
        drop_background=args.drop_background,
        threshold=args.threshold,
        orient=orient,
    )

    stem = Path(args.image).stem
    size = expl.image.shape[:2]
    side = render.side_by_side(expl.image, render.block_picture(pca.rgb, size), gap=8)
    (out / f"{stem}-pca.png").write_bytes(render.to_png(side))
    arrays = {
        "tokens": feats.tokens,
        "rgb": pca.rgb,
        "foreground": pca.foreground,
        "variance": pca.variance,
    }
    if args.patch is not None:
        sim = np.asarray(methods.patch_similarity(feats.patches, args.patch))
        arrays["similarity"] = sim.reshape(layout.grid)
        settings = exports.make_settings(
            public_info(backend.info()),
            image=Path(args.image).name,
            method="patch-similarity",
            options={"patch": args.patch},
            layout=layout,
        )
        fig = exports.figure(arrays["similarity"], expl.image, settings)
        (out / f"{stem}-similarity-p{args.patch}.png").write_bytes(render.to_png(fig))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (out / f"{stem}-features.npz").write_bytes(buf.getvalue())
    shares = ", ".join(f"{100 * float(v):.1f} %" for v in pca.variance)
    print(
        f"{stem}: the three components explain {shares} of the variance → {out}/", file=sys.stderr
    )
    return EXIT_OK
