"""What the page's download buttons hand out: attention arrays, predictions, overlays."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np

from vitviz.backend import ImageExplanation


def safe_stem(name: str) -> str:
    """A file-name-safe version of an image or model name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.rsplit(".", 1)[0]).strip("-.")
    return stem[:60] or "image"


def attention_npz(expl: ImageExplanation, info: dict[str, Any], image_name: str) -> bytes:
    """All arrays of one explanation as ``.npz``.

    Keys: ``attention`` ``[L, H, N, N]`` float32, ``image`` (the pixels the model saw),
    ``logits`` (when the model classifies), ``layout`` and ``model`` (JSON strings) and
    ``image_name``.
    """
    arrays: dict[str, np.ndarray] = {
        "attention": np.asarray(expl.attention, np.float32),
        "image": expl.image,
        "layout": np.array(json.dumps(expl.layout.to_dict())),
        "model": np.array(json.dumps(info)),
        "image_name": np.array(image_name),
    }
    if expl.logits is not None:
        arrays["logits"] = np.asarray(expl.logits, np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def predictions_json(expl: ImageExplanation, info: dict[str, Any], image_name: str) -> str:
    """The top predictions with the model and weights they came from."""
    return json.dumps(
        {
            "image": image_name,
            "model": info.get("name"),
            "timm_name": info.get("timm_name"),
            "weights": info.get("weights"),
            "predictions": [p.to_dict() for p in expl.predictions],
        },
        indent=2,
    )
