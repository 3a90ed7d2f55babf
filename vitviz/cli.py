"""Command line: ``python -m vitviz explain|models|serve``.

``explain`` writes, per image, a PNG overlay of the chosen method, a JSON file (predictions,
model, weights source, method and options, input size, token layout) and an ``.npz`` with the
full attention tensor ``attention`` ``[L, H, N, N]`` and the method's raw ``map`` ``[gh, gw]``;
with ``--legend`` the PNG gets a colour scale and a caption of the settings, ``--svg`` adds the
same figure as SVG and ``--values`` the map's values with every setting as ``.values.npz`` and
``.values.csv`` (:mod:`vitviz.exports`).
Exit status: 0 all images done, 1 some images failed, 2 bad arguments or unusable model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitviz import exports, methods, render
from vitviz.classes import resolve_class
from vitviz.cli_text import banner
from vitviz.errors import OptionsError, ServerError, VitvizError
from vitviz.results import ModelInfo
from vitviz.runtime import tune_allocator

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def method_options() -> dict[str, tuple[methods.Option, list[str]]]:
    """Every option of the registered methods (first definition) and the methods taking it."""
    out: dict[str, tuple[methods.Option, list[str]]] = {}
    for name, method in methods.METHODS.items():
        for option in method.options:
            out.setdefault(option.name, (option, []))[1].append(name)
    return out


def _add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method`` and one flag per method option, all from the registry."""
    listing = "; ".join(f"{n}: {m.title}" for n, m in methods.METHODS.items())
    parser.add_argument(
        "--method", default="rollout", choices=list(methods.METHODS), help=f"map ({listing})"
    )
    for option, users in method_options().values():
        help_text = f"{option.help} ({', '.join(users)})"
        if option.kind == "flag":
            parser.add_argument(option.flag, action="store_true", default=None, help=help_text)
        elif option.kind == "choice":
            parser.add_argument(option.flag, choices=list(option.choices), help=help_text)
        else:
            kind = float if option.kind == "number" else int
            parser.add_argument(option.flag, type=kind, help=help_text)


def _add_label_arguments(p: argparse.ArgumentParser) -> None:
    """``--labels`` and ``--template``: the classes a CLIP model scores (zero-shot)."""
    p.add_argument(
        "--labels",
        help='CLIP models: the classes to score, "cat,dog,teapot" or @FILE (one per line); '
        "at most 64, each up to 80 characters",
    )
    p.add_argument(
        "--template",
        help='CLIP models: the prompt each label goes into at {} (default "a photo of a {}.")',
    )


def _add_model_arguments(p: argparse.ArgumentParser, *, batch_size: int | None = None) -> None:
    """The model, its weights, where it runs and the output folder (local commands)."""
    p.add_argument("--model", help="curated key or any timm ViT name (default: vit-b16)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="local weights file (.safetensors, or .pth/.bin)")
    src.add_argument("--random-weights", action="store_true", help="architecture tests only")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    _add_label_arguments(p)
    if batch_size is not None:
        p.add_argument(
            "--batch-size",
            type=int,
            default=batch_size,
            help=f"images per forward (default {batch_size})",
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vitviz", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the curated models and where their weights come from")

    e = sub.add_parser("explain", help="explain images: overlay PNG, JSON and attention .npz")
    e.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    e.add_argument(
        "--model", help="curated key or any timm ViT name (default: vit-b16, or the server's)"
    )
    src = e.add_mutually_exclusive_group()
    src.add_argument("--weights", help="local weights file (.safetensors, or .pth/.bin)")
    src.add_argument(
        "--random-weights",
        action="store_true",
        help="no trained weights: for architecture tests only, outputs say so",
    )
    e.add_argument("--out", default="results", help="output folder (default: results)")
    _add_method_arguments(e)
    class_methods = ", ".join(n for n, m in methods.METHODS.items() if m.needs_gradients)
    e.add_argument(
        "--class",
        dest="target_class",
        help=f"{class_methods}: class index or name (default: top prediction)",
    )
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    _add_label_arguments(e)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--keep-aspect", action="store_true", help="non-square input, no crop")
    e.add_argument("--colormap", default="inferno", choices=list(render.COLORMAPS))
    e.add_argument("--alpha", type=float, default=0.6, help="overlay opacity in [0, 1]")
    e.add_argument("--smooth", action="store_true", help="smooth instead of blocky upsampling")
    e.add_argument(
        "--legend", action="store_true", help="add the colour scale and the settings under the PNG"
    )
    e.add_argument(
        "--svg", action="store_true", help="also write the figure as SVG (legend and caption)"
    )
    e.add_argument(
        "--values",
        action="store_true",
        help="also write the map's values with every setting (NAME.values.npz, NAME.values.csv)",
    )
    e.add_argument("--top-k", type=int, default=5)
    e.add_argument("--server", help="explain on a vitviz server (URL) instead of in this process")
    e.add_argument("--token", help="the server's bearer token (default: $VITVIZ_TOKEN)")

    from vitviz import cli_trust

    t = sub.add_parser(
        "trust", help="how far to trust a map: deletion/insertion curves, occlusion (JSON)"
    )
    cli_trust.add_arguments(t)
    _add_model_arguments(t, batch_size=16)
    _add_method_arguments(t)
    t.add_argument("--class", dest="target_class", help="class index or name (default: top)")

    from vitviz import cli_atlas

    a = sub.add_parser(
        "atlas", help="per-head statistics over a folder of images: JSON, CSV and HTML report"
    )
    cli_atlas.add_arguments(a)
    _add_model_arguments(a, batch_size=8)

    from vitviz import cli_compare, cli_features

    c = sub.add_parser(
        "compare", help="two maps side by side: two models, two images or two methods"
    )
    cli_compare.add_arguments(c)
    _add_model_arguments(c)
    _add_method_arguments(c)
    c.add_argument("--class", dest="target_class", help="class index or name (default: top)")

    f = sub.add_parser(
        "features", help="last-layer patch features: PCA picture and patch similarity"
    )
    cli_features.add_arguments(f)
    _add_model_arguments(f)

    s = sub.add_parser("serve", help="serve a model over HTTP (Ray Serve; see README)")
    s.add_argument("--model", default="vit-b16", help="curated key or any timm ViT name")
    ssrc = s.add_mutually_exclusive_group()
    ssrc.add_argument("--weights", help="local weights file (.safetensors, or .pth/.bin)")
    ssrc.add_argument("--random-weights", action="store_true", help="architecture tests only")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", default="auto", help="auto, cpu, cuda")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    _add_label_arguments(s)
    s.add_argument("--replicas", help="replicas: a number, or auto (default: one per GPU)")
    s.add_argument("--max-batch-size", type=int, default=16)
    s.add_argument("--batch-wait-ms", type=float, default=10.0)
    s.add_argument("--queue-limit", type=int, default=64, help="requests per replica, then 503")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request, then 504")
    s.add_argument("--max-upload-mb", type=float, default=20.0)
    s.add_argument(
        "--upload-timeout", type=float, default=15.0, help="seconds to send a body, then 408"
    )
    s.add_argument("--max-uploads", type=int, default=128, help="bodies received at once")
    s.add_argument("--max-answer-mb", type=float, default=256.0, help="largest answer, else 400")
    s.add_argument("--address", help="join a running Ray cluster (e.g. auto) instead of a new one")
    return p


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    names = method_options()
    opts = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    return methods.resolve_options(args.method, opts)


def cmd_models() -> int:
    """Print the curated models and where each one's weights would come from."""
    from vitviz.models import CURATED, weights_plan

    for spec in CURATED.values():
        print(f"{spec.key:20s} {spec.title}")
        library = {"hf": "transformers", "clip": "open_clip"}.get(spec.family, "timm")
        print(f"{'':20s}   {library}: {spec.timm_name.removeprefix(spec.family + ':')}")
        print(f"{'':20s}   {spec.description}")
        print(f"{'':20s}   weights: {weights_plan(spec.key)}")
    print("Any other global-attention timm ViT name works too (e.g. vit_large_patch16_224).")
    print("So does hf:<hub id or folder>: a Hugging Face ViT, DeiT, BEiT or DINOv2 (transformers).")
    return EXIT_OK


def _output_folder(name: str) -> Path:
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


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 2
    candidate = stem
    while candidate in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate)
    return candidate


def _check_before_ray(args: argparse.Namespace) -> None:
    """Model name, weights file and limits, checked in seconds before Ray starts."""
    from vitviz.models import read_state_dict, resolve_name

    for name in ("max_batch_size", "queue_limit", "max_uploads"):
        if getattr(args, name) < 1:
            raise OptionsError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("timeout", "upload_timeout", "max_upload_mb", "max_answer_mb"):
        if not getattr(args, name) > 0:
            raise OptionsError(f"--{name.replace('_', '-')} must be positive")
    from vitviz.cli_model import typed_labels
    from vitviz.models import model_family

    family, ref = model_family(args.model)
    if family == "timm":
        resolve_name(args.model)
    elif family == "clip":  # unknown architectures and refused towers, before Ray
        from vitviz.models.clip import model_config

        model_config(ref)
    args.labels, args.template = typed_labels(args, args.model)  # checked, before Ray
    if args.weights:
        read_state_dict(args.weights)  # unreadable, unsafe or empty files fail here


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP server until interrupted."""
    try:
        from vitviz.server.serve import run_server
        from vitviz.server.service import LOOPBACK_HOSTS
    except ImportError as err:
        raise OptionsError(
            f"serving needs Ray Serve ({err.name} is missing): "
            "pip install -r requirements-serve.txt"
        ) from None
    _check_before_ray(args)
    if args.host not in LOOPBACK_HOSTS and not os.environ.get("VITVIZ_TOKEN"):
        print(
            f"warning: serving on {args.host} without VITVIZ_TOKEN: anyone who can reach this "
            "port can use the server",
            file=sys.stderr,
        )
    settings: dict[str, Any] = {
        "model": args.model,
        "weights": args.weights,
        "random_weights": args.random_weights,
        "device": args.device,
        "precision": args.precision,
        "labels": args.labels,
        "template": args.template,
        "max_batch_size": args.max_batch_size,
        "batch_wait_s": args.batch_wait_ms / 1000,
        "queue_limit": args.queue_limit,
        "timeout_s": args.timeout,
        "max_upload_bytes": int(args.max_upload_mb * 2**20),
        "upload_timeout_s": args.upload_timeout,
        "max_uploads": args.max_uploads,
        "max_answer_bytes": int(args.max_answer_mb * 2**20),
        # a token here means every replica must have one (joined nodes read their own env)
        "require_token": bool(os.environ.get("VITVIZ_TOKEN")),
    }
    if args.replicas is not None:
        settings["replicas"] = args.replicas if args.replicas == "auto" else int(args.replicas)
    try:
        run_server(settings, host=args.host, port=args.port, address=args.address)
    except (VitvizError, KeyboardInterrupt):
        raise
    except Exception as err:  # Ray's own start-up failures: one line, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ServerError(
            f"the server could not start ({type(err).__name__}: {first}); "
            "see the messages above, or the logs under /tmp/ray/session_latest/logs"
        ) from None
    return EXIT_OK


def _backend(args: argparse.Namespace) -> Any:
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
    from vitviz.cli_model import local_backend

    return local_backend(
        args,
        keep_aspect=args.keep_aspect,
        batch_size=args.batch_size,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain every image; report each failure on one line and go on with the rest."""
    from tqdm import tqdm

    from vitviz.images import load_image_file

    options = _method_options(args)
    if not 0.0 <= args.alpha <= 1.0:
        raise OptionsError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.top_k < 1:
        raise OptionsError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise OptionsError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = _output_folder(args.out)
    backend = _backend(args)
    info = backend.info()
    methods.check_options(options, info.layers, info.heads)
    spec = methods.METHODS[args.method]
    target = None
    if spec.needs_gradients:
        if not info.classes:  # a backbone: the one class-free target, ‖readout feature‖
            from vitviz.gradients import FEATURE_NORM

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
        elif args.target_class is not None:
            target = resolve_class(args.target_class, backend.labels or [])
    elif args.target_class is not None:
        raise OptionsError(
            "--class applies to the class-specific methods ("
            + ", ".join(n for n, m in methods.METHODS.items() if m.needs_gradients)
            + ")"
        )
    warning = info.weights.warning
    if warning:
        print(banner(warning), file=sys.stderr)
    if info.weights.note:
        print(f"note: {info.weights.note}", file=sys.stderr)
    failed, outputs = 0, _Outputs(args, options, info, out, target)
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
    done = len(args.images) - failed
    print(f"{done} of {len(args.images)} images explained into {out}/", file=sys.stderr)
    if warning:
        print(banner(warning), file=sys.stderr)
    return EXIT_OK if failed == 0 else EXIT_SOME_FAILED


@dataclass
class _Outputs:
    """Writes each explained image's PNG, NPZ and JSON into ``out``."""

    args: argparse.Namespace
    options: dict[str, Any]
    info: ModelInfo
    out: Path
    target: int | None = None  # class of the class-specific methods (None: top prediction)
    used: set[str] = field(default_factory=set)

    def explain_batch(self, backend: Any, batch: list[tuple[Path, Any]]) -> int:
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

    def text_relevance(self, backend: Any, classed: Any) -> list[list] | None:
        """A typed label's caption tokens and their relevance (``[[token, share], …]``,
        :func:`vitviz.models.clip_text.text_relevance`): CLIP in this process, a class map
        that is not "why not"; None otherwise."""
        compute = getattr(backend, "text_relevance", None)  # a server has no text tower here
        negative = methods.METHODS[self.args.method].negative(self.options)
        if classed is None or compute is None or not self.info.label_set or negative:
            return None
        from PIL import Image

        image = Image.fromarray(classed.explanation.image)
        try:
            pieces = compute(image, classed.labels[0], seen=True)
        except OptionsError:  # a text tower it does not read (e.g. a Hugging Face tokenizer)
            return None
        return [[w, v] for w, v in pieces]

    def write(
        self, path: Path, decoded: Any, res: Any, classed: Any = None, text: list | None = None
    ) -> None:
        """Compute the method's map for one image and write its PNG, NPZ and JSON (with
        ``text``, the caption's token relevance, as ``text_relevance``)."""
        a = self.args
        grads = None if classed is None else classed.gradients[0]
        relevance = None if classed is None else classed.relevance[0]
        value_map = methods.compute_map(
            a.method, res.attention, res.layout, grads=relevance, **self.options
        )
        value_map = np.asarray(value_map)
        stem = _unique_stem(path, self.used)
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
        npz: dict[str, np.ndarray] = {
            "attention": res.attention.astype(np.float32),
            "map": value_map.astype(np.float32),
            "image": res.image,
        }
        if res.logits is not None:
            npz["logits"] = res.logits.astype(np.float32)
        if grads is not None:
            npz["gradients"] = grads.astype(np.float32)
        np.savez_compressed(self.out / f"{stem}.npz", **npz)
        record = {
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
            "image_notes": list(decoded.notes),
            "layout": res.layout.to_dict(),
            "head_statistics": {
                name: np.round(np.asarray(fn(res.attention, res.layout)), 4).tolist()
                for name, fn in methods.STATISTICS.items()
            },
            "files": files,
        }
        if text is not None:
            record["text_relevance"] = text
        (self.out / f"{stem}.json").write_text(json.dumps(record, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m vitviz``; returns the exit status."""
    args = _parser().parse_args(argv)
    tune_allocator()
    try:
        if args.command == "models":
            return cmd_models()
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "trust":
            from vitviz import cli_trust

            return cli_trust.run(args, _method_options(args), _output_folder(args.out))
        if args.command == "atlas":
            from vitviz import cli_atlas

            return cli_atlas.run(args, _output_folder(args.out))
        if args.command == "compare":
            from vitviz import cli_compare

            return cli_compare.run(args, _method_options(args), _output_folder(args.out))
        if args.command == "features":
            from vitviz import cli_features

            return cli_features.run(args, _output_folder(args.out))
        return cmd_explain(args)
    except VitvizError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
