"""The page's words in English and Traditional Chinese: one message catalog per language.

Every user-facing string of the page is a key in ``vitviz/ui/locales/<language>.toml``;
:func:`t` looks it up in the session's language and fills in ``{named}`` values
(:meth:`str.format`). The language follows the browser (``st.context.locale``) until the
person picks one; a picked language is kept in the URL (``?lang=zh-Hant``), so a shared link
opens in it. Class names in Chinese come from ``assets/*-zh-hant.tsv`` (:func:`class_name`).

Tests check that both catalogs have the same keys and placeholders and that every key is used.
"""

from __future__ import annotations

import csv
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

LOCALES = Path(__file__).resolve().parent / "locales"
ASSETS = Path(__file__).resolve().parents[2] / "assets"
LANGUAGES = {"en": "English", "zh-Hant": "中文"}
DEFAULT = "en"
# Chinese class names for label lists the page knows (English name → Chinese name)
CLASS_FILES = ("imagenet-zh-hant.tsv", "demo/classes-zh-hant.tsv")


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
def catalog(lang: str) -> dict[str, str]:
    """All messages of one language, by dotted key."""
    with open(LOCALES / f"{lang}.toml", "rb") as f:
        return _flatten(tomllib.load(f))


def from_locale(locale: str | None) -> str:
    """The page language for a browser locale ("zh-TW", "zh-Hant-HK", "zh" → zh-Hant)."""
    return "zh-Hant" if (locale or "").lower().startswith("zh") else DEFAULT


def current() -> str:
    """This session's language (English outside a Streamlit session)."""
    try:
        import streamlit as st

        lang = st.session_state.get("lang")
    except Exception:
        return DEFAULT
    return lang if lang in LANGUAGES else DEFAULT


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
def _class_tables() -> tuple[dict[tuple[int, str], str], dict[str, str]]:
    """Chinese names by (index, English label) of each known label list, and by English label
    alone where that label is unique (ImageNet has two "crane": the bird and the machine)."""
    by_index: dict[tuple[int, str], str] = {}
    by_label: dict[str, list[str]] = {}
    for name in CLASS_FILES:
        path = ASSETS / name
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                by_index[(int(row["index"]), row["english"])] = row["zh_hant"]
                by_label.setdefault(row["english"], []).append(row["zh_hant"])
    unique = {label: names[0] for label, names in by_label.items() if len(names) == 1}
    return by_index, unique


def class_name(label: str, lang: str | None = None, index: int | None = None) -> str | None:
    """The Chinese name of a class, when one is known and wanted: by its index when the label
    there is a known list's (ImageNet-1k, the demo model's), else by a label no two classes
    share."""
    if (lang or current()) == DEFAULT:
        return None
    by_index, unique = _class_tables()
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
    :func:`vitviz.ui.text.plain` for Markdown): the Chinese name in zh-Hant when there is one
    (``both``: followed by the English first name, for searching), else the English (first)
    name."""
    from vitviz.classes import short_label

    english = short_label(label) if short else label
    chinese = class_name(label, lang, index)
    if chinese is None:
        return english
    return f"{chinese} · {short_label(label)}" if both else chinese


_ERROR_KEYS = (  # most specific first
    ("ImageTooLarge", "error.image_too_large"),
    ("ImageError", "error.image"),
    ("WeightsError", "error.weights"),
    ("ModelError", "error.model"),
    ("ServerError", "error.server_failed"),
    ("OptionsError", "error.options"),
)


def error_text(err: BaseException, lang: str | None = None) -> str:
    """An error for the page: in English its own one-line message; in another language a
    translated lead sentence by the error's kind, then the message's details as written."""
    from vitviz.ui.text import plain

    lang = lang or current()
    memory = _memory_text(err, lang)
    if memory is not None:
        return memory
    if lang == DEFAULT:
        return plain(err)
    kinds = {cls.__name__ for cls in type(err).__mro__}
    key = next((k for name, k in _ERROR_KEYS if name in kinds), "error.other")
    return t(key, lang, detail=plain(err))


def _memory_text(err: BaseException, lang: str) -> str | None:
    """The page's budget refusing or timing out work, in the page's words (with the sizes)."""
    from vitviz.cost import size_text
    from vitviz.errors import MemoryBusy, MemoryRefused

    if isinstance(err, MemoryRefused):
        what = err.what.replace(" ", "_")
        what = what if has(f"memory.{what}") else "work"
        return t(
            "error.memory_refused",
            lang,
            what=t(f"memory.{what}", lang),
            size=size_text(err.needed),
            available=size_text(err.available),
            budget=size_text(err.total),
        )
    if isinstance(err, MemoryBusy):
        return t("error.memory_busy", lang, size=size_text(err.needed), seconds=f"{err.waited:.0f}")
    return None


_NOTES = {  # the decoder's fixed notes (vitviz.images) → catalog keys
    "16-bit image scaled to 8 bits": "note.sixteen_bit",
    "CMYK converted to RGB": "note.cmyk",
    "transparency composited over white": "note.transparency",
    "EXIF data unreadable: orientation ignored": "note.exif_unreadable",
    "floating-point image scaled from 0..1 to 8 bits": "note.float_scaled",
    "floating-point image clipped to 0..255": "note.float_clipped",
}


def decoder_note(note: str, lang: str | None = None) -> str:
    """A decoding note in the page's language (notes with file details stay as written)."""
    from vitviz.ui.text import plain

    key = _NOTES.get(note)
    return t(key, lang) if key else plain(note)
