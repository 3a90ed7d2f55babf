"""The page's browser components: fixed code (``*.js``, ``*.css``) with shared helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

_UI = Path(__file__).resolve().parent
_SHARED = (_UI / "dom.js").read_text()


def component(name: str, js: Path, css: Path) -> Any:
    """A ``st.components.v2`` component from files, with the shared helpers (``dom.js``)
    in front of its code."""
    return st.components.v2.component(name, css=css.read_text(), js=_SHARED + js.read_text())
