"""What the page's download buttons hand out: attention arrays, predictions, overlays.

Nothing handed out names a directory of the machine running the page: weights files inside
the project are named relative to it, others by file name (:func:`public_info`).
"""

from __future__ import annotations

import io
import json
import re

import numpy as np

from vitviz.output.provenance import public_info
from vitviz.results import ImageExplanation, ModelInfo


def safe_stem(name: str) -> str:
    """A file-name-safe version of an image or model name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.rsplit(".", 1)[0]).strip("-.")
    return stem[:60] or "image"


def attention_npz(expl: ImageExplanation, info: ModelInfo, image_name: str) -> bytes:
    """All arrays of one explanation as ``.npz``.

    Keys: ``attention`` ``[L, H, N, N]`` float32, ``image`` (the pixels the model saw),
    ``logits`` (when the model classifies), ``layout`` and ``model`` (JSON strings) and
    ``image_name``.
    """
    arrays: dict[str, np.ndarray] = {
        "attention": np.asarray(expl.attention, np.float32),
        "image": expl.image,
        "layout": np.array(json.dumps(expl.layout.to_dict())),
        "model": np.array(json.dumps(public_info(info).to_dict())),
        "image_name": np.array(image_name),
    }
    if expl.logits is not None:
        arrays["logits"] = np.asarray(expl.logits, np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def predictions_json(expl: ImageExplanation, info: ModelInfo, image_name: str) -> str:
    """The top predictions with the model and weights they came from."""
    info = public_info(info)
    return json.dumps(
        {
            "image": image_name,
            "model": info.name,
            "timm_name": info.timm_name,
            "weights": info.weights.to_dict(),
            "predictions": [p.to_dict() for p in expl.predictions],
        },
        indent=2,
    )
