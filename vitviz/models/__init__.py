"""Models: the registry, weights, the hub, preprocessing, devices and loading.

``registry``     curated models and the family table (supported or refused, by timm module)
``weights``      reading weights files safely (safetensors, ``weights_only`` pickles)
``hub``          the Hugging Face cache and hub (fast, clear offline failures)
``preprocess``   the model's input geometry and token layout
``device``       device and autocast precision
``loading``      :func:`load_model` → :class:`LoadedModel`
"""

from vitviz.inputs.geometry import InputGeometry
from vitviz.models.device import Precision, device_name, pick_device, pick_precision
from vitviz.models.hub import (
    PROBE_MEMORY_SECONDS,
    cached_weights,
    download_location,
    download_weights,
    hub_endpoint,
    hub_offline,
    hub_reachable,
    weights_plan,
)
from vitviz.models.loading import (
    DEMO_NOTE,
    RANDOM_WARNING,
    LoadedModel,
    check_model_size,
    labels_for,
    load_model,
    model_parameters,
    model_shape,
    parameter_count,
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
    model_family,
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
