"""Which Hugging Face transformers model types vitviz reads (:data:`ARCHITECTURES`, with where
their layers, norm and patch embedding are and how they read out) and which it refuses, with
what their attention is instead (:data:`REFUSED`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitviz.models.checks import SPATIAL_REDUCTION, WINDOWED


@dataclass(frozen=True)
class Architecture:
    """How vitviz reads one transformers ``model_type``.

    Attributes:
        title: the name users know.
        layers: path of the encoder layer list in the base model.
        norm: path of the final norm in the base model.
        patch: path of the patch embedding in the base model.
        classifiers: class names (``config.architectures``) that are image classifiers; any
            other class of this type is loaded as its base model (a backbone).
        pool: ``token`` (CLS), ``avg`` (mean of the tokens, no prefix) or ``config``
            (``config.use_mean_pooling`` chooses: mean of the patch tokens or CLS).
        interpolates: the model resamples its position embeddings to any input (DINOv2,
            DINOv3): the input size then comes from the image processor config.
        forward_kwargs: extra forward arguments (older modules return their probabilities
            only with ``output_attentions=True``).
    """

    title: str
    layers: str = "layers"
    norm: str = "layernorm"
    patch: str = "embeddings.patch_embeddings"
    classifiers: tuple[str, ...] = ()
    pool: str = "token"
    interpolates: bool = False
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, Architecture] = {
    "vit": Architecture("ViT", classifiers=("ViTForImageClassification",)),
    "deit": Architecture(
        "DeiT",
        classifiers=("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
    ),
    "vit_msn": Architecture("ViT-MSN", classifiers=("ViTMSNForImageClassification",)),
    "ijepa": Architecture("I-JEPA", classifiers=("IJepaForImageClassification",), pool="avg"),
    "beit": Architecture("BEiT", classifiers=("BeitForImageClassification",), pool="config"),
    "data2vec-vision": Architecture(
        "Data2Vec-Vision",
        layers="encoder.layer",
        classifiers=("Data2VecVisionForImageClassification",),
        pool="config",
        forward_kwargs={"output_attentions": True},
    ),
    "dinov2": Architecture(
        "DINOv2",
        layers="encoder.layer",
        classifiers=("Dinov2ForImageClassification",),
        interpolates=True,
    ),
    "dinov2_with_registers": Architecture(
        "DINOv2 with registers",
        layers="encoder.layer",
        classifiers=("Dinov2WithRegistersForImageClassification",),
        interpolates=True,
    ),
    "dinov3_vit": Architecture(
        "DINOv3 ViT",
        layers="model.layer",
        norm="norm",
        patch="embeddings.patch_embeddings",
        interpolates=True,
    ),
}
"""Supported transformers model types (``config.model_type``)."""

_VIDEO = "a video model (tokens over time as well as space)"

REFUSED: dict[str, str] = {
    "swin": WINDOWED,
    "swinv2": WINDOWED,
    "donut-swin": WINDOWED,
    "maskformer-swin": WINDOWED,
    "swin2sr": WINDOWED,
    "vitdet": "windowed attention in most layers",
    "hiera": "hierarchical mask-unit (windowed) attention",
    "pvt": SPATIAL_REDUCTION,
    "pvt_v2": SPATIAL_REDUCTION,
    "segformer": SPATIAL_REDUCTION + ", over shrinking resolutions",
    "glpn": SPATIAL_REDUCTION + ", over shrinking resolutions",
    "mobilevit": "unfolded local patch attention inside convolution stages",
    "mobilevitv2": "separable linear attention inside convolution stages",
    "cvt": "convolutional token embeddings over shrinking resolutions",
    "levit": "convolutional stages with shrinking resolution",
    "efficientformer": "hybrid convolution stages",
    "swiftformer": "additive attention inside convolution stages",
    "focalnet": "focal modulation instead of attention",
    "dinat": "neighbourhood (local) attention",
    "nat": "neighbourhood (local) attention",
    "poolformer": "pooling instead of attention",
    "vit_mae": "random masking: its forward shuffles and drops patches",
    "yolos": "a detector: 100 detection tokens read the image, no classifier",
    "videomae": _VIDEO,
    "vivit": _VIDEO,
    "timesformer": _VIDEO,
    "vjepa2": _VIDEO,
    "clip": "an image–text model: use the clip: family (open_clip) for CLIP",
    "clip_vision_model": "an image–text model: use the clip: family (open_clip) for CLIP",
    "siglip": "an attention-pooling head (no class token) in an image–text model",
    "siglip2": "an attention-pooling head (no class token) in an image–text model",
    "siglip_vision_model": "an attention-pooling head (no class token)",
    "pixio": "several class tokens",
    "timm_wrapper": "a timm model wrapped for transformers: give its timm name instead",
}
"""Refused transformers model types, with what their attention is instead."""
