"""The CLIP family: ``clip:<architecture>[/<pretrained tag>]`` and ``clip:hf-hub:org/name``,
open_clip image towers that score the classes a user types (:mod:`vitviz.models.clip`)."""

from __future__ import annotations

from typing import Any

from vitviz.models.clip import (
    build,
    download_weights,
    model_config,
    parameter_count,
    weights_plan,
)
from vitviz.models.families import Family, register


def _count(ref: str, model_kwargs: dict[str, Any] | None = None) -> int:
    return parameter_count(ref)


def _check(ref: str) -> None:
    model_config(ref)  # unknown architectures and refused towers


CLIP = register(
    Family(
        name="clip",
        prefix="clip",
        library="open_clip",
        build=build,
        count=_count,
        plan=weights_plan,
        download=download_weights,
        check=_check,
        typed_labels=True,
        weights_file=True,
    )
)
