"""Where a model's weights came from, told without the machine's directories.

Weights files inside the project are named relative to it, others by file name; the page,
the CLI's reports and the atlas hand out :func:`public_info`, never an absolute path.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vitviz.results import ModelInfo, WeightsInfo

PROJECT = Path(__file__).resolve().parents[2]  # the checkout (vitviz/output/ is two down)


def display_location(weights: WeightsInfo) -> str:
    """Where weights came from, without the machine's directories.

    Files inside the project are shown relative to it, other files by name; the hub by URL.
    """
    where = weights.location
    if not where or weights.source not in ("file", "bundled", "cache"):
        return where
    path = Path(where).resolve()
    try:
        return str(path.relative_to(PROJECT))
    except ValueError:
        return path.name


def public_info(info: ModelInfo) -> ModelInfo:
    """A model description fit to show or hand out (see :func:`display_location`)."""
    return info.with_(weights=replace(info.weights, location=display_location(info.weights)))
