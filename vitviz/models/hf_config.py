"""A transformers ``config.json``: the checks that refuse it (custom code, unsupported model
types), the transformers class it builds, and its parameter count (meta device, no weights)."""

from __future__ import annotations

from typing import Any

import torch

from vitviz.errors import ModelError
from vitviz.models.checks import not_a_vit, refused_attention
from vitviz.models.hf_architectures import ARCHITECTURES, REFUSED, Architecture


def check_config(raw: dict[str, Any], ref: str) -> Architecture:
    """The architecture of a ``config.json``; refuses custom code and unsupported types.

    Raises:
        ModelError: with the reason.
    """
    if "auto_map" in raw:
        raise ModelError(
            f"hf:{ref} uses custom code ({', '.join(sorted(raw['auto_map']))} in its config's "
            "auto_map); vitviz never runs a model's own code (trust_remote_code stays off): "
            "choose a model built into transformers"
        )
    kind = raw.get("model_type")
    if not isinstance(kind, str) or not kind:
        raise ModelError(f"hf:{ref}: config.json names no model_type; is it a transformers model?")
    if kind in ARCHITECTURES:
        return ARCHITECTURES[kind]
    supported = ", ".join(a.title for a in ARCHITECTURES.values())
    if kind in REFUSED:
        raise refused_attention(
            f"hf:{ref}", kind, REFUSED[kind], f"choose a plain ViT ({supported})"
        )
    raise not_a_vit(f"hf:{ref}", kind, f"supported transformers models: {supported}")


def config_object(raw: dict[str, Any]) -> Any:
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
    config._attn_implementation = "eager"
    return config


def model_class(arch: Architecture, config: Any) -> tuple[type, bool]:
    """``(transformers class, is a classifier)`` for a config: the classifier its
    ``architectures`` names, else the base model (the backbone)."""
    import transformers
    from transformers import MODEL_MAPPING

    names = list(getattr(config, "architectures", None) or [])
    if names and names[0] in arch.classifiers and int(config.num_labels) > 0:
        return getattr(transformers, names[0]), True
    return MODEL_MAPPING[type(config)], False


def require_transformers() -> None:
    """A clear error when the optional ``transformers`` is not installed."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise ModelError(
            "Hugging Face models need transformers: pip install -r requirements-extras.txt"
        )


def count_parameters(raw: dict[str, Any], ref: str) -> int:
    """Parameters and buffers of the model a config describes (meta device, no weights)."""
    arch = check_config(raw, ref)
    config = config_object(raw)
    cls, _ = model_class(arch, config)
    with torch.device("meta"):
        model = cls(config)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))
