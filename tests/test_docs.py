"""The README and docs/ stay true to the code: links lead somewhere, the files they name exist,
and every ``python -m vitviz CMD --flag`` and ``python bench/X.py --flag`` they show is a real
command and a real option."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w/.-])((?:bench|tests|vitviz|assets|docs)/[\w./-]*\w)")
VITVIZ = re.compile(r"python -m vitviz ([a-z][a-z-]*)((?:[^\n`|]*))")
BENCH = re.compile(r"python (bench/\w+\.py)((?:[^\n`|]*))")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def test_every_docs_page_is_linked_from_the_readme():
    readme = _text(ROOT / "README.md")
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_named_files_exist(page):
    text = _text(page)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link to {target} leads nowhere"
    for named in PATH.findall(text):
        if any(ch in named for ch in "*{<"):
            continue  # a pattern (vitviz/ui/views/*.py), not a file
        assert (ROOT / named).exists() or (ROOT / named.rstrip(".")).exists(), (
            f"{page.name} names {named}, which does not exist"
        )


def _help(command: str) -> str:
    from vitviz.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([command, "--help"])
    return out.getvalue()


def test_every_command_and_option_shown_exists():
    shown: dict[str, set[str]] = {}
    for page in PAGES:
        for command, rest in VITVIZ.findall(_text(page)):
            shown.setdefault(command, set()).update(FLAG.findall(rest))
    assert "explain" in shown and "serve" in shown
    for command, flags in shown.items():
        text = _help(command)
        missing = sorted(f for f in flags if f not in text)
        assert not missing, f"`python -m vitviz {command}` has no {missing}"


def test_every_bench_script_and_option_shown_exists():
    seen = 0
    for page in PAGES:
        for script, rest in BENCH.findall(_text(page)):
            source = (ROOT / script).read_text(encoding="utf-8")
            for flag in FLAG.findall(rest):
                assert f'"{flag}"' in source, f"{page.name}: {script} has no {flag}"
            seen += 1
    assert seen >= 8
