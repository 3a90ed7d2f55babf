"""vitviz: an interactive Vision Transformer attention explorer (library API).

from vitviz import LocalBackend, decode_image, rollout
backend = LocalBackend.from_name("vit-b16")
result = backend.explain([decode_image(open("cat.jpg", "rb").read(), "cat.jpg").image])[0]
heat = rollout(result.attention, result.layout)        # [grid h, grid w]
"""

from vitviz.backend import (
    Backend,
    ClassExplanation,
    ImageExplanation,
    LocalBackend,
    Prediction,
    resolve_class,
)
from vitviz.capture import Capture, capture, forward_with_attention
from vitviz.errors import ImageError, ModelError, OptionsError, VitvizError, WeightsError
from vitviz.gradients import attention_gradients
from vitviz.images import DecodedImage, decode_image, load_image_file
from vitviz.layout import TokenLayout
from vitviz.methods import (
    METHODS,
    STATISTICS,
    attention_entropy,
    attention_map,
    attn_grad,
    chefer,
    compute_map,
    grad_rollout,
    mask,
    mean_attention_distance,
    query_map,
    rollout,
    rollout_matrix,
    threshold_mask,
)
from vitviz.models import CURATED, LoadedModel, load_model
from vitviz.runtime import tune_allocator

__all__ = [
    "CURATED",
    "METHODS",
    "STATISTICS",
    "Backend",
    "Capture",
    "ClassExplanation",
    "DecodedImage",
    "ImageError",
    "ImageExplanation",
    "LoadedModel",
    "LocalBackend",
    "ModelError",
    "OptionsError",
    "Prediction",
    "TokenLayout",
    "VitvizError",
    "WeightsError",
    "attention_entropy",
    "attention_gradients",
    "attention_map",
    "attn_grad",
    "capture",
    "chefer",
    "compute_map",
    "decode_image",
    "forward_with_attention",
    "grad_rollout",
    "load_image_file",
    "load_model",
    "mask",
    "mean_attention_distance",
    "query_map",
    "resolve_class",
    "rollout",
    "rollout_matrix",
    "threshold_mask",
    "tune_allocator",
]
