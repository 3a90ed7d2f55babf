"""Text the command line prints for people: the banner that makes a warning impossible to miss."""

from __future__ import annotations


def banner(text: str) -> str:
    """``text`` framed in exclamation marks (random weights, a fallback model…)."""
    line = "!" * (len(text) + 8)
    return f"{line}\n!!! {text} !!!\n{line}"
