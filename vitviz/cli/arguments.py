"""Argument groups the commands share, each declared once here.

A command's module adds its own arguments and calls these for the shared ones, in the order
its ``--help`` lists them. The few wordings that differ between commands (``explain``'s
``--model`` also names the server's default, ``serve`` runs on ``auto, cpu, cuda``) are
parameters, not second declarations.
"""

from __future__ import annotations

import argparse
from typing import Any

from vitviz import methods
from vitviz.output import render

MODEL_HELP = "curated key or any timm ViT name (default: vit-b16)"
RANDOM_WEIGHTS_HELP = "architecture tests only"
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
CLASS_HELP = "class index or name (default: top)"


# ---------------------------------------------------------------------------- model and output


def add_model(
    parser: argparse.ArgumentParser, *, default: str | None = None, help: str = MODEL_HELP
) -> None:
    """``--model``: a curated key or a timm/hf/clip name."""
    parser.add_argument("--model", default=default, help=help)


def add_weights(parser: argparse.ArgumentParser, *, random_help: str = RANDOM_WEIGHTS_HELP) -> None:
    """``--weights FILE`` or ``--random-weights``, one or the other."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--weights", help="local weights file (.safetensors, or .pth/.bin)")
    src.add_argument("--random-weights", action="store_true", help=random_help)


def add_out(parser: argparse.ArgumentParser) -> None:
    """``--out``: the folder the command writes into."""
    parser.add_argument("--out", default="results", help="output folder (default: results)")


def add_device(parser: argparse.ArgumentParser, *, help: str = DEVICE_HELP) -> None:
    """``--device``: where the model runs."""
    parser.add_argument("--device", default="auto", help=help)


def add_precision(parser: argparse.ArgumentParser) -> None:
    """``--precision``: the model's float type."""
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])


def add_labels(parser: argparse.ArgumentParser) -> None:
    """``--labels`` and ``--template``: the classes a CLIP model scores (zero-shot)."""
    parser.add_argument(
        "--labels",
        help='CLIP models: the classes to score, "cat,dog,teapot" or @FILE (one per line); '
        "at most 64, each up to 80 characters",
    )
    parser.add_argument(
        "--template",
        help='CLIP models: the prompt each label goes into at {} (default "a photo of a {}.")',
    )


def add_batch_size(
    parser: argparse.ArgumentParser, default: int, *, described: bool = True
) -> None:
    """``--batch-size``: images per forward pass."""
    help_text = f"images per forward (default {default})" if described else None
    parser.add_argument("--batch-size", type=int, default=default, help=help_text)


def add_model_arguments(parser: argparse.ArgumentParser, *, batch_size: int | None = None) -> None:
    """The model, its weights, where it runs and the output folder (local commands)."""
    add_model(parser)
    add_weights(parser)
    add_out(parser)
    add_device(parser)
    add_precision(parser)
    add_labels(parser)
    if batch_size is not None:
        add_batch_size(parser, batch_size)


# ------------------------------------------------------------------------------ maps and pictures


def method_options() -> dict[str, tuple[methods.Option, list[str]]]:
    """Every option of the registered methods (first definition) and the methods taking it."""
    out: dict[str, tuple[methods.Option, list[str]]] = {}
    for name, method in methods.METHODS.items():
        for option in method.options:
            out.setdefault(option.name, (option, []))[1].append(name)
    return out


def method_choices() -> list[str]:
    """Every registered method, in display order (``--method``'s and ``--method-b``'s)."""
    return list(methods.of_kind())


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method`` and one flag per method option, all from the registry."""
    listing = "; ".join(f"{n}: {m.title}" for n, m in methods.of_kind().items())
    parser.add_argument(
        "--method",
        default=methods.DEFAULT_METHOD,
        choices=method_choices(),
        help=f"map ({listing})",
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


def chosen_method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``args.method`` given on the command line, checked and completed with
    the method's defaults (:func:`vitviz.methods.resolve_options`)."""
    names = method_options()
    opts = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    return methods.resolve_options(args.method, opts)


def add_class(parser: argparse.ArgumentParser, *, help: str = CLASS_HELP) -> None:
    """``--class``: the class a class-specific map explains (``args.target_class``)."""
    parser.add_argument("--class", dest="target_class", help=help)


def add_colormap(parser: argparse.ArgumentParser, *, checked_by_argparse: bool = True) -> None:
    """``--colormap`` (default inferno); with ``checked_by_argparse=False`` the command checks
    the name itself (:func:`vitviz.output.render.colormap_lut`)."""
    choices = list(render.COLORMAPS) if checked_by_argparse else None
    parser.add_argument("--colormap", default="inferno", choices=choices)


def add_alpha(parser: argparse.ArgumentParser) -> None:
    """``--alpha``: the overlay's opacity."""
    parser.add_argument("--alpha", type=float, default=0.6, help="overlay opacity in [0, 1]")


# ------------------------------------------------------------------------------------- server


def add_server_client(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--token``: run the command on a vitviz server."""
    parser.add_argument(
        "--server", help="explain on a vitviz server (URL) instead of in this process"
    )
    parser.add_argument("--token", help="the server's bearer token (default: $VITVIZ_TOKEN)")


# ------------------------------------------------------------------------------ research views


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json``: print the result as JSON on stdout instead of a table."""
    parser.add_argument(
        "--json", action="store_true", help="print the result and the files written as JSON"
    )


def add_layer(parser: argparse.ArgumentParser, *, help: str) -> None:
    """``--layer``: one layer (from 0) a command's picture shows (not a map method's option)."""
    parser.add_argument("--layer", type=int, help=help)


def add_research_model(parser: argparse.ArgumentParser) -> None:
    """The model of ``ablate``, ``lens`` and ``norms``: in this process (``--model``,
    ``--weights``/``--random-weights``, ``--device``, ``--precision``) or on ``--server``,
    the ``--out`` folder and ``--json``."""
    add_model(parser, help="curated key or any timm ViT name (default: vit-b16, or the server's)")
    add_weights(parser)
    add_out(parser)
    add_device(parser)
    add_precision(parser)
    add_server_client(parser)
    add_json(parser)
