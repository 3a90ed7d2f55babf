"""Refusals every model family shares, each worded once: attention that is not global, the
parameter limit, a weights file beside random weights, no pretrained weights, and torch's
long ``load_state_dict`` errors in one line."""

from __future__ import annotations

import re

from vitviz.errors import ModelError, WeightsError

RANDOM_WARNING = "RANDOM WEIGHTS - NOT A TRAINED MODEL: maps and predictions mean nothing"
WINDOWED = "windowed attention: each token attends only inside its window"
SPATIAL_REDUCTION = "spatial-reduction attention: keys are pooled, so rows do not cover the patches"
FILE_OR_RANDOM = "choose either a weights file or random weights, not both"


def refused_attention(name: str, kind: str, why: str, choose: str) -> ModelError:
    """The error for a model whose attention is not global: ``kind`` (its module or model
    type) uses ``why``; ``choose`` says what to choose instead."""
    return ModelError(
        f"{name} is not supported: {kind} uses {why}, so there is no global "
        f"patch-to-patch attention to show; {choose}"
    )


def not_a_vit(name: str, kind: str, choose: str) -> ModelError:
    """The error for a model that is no global-attention ViT (nor a known refusal)."""
    return ModelError(f"{name} ({kind}) is not a global-attention ViT vitviz can read; {choose}")


def check_size(name: str, count: int, max_params: int | None) -> None:
    """A :class:`ModelError` when ``count`` parameters pass ``max_params`` (None: no limit)."""
    if max_params is not None and count > max_params:
        raise ModelError(
            f"{name} has {count / 1e6:,.0f} M parameters ({count * 4 / 2**30:.1f} GiB in "
            f"float32), over the limit of {max_params / 1e6:,.0f} M set for this place; "
            "choose a smaller model (the operator can raise VITVIZ_MAX_PARAMS)"
        )


def file_limit(max_params: int | None) -> int | None:
    """The largest weights file a model under ``max_params`` parameters can need (float32,
    plus 1 MiB of headers), or None without a limit."""
    return None if max_params is None else 4 * max_params + 2**20


def no_pretrained_weights(reason: str) -> WeightsError:
    """The error for a model without pretrained weights: ``reason``, then the two ways out
    (a weights file, or random weights). Code ``weights_none``: the page words the ways out
    its own way (it has no command-line flags)."""
    return WeightsError(
        f"{reason}: pass --weights FILE (or --random-weights for an architecture test)",
        code="weights_none",
        reason=reason,
    )


def summarize_load_error(text: str) -> str:
    """One line from torch's multi-line ``load_state_dict`` error."""
    parts = []
    for label, pattern in (
        ("missing", r"Missing key\(s\) in state_dict: (.*)"),
        ("unexpected", r"Unexpected key\(s\) in state_dict: (.*)"),
    ):
        found = re.search(pattern, text)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} {label} tensors ({', '.join(keys[:3])}…)")
    sizes = re.findall(r"size mismatch for ([\w.]+)", text)
    if sizes:
        parts.append(f"{len(sizes)} tensors of another shape ({', '.join(sizes[:3])}…)")
    if not parts:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        parts.append(lines[0][:300] if lines else "unknown error")
    return "; ".join(parts)


def weights_mismatch(where: str, model: str, detail: str) -> WeightsError:
    """Weights that do not fit the model they were loaded into (one line, what to check)."""
    return WeightsError(
        f"weights from {where} do not fit {model}: {summarize_load_error(detail)}; "
        "check --model matches the file"
    )
