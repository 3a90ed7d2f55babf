"""The lesson's two browser components: step navigation (buttons and ← → keys) and the patch
picker (click a patch of the numbered grid). Fixed code; step titles and the image arrive as
data and are only set as text or drawn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitviz.layout import TokenLayout
from vitviz.ui import canvas
from vitviz.ui.components import component

_HERE = Path(__file__).resolve().parent
_NAV = component("vitviz_lesson_nav", _HERE / "nav.js", _HERE / "lesson.css")
_PICKER = component("vitviz_patch_picker", _HERE / "picker.js", _HERE / "lesson.css")


def nav(key: str, step: int, titles: list[str], words: dict[str, str], on_go: Callable[[], None]):
    """Previous / 1 … n / Next; the ← → keys move too. A move triggers ``go`` (the step)."""
    data = {"step": int(step), "count": len(titles), "titles": titles, **words}
    return _NAV(key=key, data=data, on_go_change=on_go)


def picker(
    key: str,
    image: np.ndarray,
    layout: TokenLayout,
    patch: int,
    on_patch: Callable[[], None],
    display: int = 400,
    numbers: bool = True,
):
    """The image with its numbered patch grid; a click triggers ``patch``."""
    data = {
        "image": canvas.image_uri(image),
        "size": list(image.shape[:2]),
        "grid": list(layout.grid),
        "patch": int(patch),
        "display": int(display),
        "numbers": bool(numbers),
    }
    return _PICKER(key=key, data=data, on_patch_change=on_patch)
