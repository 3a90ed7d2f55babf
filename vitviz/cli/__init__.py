"""Command line: ``python -m vitviz explain|compare|features|ablate|lens|norms|…``.

One module per command (:mod:`vitviz.cli.explain`, ``trust``, ``atlas``, ``compare``,
``features``, ``ablate``, ``lens``, ``norms``, ``models``, ``serve``), each with ``NAME``,
``HELP``, ``ORDER``, ``add_arguments(parser)`` and ``run(args) -> int``; :data:`COMMANDS` is
every module of this package that declares ``NAME``
(:func:`vitviz.discovery.modules_declaring`) and :func:`main` builds the parser from it.
Arguments several commands take are declared once, in :mod:`vitviz.cli.arguments`. A new
command is one new module here.
Exit status: 0 done, 1 some inputs failed, 2 bad arguments or unusable model, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from vitviz.cli.common import EXIT_INTERRUPTED, EXIT_USAGE
from vitviz.discovery import modules_declaring
from vitviz.engine.runtime import tune_allocator
from vitviz.errors import VitvizError


class Command(NamedTuple):
    """One subcommand: its one-line help, what it adds to its parser, and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def commands() -> dict[str, Command]:
    """Every command module of this package, in the order ``--help`` lists them."""
    found = modules_declaring(__name__, "NAME")
    return {m.NAME: Command(m.HELP, m.add_arguments, m.run) for m in found}


COMMANDS: dict[str, Command] = commands()


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m vitviz`` parser, one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m vitviz", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(subparsers.add_parser(name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m vitviz``; returns the exit status."""
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        return COMMANDS[args.command].run(args)
    except VitvizError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
