"""vitviz: an interactive Vision Transformer attention explorer (library API).

from vitviz import LocalBackend, compute_map, decode_image
backend = LocalBackend.from_name("vit-b16")
result = backend.explain([decode_image(open("cat.jpg", "rb").read(), "cat.jpg").image])[0]
heat = compute_map("rollout", result.attention, result.layout)   # [grid h, grid w]

Names are imported on first use (PEP 562), so ``import vitviz`` and the torch-free parts
(``vitviz.results``, ``vitviz.wire``, ``vitviz.backends.remote``) never load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Anatomy": "vitviz.results",
    "Backend": "vitviz.backends",
    "Capture": "vitviz.engine.capture",
    "ClassExplanation": "vitviz.results",
    "ClassRelevance": "vitviz.results",
    "CURATED": "vitviz.models",
    "DecodedImage": "vitviz.inputs.images",
    "ImageError": "vitviz.errors",
    "ImageExplanation": "vitviz.results",
    "InputGeometry": "vitviz.inputs.geometry",
    "LoadedModel": "vitviz.models",
    "LocalBackend": "vitviz.backends.local",
    "METHODS": "vitviz.methods",
    "ModelError": "vitviz.errors",
    "ModelInfo": "vitviz.results",
    "OptionsError": "vitviz.errors",
    "Prediction": "vitviz.results",
    "RemoteBackend": "vitviz.backends.remote",
    "STATISTICS": "vitviz.methods",
    "TokenLayout": "vitviz.layout",
    "VitvizError": "vitviz.errors",
    "WeightsError": "vitviz.errors",
    "attention_entropy": "vitviz.methods",
    "attention_gradients": "vitviz.engine.gradients",
    "attention_relevance": "vitviz.engine.gradients",
    "class_relevance": "vitviz.methods",
    "compute_map": "vitviz.methods",
    "compute_row": "vitviz.methods",
    "decode_image": "vitviz.inputs.images",
    "forward_with_attention": "vitviz.engine.capture",
    "load_image_file": "vitviz.inputs.images",
    "load_model": "vitviz.models",
    "mean_attention_distance": "vitviz.methods",
    "resolve_class": "vitviz.inputs.classes",
    "rollout_matrix": "vitviz.methods",
    "threshold_mask": "vitviz.methods",
    "tune_allocator": "vitviz.engine.runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import an exported name's module (or a submodule, ``vitviz.methods``) on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        try:
            return importlib.import_module(f"vitviz.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'vitviz' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
