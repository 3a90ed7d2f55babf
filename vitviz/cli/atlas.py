"""``python -m vitviz atlas DIR --model M --out OUTDIR``: per-head statistics over a folder.

Streams the folder's images through the model a batch at a time (:mod:`vitviz.analysis.atlas`) and
writes ``atlas.json``, ``atlas.csv`` and ``atlas.html`` into ``--out``. Unreadable files are
skipped with one line each. Exit status: 0 all images used, 1 some files skipped (the atlas is
still written), 2 bad arguments, an unusable model or no readable image.
"""

from __future__ import annotations

import argparse
import sys

from vitviz.cli.arguments import add_model_arguments
from vitviz.cli.common import EXIT_OK, banner, local_backend, output_folder
from vitviz.errors import OptionsError

NAME = "atlas"
HELP = "per-head statistics over a folder of images: JSON, CSV and HTML report"
ORDER = 40  # its place in --help
EXIT_SOME_SKIPPED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The folder, how much of it to read, and the model."""
    parser.add_argument("folder", help="folder of images (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    parser.add_argument("--limit", type=int, help="stop after N readable images (in name order)")
    parser.add_argument("--recursive", action="store_true", help="also read sub-folders")
    parser.add_argument(
        "--examples", type=int, default=3, help="most local and most global heads shown (3 each)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(parser, batch_size=8)


def run(args: argparse.Namespace) -> int:
    """Build the atlas, write its three files and say where they are."""
    from vitviz.analysis.atlas import head_atlas, image_files, write_atlas

    out = output_folder(args.out)
    if args.batch_size < 1:
        raise OptionsError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise OptionsError(f"--limit must be at least 1, got {args.limit}")
    if args.examples < 0:
        raise OptionsError(f"--examples must be 0 or more, got {args.examples}")
    image_files(args.folder, recursive=args.recursive)  # a bad folder fails before the model
    backend = local_backend(args, batch_size=args.batch_size)
    warning = backend.info().weights.warning
    if warning:
        print(banner(warning), file=sys.stderr)
    atlas = head_atlas(
        backend,
        args.folder,
        batch_size=args.batch_size,
        limit=args.limit,
        recursive=args.recursive,
        progress=False if args.quiet else None,
    )
    write_atlas(atlas, out, examples=args.examples)
    layers, heads = atlas.shape
    kinds = ", ".join(
        f"{(atlas.kinds == k).sum()} {k}" for k in dict.fromkeys(atlas.kinds.ravel().tolist())
    )
    skipped = f", {len(atlas.skipped)} skipped" if atlas.skipped else ""
    print(
        f"atlas of {layers}×{heads} heads ({kinds}) over {atlas.images} images{skipped} "
        f"→ {out}/atlas.json, atlas.csv, atlas.html",
        file=sys.stderr,
    )
    return EXIT_SOME_SKIPPED if atlas.skipped else EXIT_OK
