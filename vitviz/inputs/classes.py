"""Class names given by people: an index, a name, or a unique part of a name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitviz.errors import OptionsError


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of class logits over the last axis (``[C]``, or one row per layer ``[L, C]``;
    float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ranked(labels: Sequence[str], top: Sequence[int]) -> list[int]:
    """Class indices for a picker: ``top`` first, then the rest by name."""
    first = [int(i) for i in top]
    chosen = set(first)
    rest = sorted(
        (i for i in range(len(labels)) if i not in chosen), key=lambda i: labels[i].lower()
    )
    return first + rest


def short_label(label: str) -> str:
    """A class's first name ("echidna" for "echidna, spiny anteater, anteater")."""
    return label.split(",")[0].strip() or label


def resolve_class(spec: str | int, labels: Sequence[str]) -> int:
    """A class given as an index or a name (case-insensitive; a unique part of one works)."""
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(labels):
            raise OptionsError(f"class {index} does not exist: the model has {len(labels)}")
        return index
    low = text.lower()
    exact = [i for i, name in enumerate(labels) if name.lower() == low]
    if exact:
        return exact[0]
    partial = [i for i, name in enumerate(labels) if low in name.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(repr(labels[i]) for i in partial[:6])
        raise OptionsError(f"class {text!r} matches several classes ({names}…): be more precise")
    raise OptionsError(f"no class named {text!r}: give a class index or part of a class name")
