"""``python -m vitviz explain IMG… [--method M] --out DIR``: maps of images, in this process or
on a vitviz server (``--server``).

Writes, per image, a PNG overlay of the chosen method, a JSON file (predictions, model, weights
source, method and options, input size, token layout) and an ``.npz`` with the full attention
tensor ``attention`` ``[L, H, N, N]`` and the method's raw ``map`` ``[gh, gw]``; with
``--legend`` the PNG gets a colour scale and a caption of the settings, ``--svg`` adds the same
figure as SVG and ``--values`` the map's values with every setting as ``.values.npz`` and
``.values.csv`` (:mod:`vitviz.output.exports`).
Exit status: 0 all images done, 1 some images failed, 2 bad arguments or unusable model.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitviz import methods
from vitviz.cli.arguments import (
    add_alpha,
    add_batch_size,
    add_class,
    add_colormap,
    add_device,
    add_labels,
    add_method_arguments,
    add_model,
    add_out,
    add_precision,
    add_server_client,
    add_weights,
    chosen_method_options,
)
from vitviz.cli.common import EXIT_OK, EXIT_SOME_FAILED, banner, local_backend, output_folder
from vitviz.errors import OptionsError, ServerError, VitvizError
from vitviz.inputs.classes import resolve_class
from vitviz.output import exports, render
from vitviz.results import FEATURE_NORM, ClassExplanation, ModelInfo

if TYPE_CHECKING:
    from vitviz.backends import Backend

NAME = "explain"
HELP = "explain images: overlay PNG, JSON and attention .npz"
ORDER = 20  # its place in --help


def _class_methods() -> str:
    """The class-specific methods, comma-separated."""
    return ", ".join(methods.of_kind("class"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The images, the model, the map and its picture, and an optional server."""
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    add_model(parser, help="curated key or any timm ViT name (default: vit-b16, or the server's)")
    add_weights(
        parser, random_help="no trained weights: for architecture tests only, outputs say so"
    )
    add_out(parser)
    add_method_arguments(parser)
    add_class(parser, help=f"{_class_methods()}: class index or name (default: top prediction)")
    add_device(parser)
    add_precision(parser)
    add_labels(parser)
    add_batch_size(parser, 8, described=False)
    parser.add_argument("--keep-aspect", action="store_true", help="non-square input, no crop")
    add_colormap(parser)
    add_alpha(parser)
    parser.add_argument("--smooth", action="store_true", help="smooth instead of blocky upsampling")
    parser.add_argument(
        "--legend", action="store_true", help="add the colour scale and the settings under the PNG"
    )
    parser.add_argument(
        "--svg", action="store_true", help="also write the figure as SVG (legend and caption)"
    )
    parser.add_argument(
        "--values",
        action="store_true",
        help="also write the map's values with every setting (NAME.values.npz, NAME.values.csv)",
    )
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--text-start-layer",
        type=int,
        default=0,
        metavar="N",
        help="CLIP models: the caption's token relevance from text layer N on (default 0: every "
        "text layer, as the image maps; -1: the last alone, as Chefer et al.'s CLIP notebook)",
    )
    add_server_client(parser)


def run(args: argparse.Namespace) -> int:
    """Explain every image; report each failure on one line and go on with the rest."""
    options = chosen_method_options(args)
    _check_numbers(args)
    out = output_folder(args.out)
    backend = _backend(args)
    info = backend.info()
    methods.check_options(options, info.layers, info.heads)
    target = _target_class(args, backend, info)
    warning = info.weights.warning
    if warning:
        print(banner(warning), file=sys.stderr)
    if info.weights.note:
        print(f"note: {info.weights.note}", file=sys.stderr)
    failed = _explain_all(args, backend, _Outputs(args, options, info, out, target))
    done = len(args.images) - failed
    print(f"{done} of {len(args.images)} images explained into {out}/", file=sys.stderr)
    if warning:
        print(banner(warning), file=sys.stderr)
    return EXIT_OK if failed == 0 else EXIT_SOME_FAILED


def _check_numbers(args: argparse.Namespace) -> None:
    """``--alpha``, ``--top-k`` and ``--batch-size`` in range, before any model work."""
    if not 0.0 <= args.alpha <= 1.0:
        raise OptionsError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.top_k < 1:
        raise OptionsError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise OptionsError(f"--batch-size must be at least 1, got {args.batch_size}")


def _backend(args: argparse.Namespace) -> Backend:
    """The in-process engine, or a client of ``--server``."""
    if args.server:
        from vitviz.backends.remote import RemoteBackend

        if args.weights or args.random_weights or args.keep_aspect:
            raise OptionsError(
                "--weights, --random-weights and --keep-aspect are the server's choice: "
                "start the server with them"
            )
        if args.labels is not None or args.template is not None:
            raise OptionsError(
                "--labels and --template are chosen when the server starts: "
                "python -m vitviz serve --model clip-b32 --labels ..."
            )
        remote = RemoteBackend(args.server, token=args.token, batch_size=args.batch_size)
        served = remote.info().name
        if args.model and args.model != served:
            raise OptionsError(
                f"the server at {args.server} serves {served!r}, not {args.model!r}; "
                "leave out --model or start a server with that model"
            )
        return remote
    return local_backend(args, keep_aspect=args.keep_aspect, batch_size=args.batch_size)


def _target_class(args: argparse.Namespace, backend: Backend, info: ModelInfo) -> int | None:
    """The class ``--class`` names for a class-specific method (None: the top prediction, or a
    backbone's readout feature norm); an :class:`OptionsError` where ``--class`` does not apply."""
    if not methods.METHODS[args.method].needs_gradients:
        if args.target_class is not None:
            raise OptionsError(
                f"--class applies to the class-specific methods ({_class_methods()})"
            )
        return None
    if not info.classes:  # a backbone: the one class-free target, ‖readout feature‖
        if args.target_class not in (None, "top", str(FEATURE_NORM)):
            raise OptionsError(
                f"{info.name} has no classifier, so --class cannot name a class: its "
                f"{args.method} map explains the norm of its readout feature (leave --class "
                "out)"
            )
        print(
            f"note: {info.name} has no classifier: {args.method} explains the norm of its "
            "readout feature (a class-free map)",
            file=sys.stderr,
        )
        return None
    if args.target_class is not None:
        return resolve_class(args.target_class, backend.labels or [])
    return None


def _explain_all(args: argparse.Namespace, backend: Backend, outputs: _Outputs) -> int:
    """Decode the images and explain them a batch at a time; returns how many failed."""
    from tqdm import tqdm

    from vitviz.inputs.images import load_image_file

    failed = 0
    bar = tqdm(args.images, desc="explaining", unit="image", file=sys.stderr)
    pending: list[tuple[Path, Any]] = []
    for i, name in enumerate(bar):
        path = Path(name)
        try:
            pending.append((path, load_image_file(path, reduce=backend.geometry)))
        except VitvizError as err:
            failed += 1
            tqdm.write(f"error: {err}", file=sys.stderr)
        if len(pending) == backend.batch_size or (i == len(args.images) - 1 and pending):
            try:
                failed += outputs.explain_batch(backend, pending)
            except ServerError as err:  # e.g. busy or timed out: these images, not the run
                failed += len(pending)
                for path, _ in pending:
                    tqdm.write(f"error: {path}: {err}", file=sys.stderr)
            pending = []
    bar.close()
    return failed


def _unique_stem(path: Path, used: set[str]) -> str:
    """``path``'s stem, with ``-2``, ``-3``… where an earlier image took it."""
    stem, n = path.stem, 2
    candidate = stem
    while candidate in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate)
    return candidate


@dataclass
class _Outputs:
    """Writes each explained image's PNG, NPZ and JSON into ``out``."""

    args: argparse.Namespace
    options: dict[str, Any]
    info: ModelInfo
    out: Path
    target: int | None = None  # class of the class-specific methods (None: top prediction)
    used: set[str] = field(default_factory=set)

    def explain_batch(self, backend: Backend, batch: list[tuple[Path, Any]]) -> int:
        """Explain one batch and write its files; returns how many images failed."""
        from tqdm import tqdm

        images = [d.image for _, d in batch]
        spec = methods.METHODS[self.args.method]
        if spec.needs_gradients:
            layers = spec.gradient_layers(self.options, self.info.layers)
            classed = backend.explain_classes(
                images,
                [[self.target]] * len(images),
                layers=layers,
                top_k=self.args.top_k,
                seen=True,
                full_gradients=True,  # written to the .npz
                negative=spec.negative(self.options),
            )
            results = [(c.explanation, c) for c in classed]
        else:
            explained = backend.explain(images, top_k=self.args.top_k, seen=True)
            results = [(r, None) for r in explained]
        failed = 0
        for (path, decoded), (res, classed_res) in zip(batch, results, strict=True):
            try:
                text = self.text_relevance(backend, classed_res)
                self.write(path, decoded, res, classed_res, text)
            except (VitvizError, OSError) as err:  # e.g. --patch beyond this grid, disk full
                failed += 1
                tqdm.write(f"error: {path}: {err}", file=sys.stderr)
        return failed

    def text_relevance(
        self, backend: Backend, classed: ClassExplanation | None
    ) -> list[list] | None:
        """A typed label's caption tokens and their relevance (``[[token, share], …]``,
        :func:`vitviz.models.clip_text.text_relevance`): a CLIP backend that offers it, a class
        map that is not "why not"; None otherwise."""
        negative = methods.METHODS[self.args.method].negative(self.options)
        offered = backend.offers("text_relevance")
        if classed is None or not offered or not self.info.label_set or negative:
            return None
        from PIL import Image

        image = Image.fromarray(classed.explanation.image)
        try:
            pieces = backend.text_relevance(
                image, classed.labels[0], seen=True, start_layer=self.args.text_start_layer
            )
        except OptionsError as err:  # a bad start layer, or a text tower it does not read
            if self.args.text_start_layer != 0:  # asked for: say why there is none
                raise OptionsError(f"--text-start-layer: {err}") from err
            return None
        return [[w, v] for w, v in pieces]

    def write(
        self, path: Path, decoded: Any, res: Any, classed: Any = None, text: list | None = None
    ) -> None:
        """Compute the method's map for one image and write its PNG, NPZ and JSON (with
        ``text``, the caption's token relevance, as ``text_relevance``)."""
        relevance = None if classed is None else classed.relevance[0]
        value_map = methods.compute_map(
            self.args.method, res.attention, res.layout, grads=relevance, **self.options
        )
        value_map = np.asarray(value_map)
        stem = _unique_stem(path, self.used)
        files = self.write_pictures(stem, path, value_map, res, classed)
        self.write_arrays(stem, value_map, res, classed)
        record = self.record(path, decoded, res, classed, files)
        if text is not None:
            record["text_relevance"] = text
        (self.out / f"{stem}.json").write_text(json.dumps(record, indent=2))

    def write_pictures(
        self, stem: str, path: Path, value_map: np.ndarray, res: Any, classed: Any
    ) -> dict[str, str]:
        """The PNG overlay (or, with ``--legend``, the figure), with ``--svg`` the SVG figure
        and with ``--values`` the map's values; returns the files written, by kind."""
        a = self.args
        png = render.overlay(
            res.image, value_map, alpha=a.alpha, colormap=a.colormap, smooth=a.smooth
        )
        if self.info.weights.warning:
            png = render.stamp_banner(png, "RANDOM WEIGHTS - NOT A TRAINED MODEL")
        settings = exports.make_settings(
            self.info,
            image=path.name,
            method=a.method,
            options=self.options,
            layout=res.layout,
            target=None if classed is None else (classed.classes[0], classed.labels[0]),
            colormap=a.colormap,
            alpha=a.alpha,
            smooth=a.smooth,
        )
        if a.legend:  # the same figure and caption as --svg and the page's exports
            png = exports.figure(value_map, res.image, settings)
        (self.out / f"{stem}.png").write_bytes(render.to_png(png))
        files = {"png": f"{stem}.png", "npz": f"{stem}.npz"}
        if a.svg:
            files["svg"] = f"{stem}.svg"
            svg = exports.figure_svg(value_map, res.image, settings)
            (self.out / files["svg"]).write_text(svg, encoding="utf-8")
        if a.values:
            files["values_npz"], files["values_csv"] = f"{stem}.values.npz", f"{stem}.values.csv"
            values_npz = exports.values_npz(value_map, res.image, settings)
            (self.out / files["values_npz"]).write_bytes(values_npz)
            values_csv = exports.values_csv(value_map, res.image, settings)
            (self.out / files["values_csv"]).write_text(values_csv, encoding="utf-8", newline="")
        return files

    def write_arrays(self, stem: str, value_map: np.ndarray, res: Any, classed: Any) -> None:
        """The ``.npz``: attention, map, the model's input, logits and gradients."""
        npz: dict[str, np.ndarray] = {
            "attention": res.attention.astype(np.float32),
            "map": value_map.astype(np.float32),
            "image": res.image,
        }
        if res.logits is not None:
            npz["logits"] = res.logits.astype(np.float32)
        grads = None if classed is None else classed.gradients[0]
        if grads is not None:
            npz["gradients"] = grads.astype(np.float32)
        np.savez_compressed(self.out / f"{stem}.npz", **npz)

    def record(
        self, path: Path, decoded: Any, res: Any, classed: Any, files: dict[str, str]
    ) -> dict[str, Any]:
        """The JSON record of one image: model, method, predictions, layout, statistics."""
        return {
            "image": str(path),
            "model": self.info.to_dict(),
            "method": self.args.method,
            "options": self.options,
            "explained_class": None
            if classed is None
            else {"index": classed.classes[0], "label": classed.labels[0]},
            "predictions": [p.to_dict() for p in res.predictions],
            "no_predictions_reason": None
            if res.predictions
            else "self-supervised backbone: this model has no classifier",
            "input_size": list(res.image.shape[:2]),
            "original_size": [decoded.original_size[1], decoded.original_size[0]],
            "image_notes": [str(note) for note in decoded.notes],
            "layout": res.layout.to_dict(),
            "head_statistics": {
                name: np.round(np.asarray(fn(res.attention, res.layout)), 4).tolist()
                for name, fn in methods.STATISTICS.items()
            },
            "files": files,
        }
