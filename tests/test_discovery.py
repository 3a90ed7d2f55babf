"""A command or a view is one new file: the package's modules are the registry."""

from __future__ import annotations

import argparse
import sys

import pytest

import vitviz.cli
import vitviz.ui.views
from vitviz.discovery import modules_declaring

TOY_COMMAND = """
NAME = "toy"
HELP = "say a word (a toy command from one file)"
ORDER = 15

def add_arguments(parser):
    parser.add_argument("word")

def run(args):
    print(args.word.upper())
    return 4
"""

TOY_VIEW = """
import streamlit as st

ID = "Toy view"
ORDER = 25

def render(ctx):
    st.write("toy view")
"""


@pytest.fixture
def extra_folder(tmp_path, monkeypatch):
    """A folder added to a package's path, and the modules imported from it removed after."""

    def add(package, name: str, text: str) -> None:
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
        monkeypatch.delitem(sys.modules, f"{package.__name__}.{name}", raising=False)

    yield add
    for key in [k for k in sys.modules if k.endswith((".toy_command", ".toy_view"))]:
        del sys.modules[key]


def test_a_command_file_is_a_command_in_its_order(extra_folder, capsys):
    extra_folder(vitviz.cli, "toy_command", TOY_COMMAND)
    commands = vitviz.cli.commands()
    assert list(commands)[:3] == ["models", "toy", "explain"]  # ORDER 15: between 10 and 20
    assert commands["toy"].help == "say a word (a toy command from one file)"
    assert commands["toy"].run(argparse.Namespace(word="hi")) == 4
    assert capsys.readouterr().out == "HI\n"
    # helpers without NAME (arguments, common) are not commands
    assert not {"arguments", "common"} & set(commands)


def test_main_runs_a_command_file(extra_folder, monkeypatch, capsys):
    extra_folder(vitviz.cli, "toy_command", TOY_COMMAND)
    monkeypatch.setattr(vitviz.cli, "COMMANDS", vitviz.cli.commands())
    assert vitviz.cli.main(["toy", "word"]) == 4
    assert capsys.readouterr().out == "WORD\n"


def test_a_view_file_is_a_view_in_its_order(extra_folder):
    extra_folder(vitviz.ui.views, "toy_view", TOY_VIEW)
    found = [m.ID for m in modules_declaring("vitviz.ui.views", "ID")]
    assert found.index("Toy view") == found.index("Heads") + 1  # ORDER 25: after Heads' 20
    assert set(vitviz.ui.views.VIEWS) < set(found)


def test_order_then_module_name_and_no_private_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "b.py").write_text("NAME = 'b'\n")
    (pkg / "a.py").write_text("NAME = 'a'\n")
    (pkg / "first.py").write_text("NAME = 'first'\nORDER = 1\n")
    (pkg / "_hidden.py").write_text("NAME = 'hidden'\n")
    (pkg / "plain.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [m.NAME for m in modules_declaring("toypkg", "NAME")] == ["first", "a", "b"]
