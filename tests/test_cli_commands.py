"""The command line's structure: commands come from one table, shared arguments are declared
once, and no name shadows the page's message function ``t``."""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import vitviz.cli as cli
from vitviz.cli import COMMANDS, Command, build_parser, main
from vitviz.errors import OptionsError

CLI = Path(cli.__file__).resolve().parent
ARGUMENTS = CLI / "arguments.py"
# features' own --patch (the patch whose similarity it maps) and --threshold (the background cut,
# in standard deviations) are other options than the method options of the same name (a query
# patch, a mask's mass share); features takes no method options
HOMONYMS = {"--patch": {"features.py"}, "--threshold": {"features.py"}}


def _toy(seen: list[argparse.Namespace]) -> Command:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("word")
        parser.add_argument("--times", type=int, default=1)

    def run(args: argparse.Namespace) -> int:
        seen.append(args)
        if args.times < 1:
            raise OptionsError("--times must be at least 1")
        print(" ".join([args.word] * args.times))
        return 3

    return Command("say a word", add_arguments, run)


def test_a_command_registered_in_the_table_runs_through_main(monkeypatch, capsys):
    seen: list[argparse.Namespace] = []
    monkeypatch.setitem(COMMANDS, "toy", _toy(seen))
    assert main(["toy", "hello", "--times", "2"]) == 3  # run's status is main's
    assert capsys.readouterr().out == "hello hello\n"
    assert seen[0].command == "toy" and seen[0].word == "hello"
    # its errors are reported as every command's are: one line, exit status 2
    assert main(["toy", "hello", "--times", "0"]) == 2
    assert capsys.readouterr().err == "error: --times must be at least 1\n"
    # and it is listed in the help
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "say a word" in capsys.readouterr().out


def test_every_command_has_help(capsys):
    assert {"models", "explain", "trust", "atlas", "compare", "features", "serve"} <= set(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m vitviz {name}")


def _declarations(monkeypatch) -> dict[str, dict[tuple[str, int], set[str | None]]]:
    """Each option string of the whole parser: the source lines declaring it, with their helps."""
    where: dict[str, dict[tuple[str, int], set[str | None]]] = defaultdict(dict)
    original = argparse._ActionsContainer.add_argument

    def add_argument(self, *names, **kwargs):
        caller = sys._getframe(1)
        path = Path(caller.f_code.co_filename).resolve()
        if path.is_relative_to(CLI):
            site = (str(path.relative_to(CLI)), caller.f_lineno)
            for name in names:
                if name.startswith("-"):
                    where[name].setdefault(site, set()).add(kwargs.get("help"))
        return original(self, *names, **kwargs)

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", add_argument)
    build_parser()
    return where


def test_no_option_is_declared_twice(monkeypatch):
    where = _declarations(monkeypatch)
    assert {"--model", "--weights", "--device", "--precision", "--out", "--class"} <= set(where)
    twice = {}
    for name, sites in where.items():
        if len(sites) == 1:
            continue
        own = {file for file, _ in sites if file != "arguments.py"}
        helps = [h for hs in sites.values() for h in hs]
        if own <= HOMONYMS.get(name, set()) and len(set(helps)) == len(helps):
            continue  # a different option that happens to share the name
        twice[name] = sorted(sites)
    assert not twice, f"declared at more than one place: {twice}"


def test_options_several_commands_take_come_from_the_shared_groups():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    users: dict[str, list[str]] = defaultdict(list)
    for name, command_parser in sub.choices.items():
        options = [o for a in command_parser._actions for o in a.option_strings]
        assert len(options) == len(set(options)), name
        for option in options:
            users[option].append(name)
    shared = {o for o, names in users.items() if len(names) > 1} - {"-h", "--help"}
    assert {"--model", "--weights", "--random-weights", "--device", "--labels"} <= shared
    source = ARGUMENTS.read_text()
    for option in shared:  # every one of them is declared in arguments.py (by name or registry)
        assert f'"{option}"' in source or option in _method_flags(), option


def _method_flags() -> set[str]:
    from vitviz.cli.arguments import method_options

    return {"--method"} | {option.flag for option, _ in method_options().values()}


def test_no_name_in_the_cli_shadows_the_message_function_t():
    for path in CLI.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assert node.id != "t", f"{path.name}:{node.lineno}"
            if isinstance(node, ast.arg):
                assert node.arg != "t", f"{path.name}:{node.lineno}"
