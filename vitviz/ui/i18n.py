"""The page's words in every language it speaks: one message catalog per language.

A language is one file, ``vitviz/ui/locales/<tag>.toml`` named by its BCP 47 tag (``en``,
``zh-Hant``): its ``[locale]`` table gives the name the language switch shows and, where the
language names classes, its class-name tables (files under ``assets/``, see
:func:`class_name`); every other table holds the page's strings. Adding a language is adding one
such file (and, if it names classes, its tables); no code names a language.
:func:`t` looks a key up in the session's language and fills in ``{named}`` values
(:meth:`str.format`). The language follows the browser (``st.context.locale``, best match in
:func:`from_locale`) until the person picks one; a picked language is kept in the URL
(``?lang=zh-Hant``), so a shared link opens in it. Engine errors are worded by their code
(:func:`error_text`) and the decoder's notes by theirs (:func:`decoder_note`), never by their
English text.

Tests check that all catalogs have the same keys and placeholders and that every key is used.
"""

from __future__ import annotations

import csv
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitviz.inputs.assets import ASSETS

if TYPE_CHECKING:
    from vitviz.inputs.images import Note

LOCALES = Path(__file__).resolve().parent / "locales"
DEFAULT = "en"
META = "locale"  # the table of a catalog file that describes its language


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        else:
            out[name] = str(value)
    return out


@cache
def _load(folder: Path, lang: str) -> dict[str, Any]:
    with open(folder / f"{lang}.toml", "rb") as f:
        return tomllib.load(f)


@cache
def _languages(folder: Path) -> dict[str, str]:
    """The languages with a catalog in ``folder``, the default first, then by tag."""
    tags = sorted((p.stem for p in folder.glob("*.toml")), key=lambda t: (t != DEFAULT, t))
    return {tag: str(_load(folder, tag)[META]["name"]) for tag in tags}


def languages() -> dict[str, str]:
    """Every language the page speaks: its tag → its name in the language switch."""
    return dict(_languages(LOCALES))


def locale_info(lang: str) -> dict[str, Any]:
    """A language's ``[locale]`` table (its name, its class-name tables …)."""
    return _load(LOCALES, lang)[META]


@cache
def _catalog(folder: Path, lang: str) -> dict[str, str]:
    return _flatten({k: v for k, v in _load(folder, lang).items() if k != META})


def catalog(lang: str) -> dict[str, str]:
    """All messages of one language, by dotted key."""
    return _catalog(LOCALES, lang)


def _subtags(tag: str | None) -> list[str]:
    return [s for s in re.split(r"[-_]", (tag or "").lower()) if s]


def from_locale(locale: str | None) -> str:
    """The page language that best matches a browser locale: same primary language, then the
    most subtags in common, then the first in :func:`languages` ("zh-TW", "zh-Hant-HK" →
    zh-Hant); the default language when none speaks that primary language."""
    wanted = _subtags(locale)
    best, score = DEFAULT, 0
    for tag in _languages(LOCALES):
        have = _subtags(tag)
        if not wanted or have[0] != wanted[0]:
            continue
        common = len(set(have) & set(wanted)) + (have == wanted)
        if common > score:
            best, score = tag, common
    return best


def current() -> str:
    """This session's language (English outside a Streamlit session)."""
    try:
        import streamlit as st

        lang = st.session_state.get("lang")
    except Exception:
        return DEFAULT
    return lang if lang in _languages(LOCALES) else DEFAULT


def t(key: str, lang: str | None = None, /, **values: Any) -> str:
    """The message ``key`` in ``lang`` (default: this session's), with ``values`` filled in.

    Raises:
        KeyError: an unknown key (a programming error the catalog tests catch).
    """
    text = catalog(lang or current())[key]
    return text.format(**values)


def raw(key: str, /) -> str:
    """The message ``key`` as written (a template another program fills in, e.g. plotly's
    ``%{customdata[0]}``)."""
    return catalog(current())[key]


def fill(key: str, /, **values: Any) -> str:
    """The message ``key`` with only ``values`` filled in; other ``{names}`` stay for the
    browser to fill (the canvas's ``{layer}`` and ``{head}``)."""
    text = catalog(current())[key]
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def interpolation(name: str) -> str:
    """A resize filter's name in words (``bicubic`` → 雙三次 in zh-Hant)."""
    key = f"interpolation.{name}"
    return t(key) if has(key) else name


def has(key: str) -> bool:
    """Whether the catalog has ``key`` (registry entries from plugins may have none)."""
    return key in catalog(DEFAULT)


@cache
def _class_tables(folder: Path, lang: str) -> tuple[dict[tuple[int, str], str], dict[str, str]]:
    """A language's class names by (index, English label) of each known label list, and by
    English label alone where that label is unique (ImageNet has two "crane": the bird and the
    machine).

    The tables are the language's own: its ``[locale]`` table lists them (``class_files``,
    tab-separated files under ``assets/`` with ``index``, ``english`` and a column of names,
    ``class_column``, by default the language's tag)."""
    info = _load(folder, lang)[META]
    column = info.get("class_column", lang)
    by_index: dict[tuple[int, str], str] = {}
    by_label: dict[str, list[str]] = {}
    for name in info.get("class_files", ()):
        path = ASSETS / name
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                by_index[(int(row["index"]), row["english"])] = row[column]
                by_label.setdefault(row["english"], []).append(row[column])
    unique = {label: names[0] for label, names in by_label.items() if len(names) == 1}
    return by_index, unique


def class_name(label: str, lang: str | None = None, index: int | None = None) -> str | None:
    """A class's name in the language (None when the language lists no class names or not
    this one): by its index when the label there is a known list's (ImageNet-1k, the demo
    model's), else by a label no two classes share."""
    by_index, unique = _class_tables(LOCALES, lang or current())
    if index is not None and (int(index), label) in by_index:
        return by_index[(int(index), label)]
    return unique.get(label)


def class_label(
    label: str,
    index: int | None = None,
    *,
    short: bool = True,
    both: bool = False,
    lang: str | None = None,
) -> str:
    """A class name as the page shows it (not escaped: pass it through
    :func:`vitviz.ui.text.plain` for Markdown): the language's name for it when it has one
    (``both``: followed by the English first name, for searching), else the English (first)
    name."""
    from vitviz.inputs.classes import short_label

    english = short_label(label) if short else label
    named = class_name(label, lang, index)
    if named is None:
        return english
    return f"{named} · {short_label(label)}" if both else named


def error_text(err: BaseException, lang: str | None = None) -> str:
    """An engine error in the page's language: the catalog entry ``error_code.<code>`` of its
    :attr:`~vitviz.errors.VitvizError.code` (``other`` for an exception that is no
    :class:`~vitviz.errors.VitvizError`), filled in with its fields and ``{detail}``, its
    English message made safe for Markdown.

    An error whose code has no entry in the language's catalog (say a plugin's) falls back to
    its English message.
    """
    from vitviz.errors import VitvizError
    from vitviz.ui.text import plain

    lang = lang or current()
    code = err.code if isinstance(err, VitvizError) else "other"
    fields = err.fields if isinstance(err, VitvizError) else {}
    template = catalog(lang).get(f"error_code.{code}")
    if template is None:
        return plain(err)
    values = {name: _field(name, value, lang) for name, value in fields.items()}
    return template.format(**values, detail=plain(err))


_BYTES = frozenset({"needed", "available", "total"})  # error fields that count bytes


def _field(name: str, value: Any, lang: str) -> str:
    """One field of an error in the page's words: byte counts as sizes, seconds whole, the
    kind of work the memory budget refused (``what``) in words, anything else as written."""
    from vitviz.memory.cost import size_text
    from vitviz.ui.text import plain

    if name in _BYTES:
        return size_text(value)
    if name == "waited":
        return f"{value:.0f}"
    if name == "what":
        what = str(value).replace(" ", "_")
        return t(f"memory.{what}" if has(f"memory.{what}") else "memory.work", lang)
    return plain(value)


def decoder_note(note: Note, lang: str | None = None) -> str:
    """A decoding note in the page's language: the catalog entry ``note.<code>`` filled in with
    its fields (made safe for Markdown); a note whose code the catalog lacks (or a bare
    string) falls back to its English, made safe too."""
    from vitviz.ui.text import plain

    code = getattr(note, "code", None)
    template = catalog(lang or current()).get(f"note.{code}") if code else None
    if template is None:
        return plain(note)
    fields = getattr(note, "fields", {})
    return template.format(**{name: plain(value) for name, value in fields.items()})
