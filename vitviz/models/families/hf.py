"""The Hugging Face family: ``hf:<hub id>`` or ``hf:<folder>``, transformers ViTs read through
the timm-like adapter (:mod:`vitviz.models.hf`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitviz.models.families import Family, Progress, register
from vitviz.models.hf import (
    NO_WEIGHTS_FILE,
    build,
    download_weights,
    parameter_count,
    shown_name,
    weights_plan,
)


def _count(ref: str, model_kwargs: dict[str, Any] | None = None) -> int:
    return parameter_count(ref)


def _download(ref: str, progress: Progress | None = None) -> Path | None:
    return download_weights(ref, progress)


HF = register(
    Family(
        name="hf",
        prefix="hf",
        library="transformers",
        build=build,
        count=_count,
        plan=weights_plan,
        download=_download,
        shown=shown_name,
        local_folder=True,
        no_weights_file=NO_WEIGHTS_FILE,
    )
)
