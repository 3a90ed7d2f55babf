"""Models: the registry, weights, the hub, preprocessing, devices and loading.

``registry``     curated models and the family table (supported or refused, by timm module)
``families``     the libraries that build models (timm, hf, clip): one registration each
``checks``       refusals every family shares (parameter limit, no pretrained weights …)
``weights``      reading weights files safely (safetensors, ``weights_only`` pickles)
``hub``          the Hugging Face cache and hub (fast, clear offline failures)
``hf``, ``hf_*`` Hugging Face transformers ViTs; ``clip``, ``clip_text``: open_clip
``preprocess``   the model's input geometry and token layout
``device``       device and autocast precision
``loading``      :func:`load_model` → :class:`LoadedModel`
"""

from vitviz.inputs.geometry import InputGeometry
from vitviz.models.device import Precision, device_name, pick_device, pick_precision
from vitviz.models.families import model_family
from vitviz.models.hub import (
    PROBE_MEMORY_SECONDS,
    cached_weights,
    download_location,
    hub_endpoint,
    hub_offline,
    hub_reachable,
)
from vitviz.models.loading import (
    DEMO_NOTE,
    RANDOM_WARNING,
    LoadedModel,
    check_model_size,
    download_weights,
    labels_for,
    load_model,
    model_parameters,
    model_shape,
    parameter_count,
    weights_plan,
)
from vitviz.models.preprocess import model_layout, patch_size_of
from vitviz.models.registry import (
    ASSETS,
    CURATED,
    DEMO_WEIGHTS,
    FAMILIES,
    Family,
    ModelSpec,
    check_architecture,
    check_structure,
    family_of,
    resolve_name,
)
from vitviz.models.weights import read_state_dict
from vitviz.results import WeightsInfo

__all__ = [
    "ASSETS",
    "CURATED",
    "DEMO_NOTE",
    "DEMO_WEIGHTS",
    "FAMILIES",
    "PROBE_MEMORY_SECONDS",
    "RANDOM_WARNING",
    "Family",
    "InputGeometry",
    "LoadedModel",
    "ModelSpec",
    "Precision",
    "WeightsInfo",
    "cached_weights",
    "check_architecture",
    "check_model_size",
    "check_structure",
    "device_name",
    "download_location",
    "download_weights",
    "family_of",
    "hub_endpoint",
    "hub_offline",
    "hub_reachable",
    "labels_for",
    "load_model",
    "model_family",
    "model_layout",
    "model_parameters",
    "model_shape",
    "parameter_count",
    "patch_size_of",
    "pick_device",
    "pick_precision",
    "read_state_dict",
    "resolve_name",
    "weights_plan",
]
