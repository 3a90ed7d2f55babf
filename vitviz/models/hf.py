"""Hugging Face ``transformers`` ViTs: loading them safely, and a timm-like adapter.

A model is named ``hf:<hub id>`` (``hf:google/vit-base-patch16-224``) or ``hf:<folder>`` (a
folder with ``config.json``, ``model.safetensors`` and, optionally,
``preprocessor_config.json``). vitviz builds the transformers class the config names (a
classifier) or the base model (a backbone without classifier), always with
``attn_implementation="eager"``: the SDPA and flash kernels never materialize the attention
matrix, while the eager path returns the softmax probabilities it multiplies the values with.
Custom code (``auto_map`` in the config) is refused: ``trust_remote_code`` is never enabled.
Weights are read as safetensors, or as pickles only through ``torch.load(weights_only=True)``
(transformers' own safe loading).

:class:`HFViT` wraps the transformers model in the attributes the engine reads from a timm
ViT (``blocks``, ``patch_embed``, ``num_prefix_tokens``, ``cls_token``, ``global_pool``…), so
capture, gradients, maps, the lesson and the anatomy work unchanged. The engine hooks
``LoadedModel.hook`` (``"attention"``) in each encoder layer: that module returns
``(output, probabilities)`` and the probabilities are the very tensor the forward multiplies
with the values, so class-specific methods get their gradients.

Supported (:data:`ARCHITECTURES`): ViT, DeiT (distilled too), BEiT, Data2Vec-Vision, DINOv2,
DINOv2 with registers, DINOv3 (ViT), ViT-MSN and I-JEPA. Windowed, hierarchical and pooled
architectures are refused with the reason (:data:`REFUSED`), as for timm.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitviz.errors import ModelError, WeightsError
from vitviz.models.device import Precision, pick_device, pick_precision
from vitviz.models.hub import check_repo_id, hub_endpoint, require_reachable
from vitviz.models.loading import RANDOM_WARNING, LoadedModel, _check_size
from vitviz.models.registry import CURATED
from vitviz.results import WeightsInfo

EAGER_NOTE = (
    "Hugging Face transformers model run with attn_implementation='eager' (the attention "
    "probabilities the model multiplies with; SDPA/flash kernels never materialize them)"
)
HOOK = "attention"  # in each encoder layer: the module returning (output, probabilities)


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

_WINDOWED = "windowed attention: each token attends only inside its window"
_SRA = "spatial-reduction attention: keys are pooled, so rows do not cover the patches"
_VIDEO = "a video model (tokens over time as well as space)"

REFUSED: dict[str, str] = {
    "swin": _WINDOWED,
    "swinv2": _WINDOWED,
    "donut-swin": _WINDOWED,
    "maskformer-swin": _WINDOWED,
    "swin2sr": _WINDOWED,
    "vitdet": "windowed attention in most layers",
    "hiera": "hierarchical mask-unit (windowed) attention",
    "pvt": _SRA,
    "pvt_v2": _SRA,
    "segformer": _SRA + ", over shrinking resolutions",
    "glpn": _SRA + ", over shrinking resolutions",
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

_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_CONFIG = "config.json"
_PROCESSOR = "preprocessor_config.json"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# -- the adapter ------------------------------------------------------------------------


class PatchEmbedView:
    """timm's ``patch_embed`` attributes over a transformers patch embedding.

    Not a module, so the transformers module stays registered once (in the wrapped model).
    Hooks registered here go on the transformers module, and see its output as timm's
    ``[B, N, D]`` (transformers modules may return ``(tokens, grid)`` or ``[B, D, h, w]``).
    """

    def __init__(self, module: nn.Module, img_size: tuple[int, int], patch: tuple[int, int]):
        self.module = module
        self.img_size = img_size
        self.patch_size = patch
        self.grid_size = (img_size[0] // patch[0], img_size[1] // patch[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        proj = getattr(module, "projection", module)
        self.proj = proj if isinstance(proj, nn.Conv2d) else None

    def register_forward_hook(self, hook: Callable[..., Any]) -> Any:
        """Hook the transformers module; ``hook(module, args, tokens [B, N, D])``."""

        def tokens(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if out.ndim == 4:  # a bare convolution: [B, D, h, w]
                out = out.flatten(2).transpose(1, 2)
            hook(module, args, out)

        return self.module.register_forward_hook(tokens)


class HFViT(nn.Module):
    """A transformers ViT-family image model with the timm ViT attributes vitviz reads.

    ``forward(x)`` returns the classifier's logits, or for a backbone the readout feature
    ``[B, D]`` (what :attr:`global_pool` and the token layout say the readout is).
    ``forward_features(x)`` returns every token after the final norm, ``[B, T, D]``.
    """

    dynamic_img_size = False

    def __init__(
        self,
        hf_model: nn.Module,
        arch: Architecture,
        ref: str,
        input_hw: tuple[int, int],
        classifier: bool,
    ) -> None:
        super().__init__()
        self.hf = hf_model
        self.arch = arch
        config = hf_model.config
        self.is_classifier = classifier
        self.readout_head = nn.Identity()  # a backbone's readout passes here (lesson hooks)
        self.vitviz_num_heads = int(config.num_attention_heads)
        self.embed_dim = self.num_features = int(config.hidden_size)
        self.num_classes = int(config.num_labels) if classifier else 0
        self.num_reg_tokens = int(getattr(config, "num_register_tokens", 0) or 0)
        patch = _pair(config.patch_size)
        self._layers = _layers_path(self.base, arch.layers)
        self.patch_embed = PatchEmbedView(self.base.get_submodule(arch.patch), input_hw, patch)
        cls = 1 if self.cls_token is not None else 0
        dist = 1 if self.dist_token is not None else 0
        self.num_prefix_tokens = cls + dist + self.num_reg_tokens
        self.global_pool, self.vitviz_readout = _readout(
            arch, config, type(hf_model).__name__, dist == 1
        )
        shown = Path(ref).name if is_path(ref) else ref  # a folder by its name, never its path
        self.pretrained_cfg = {"architecture": f"hf:{shown}"}

    @property
    def base(self) -> nn.Module:
        """The transformers base model (embeddings and encoder, no head)."""
        return self.hf.base_model if self.is_classifier else self.hf

    @property
    def blocks(self) -> nn.ModuleList:
        """The encoder layers (registered once, inside the transformers model)."""
        return self.base.get_submodule(self._layers)

    @property
    def norm(self) -> nn.Module:
        """The final norm of the tokens (an identity for models that normalize after pooling)."""
        return self.base.get_submodule(self.arch.norm)

    @property
    def head(self) -> nn.Module:
        """The module reading the readout feature: the classifier (distilled DeiT: the class
        token's head), or the identity a backbone's readout feature passes."""
        if not self.is_classifier:
            return self.readout_head
        for name in ("classifier", "cls_classifier"):
            if isinstance(getattr(self.hf, name, None), nn.Module):
                return getattr(self.hf, name)
        return self.readout_head

    @property
    def _embeddings(self) -> nn.Module:
        return self.base.embeddings

    @property
    def cls_token(self) -> torch.Tensor | None:
        """The class token parameter ``[1, 1, D]`` (None without one, e.g. I-JEPA)."""
        tok = getattr(self._embeddings, "cls_token", None)
        return tok if isinstance(tok, torch.Tensor) else None

    @property
    def dist_token(self) -> torch.Tensor | None:
        """The distillation token of DeiT (None for other models)."""
        tok = getattr(self._embeddings, "distillation_token", None)
        return tok if isinstance(tok, torch.Tensor) else None

    @property
    def pos_embed(self) -> torch.Tensor | None:
        """The absolute position embeddings added for this input size (prefix rows first),
        resampled the model's own way when stored for another grid; None without absolute
        ones (BEiT's relative bias, DINOv3's rotary positions)."""
        emb = self._embeddings
        pos = getattr(emb, "position_embeddings", None)
        if not isinstance(pos, torch.Tensor) or pos.ndim != 3:
            return None
        n = self.patch_embed.num_patches
        stored = int(getattr(getattr(emb, "patch_embeddings", None), "num_patches", n))
        with_pos = pos.shape[1] - stored  # prefix tokens that get a position
        if stored == n:
            return pos
        resample = getattr(emb, "interpolate_pos_encoding", None)
        if resample is None or with_pos < 0:
            return None
        h, w = self.patch_embed.img_size
        with torch.no_grad():
            return resample(pos.new_zeros(1, with_pos + n, pos.shape[-1]), h, w)

    def _run(self, module: nn.Module, x: torch.Tensor) -> Any:
        return module(pixel_values=x, return_dict=True, **self.arch.forward_kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the last layer and the final norm: ``[B, T, D]``."""
        return self._run(self.base, x).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of a classifier (transformers' own head); a backbone's readout
        feature ``[B, D]``."""
        if self.is_classifier:
            return self._run(self.hf, x).logits
        out = self._run(self.hf, x)
        tokens = out.last_hidden_state
        p = self.num_prefix_tokens
        if self.vitviz_readout == "cls+dist":
            feature = (tokens[:, 0] + tokens[:, 1]) / 2
        elif self.vitviz_readout == "cls":
            feature = tokens[:, 0]
        elif getattr(out, "pooler_output", None) is not None:
            feature = out.pooler_output  # BEiT: the mean of the patch tokens, normalized
        else:
            feature = tokens[:, p:].mean(dim=1)
        return self.readout_head(feature)


_LAYER_PATHS = ("layers", "encoder.layer", "encoder.layers", "model.layer", "model.layers")


def _layers_path(base: nn.Module, known: str) -> str:
    """Where the encoder layers are: the known path, or one of the usual others (transformers
    renames them between versions); the known path when none is there."""
    for path in (known, *_LAYER_PATHS):
        try:
            if isinstance(base.get_submodule(path), nn.ModuleList):
                return path
        except AttributeError:
            continue
    return known


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, list | tuple):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _readout(arch: Architecture, config: Any, cls_name: str, dist: bool) -> tuple[str, str]:
    """``(global_pool, readout)`` of a model class (:class:`~vitviz.layout.TokenLayout`)."""
    if arch.pool == "avg" or (arch.pool == "config" and getattr(config, "use_mean_pooling", False)):
        return "avg", "avg"  # the mean of the patch tokens (BEiT, Data2Vec, I-JEPA)
    if dist and cls_name != "DeiTForImageClassification":  # that head reads CLS only
        return "token", "cls+dist"
    return "token", "cls"


def readout_note(cls_name: str) -> str | None:
    """What the layout's readout leaves out, for classifiers that read more than one token."""
    if cls_name in ("Dinov2ForImageClassification", "Dinov2WithRegistersForImageClassification"):
        return (
            "its classifier reads [CLS ‖ mean of the patch tokens]; maps show the CLS token "
            "as the readout, so the patch-mean half is not in the attention maps (the "
            "class-specific gradients still flow through both)"
        )
    if cls_name == "DeiTForImageClassificationWithTeacher":
        return "the prediction averages the class and distillation heads (readout cls+dist)"
    return None


# -- configs, refusals, files -----------------------------------------------------------


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
        raise ModelError(
            f"hf:{ref} is not supported: {kind} uses {REFUSED[kind]}, so there is no global "
            f"patch-to-patch attention to show; choose a plain ViT ({supported})"
        )
    raise ModelError(
        f"hf:{ref} ({kind}) is not a global-attention ViT vitviz can read; "
        f"supported transformers models: {supported}"
    )


@dataclass
class Source:
    """Where a model's files are: a folder (the user's, or a hub cache snapshot)."""

    folder: Path
    origin: str  # "file" (the user's folder), "cache" or "hub"
    config: dict[str, Any]
    processor: dict[str, Any] | None
    weights: Path | None  # the weights file (or shard index), None if absent

    @property
    def location(self) -> str:
        """The weights file, or the folder when there is none."""
        return str(self.weights or self.folder)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {what} is not a JSON object")
    return data


def _weights_in(folder: Path) -> Path | None:
    """The weights file of a folder (safetensors first; a shard index only with its shards)."""
    for name in _WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = set(_read_json(path, "shard index").get("weight_map", {}).values())
            if not shards or not all((folder / s).is_file() for s in shards):
                continue
        return path
    return None


def is_path(ref: str) -> bool:
    """Whether ``ref`` names a folder: only an explicit path (``/…``, ``./…``, ``../…``,
    ``~…``, ``C:…``) does; anything else is a hub id, so a hub id can never reach a folder of
    the machine by being a relative path that happens to exist."""
    return ref.startswith(("/", "./", "../", "~", ".\\")) or (len(ref) > 1 and ref[1] == ":")


def _folder_of(ref: str) -> Path | None:
    """The local folder ``ref`` names, None for a hub id; refuses anything else."""
    if is_path(ref):
        path = Path(ref).expanduser()
        if path.is_dir():
            return path
        raise ModelError(
            f"hf:{ref}: no such folder; give a folder with config.json and model.safetensors "
            "(a relative folder as ./NAME)"
        )
    check_repo_id(ref, f"hf:{ref}")
    return None


def _cached(ref: str, name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(ref, name)
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _source_in(folder: Path, origin: str) -> Source:
    config_path = folder / _CONFIG
    if not config_path.is_file():
        raise ModelError(f"the folder {folder} has no config.json: not a transformers model")
    processor_path = folder / _PROCESSOR
    return Source(
        folder=folder,
        origin=origin,
        config=_read_json(config_path, "config.json"),
        processor=_read_json(processor_path, _PROCESSOR) if processor_path.is_file() else None,
        weights=_weights_in(folder),
    )


def _local_source(ref: str) -> Source | None:
    """The files of a folder or of the hub cache (None when the cache lacks the config)."""
    folder = _folder_of(ref)
    if folder is not None:
        return _source_in(folder, "file")
    hit = _cached(ref, _CONFIG)
    return None if hit is None else _source_in(hit.parent, "cache")


def _require_hub(ref: str) -> str:
    """The hub page of ``ref`` if the hub answers now; a fast, clear error if not."""
    where = f"{hub_endpoint()}/{ref}"
    require_reachable(
        where,
        f"model hf:{ref} is",
        "give a local folder with config.json and model.safetensors: --model hf:FOLDER",
    )
    return where


def _hub_error(ref: str, err: Exception) -> ModelError:
    name = type(err).__name__
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return ModelError(
            f"hf:{ref}: no such model on the Hugging Face hub, or it is private or gated "
            "(log in with `hf auth login` and accept its terms on the hub)"
        )
    first = (str(err).strip().splitlines() or [name])[0][:200]
    return WeightsError(f"could not download hf:{ref}: {first}")


def download_weights(
    ref: str,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    weights: bool = True,
) -> Path:
    """Download a hub model's config, image processor config and (``weights``) its weights
    into the Hugging Face cache, reporting the weights' bytes as
    ``progress(bytes_done, bytes_total)``; returns the snapshot folder.

    The config is checked (custom code, refused architectures) before any weights come.

    Raises:
        WeightsError: the hub cannot be reached or the download failed; ModelError: refused.
    """
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from tqdm.auto import tqdm

    _require_hub(ref)

    class Reporter(tqdm):  # huggingface_hub drives it; we forward the byte counts
        done = 0

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            if progress is not None:
                progress(self.done, int(self.total) if self.total else None)
            return super().update(n)

    def fetch(name: str, report: bool = False) -> Path | None:
        try:
            kwargs = {"tqdm_class": Reporter} if report else {}
            return Path(huggingface_hub.hf_hub_download(ref, name, **kwargs))
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):  # the hub went away meanwhile
                raise _hub_error(ref, e) from None
            return None  # the repository has no such file
        except Exception as e:  # any other failure is one clear message
            raise _hub_error(ref, e) from None

    config = fetch(_CONFIG)
    if config is None:
        raise ModelError(f"hf:{ref} has no config.json: it is not a transformers model")
    raw = _read_json(config, "config.json")
    check_config(raw, ref)
    fetch(_PROCESSOR)
    if weights:
        # the files may not be bigger than the config's model in float32 (plus a margin):
        # a small config beside a huge file never fills this machine's disk
        limit = int(4 * _count(raw, ref) * 1.1) + 32 * 2**20
        for name in _WEIGHTS:
            if name.endswith(".index.json"):
                got = fetch(name)
                if got is None:
                    continue
                shards = sorted(set(_read_json(got, "shard index")["weight_map"].values()))
                check_download_size(ref, shards, limit)
                for shard in shards:
                    fetch(shard, report=True)
                break
            if check_download_size(ref, [name], limit) == 0:
                continue  # the repository has no such file
            got = fetch(name, report=True)
            if got is not None:
                break
        else:
            raise WeightsError(
                f"hf:{ref} has no model.safetensors (nor pytorch_model.bin) on the hub"
            )
    return config.parent


def resolve(ref: str, *, weights: bool = True) -> Source:
    """The files of ``ref``: its folder, the hub cache, or (when reachable) the hub, which
    then downloads the config, and the weights too when ``weights``."""
    src = _local_source(ref)
    if src is not None and (src.origin == "file" or src.weights is not None or not weights):
        return src
    return _source_in(download_weights(ref, weights=weights), "hub")


# -- preprocessing ----------------------------------------------------------------------


def _size_of(value: Any, square: bool) -> tuple[str, tuple[int, int]] | None:
    """``("squash", (h, w))`` or ``("short", (s, s))`` from a processor's ``size``."""
    if isinstance(value, int | float):
        return ("squash" if square else "short"), (int(value), int(value))
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return "squash", (int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            s = int(value["shortest_edge"])
            return "short", (s, s)
    return None


def _channels(value: Any) -> list[float]:
    """Three per-channel numbers (one number stands for all three)."""
    if isinstance(value, int | float):
        return [float(value)] * 3
    return [float(v) for v in value]


def _crop_pct(crop: int, resized: int) -> float:
    """timm's crop fraction: ``floor(crop / pct) == resized`` exactly."""
    pct = crop / resized
    if math.floor(crop / pct) != resized:
        pct = crop / (resized + 0.5)
    return pct


def data_config(
    processor: dict[str, Any] | None,
    model_hw: tuple[int, int],
    patch: tuple[int, int],
    interpolates: bool,
) -> tuple[dict[str, Any], list[str]]:
    """timm's data config from an image processor config, and notes on what it assumed.

    ``size``/``crop_size``/``do_center_crop`` become ``input_size``, ``crop_pct`` and
    ``crop_mode`` (``{"height", "width"}`` resizes both sides: timm's ``squash``;
    ``{"shortest_edge"}`` keeps the aspect: ``center``); ``resample`` the interpolation;
    ``image_mean``/``image_std`` (with ``rescale_factor`` folded in) the normalization.
    Without a processor config, ViTImageProcessor's defaults: both sides to the model's size,
    bilinear, mean and std 0.5.
    """
    notes: list[str] = []
    pp = processor or {}
    if processor is None:
        notes.append(
            "no preprocessor_config.json: ViTImageProcessor's defaults assumed (both sides "
            "resized to the model's size, bilinear, mean and std 0.5)"
        )
    kind = str(pp.get("image_processor_type") or pp.get("feature_extractor_type") or "")
    square = not any(k in kind for k in ("Bit", "CLIP", "ConvNext"))
    resize = _size_of(pp.get("size"), square) if pp.get("do_resize", True) else None
    crop = _size_of(pp.get("crop_size"), True) if pp.get("do_center_crop", False) else None
    mode, resized = resize if resize is not None else ("squash", model_hw)
    out_hw = crop[1] if crop is not None else resized
    if mode == "short" and crop is None:
        notes.append("the processor keeps the aspect without a crop: vitviz crops the centre")
    if interpolates and out_hw[0] % patch[0] == 0 and out_hw[1] % patch[1] == 0:
        input_hw = out_hw  # DINOv2/v3 run at the processor's size
    else:
        input_hw = model_hw
        if out_hw != model_hw:
            notes.append(
                f"the processor gives {out_hw[0]}×{out_hw[1]} px but the model takes "
                f"{model_hw[0]}×{model_hw[1]}: vitviz resizes to the model's size"
            )
    pct = _crop_pct(out_hw[0], resized[0]) if crop is not None else 1.0
    if crop is not None and abs(out_hw[1] / resized[1] - out_hw[0] / resized[0]) > 1e-6:
        notes.append("the crop keeps different fractions of height and width: heights used")
    resample = pp.get("resample", 2)
    interpolation = (
        _PIL_RESAMPLE.get(int(resample), "bilinear")
        if isinstance(resample, int | float)
        else str(resample).lower()
        if str(resample).lower() in _PIL_RESAMPLE.values()
        else "bilinear"
    )
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    if pp.get("do_normalize", True):
        mean, std = _channels(pp.get("image_mean", mean)), _channels(pp.get("image_std", std))
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    rescale = float(pp.get("rescale_factor", 1 / 255)) if pp.get("do_rescale", True) else 1.0
    if abs(rescale * 255 - 1) > 1e-9:  # (x·255·r − m)/s = (x − m/(255r)) / (s/(255r))
        k = 255 * rescale
        mean, std = [m / k for m in mean], [s / k for s in std]
    cfg = {
        "input_size": (3, int(input_hw[0]), int(input_hw[1])),
        "interpolation": interpolation,
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": pct,
        "crop_mode": "squash" if mode == "squash" else "center",
    }
    return cfg, notes


# -- building ---------------------------------------------------------------------------


def _config_object(raw: dict[str, Any]) -> Any:
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
    config._attn_implementation = "eager"
    return config


def _model_class(arch: Architecture, config: Any) -> tuple[type, bool]:
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


def parameter_count(ref: str) -> int:
    """Parameters and buffers of ``ref``'s model, counted on the meta device from its config
    alone (no weights read or downloaded; the config may come from the hub)."""
    require_transformers()
    return _parameter_count(resolve(ref, weights=False), ref)


def check_download_size(ref: str, names: list[str], limit: int) -> int:
    """The bytes of ``names`` in the hub repository ``ref`` (0 for files it lacks), asked
    before downloading; a :class:`WeightsError` when they pass ``limit``."""
    import huggingface_hub

    try:
        infos = huggingface_hub.HfApi().get_paths_info(ref, names)
    except Exception as e:  # the hub went away, or refused the question
        raise _hub_error(ref, e) from None
    total = sum(int(getattr(info, "size", 0) or 0) for info in infos)
    if total > limit:
        raise WeightsError(
            f"hf:{ref}: its weights files hold {total / 2**20:,.0f} MiB, more than its config's "
            f"model can need ({limit / 2**20:,.0f} MiB); not downloaded"
        )
    return total


def _parameter_count(src: Source, ref: str) -> int:
    return _count(src.config, ref)


def _count(raw: dict[str, Any], ref: str) -> int:
    """Parameters and buffers of the model a config describes (meta device, no weights)."""
    arch = check_config(raw, ref)
    config = _config_object(raw)
    cls, _ = _model_class(arch, config)
    with torch.device("meta"):
        model = cls(config)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def weights_plan(ref: str) -> str:
    """One line saying where ``ref``'s weights would come from now (no network used)."""
    try:
        src = _local_source(ref)
    except ModelError as e:
        return str(e)
    if src is not None and src.weights is not None:
        if src.origin == "file":
            return f"local folder ({src.weights})"
        return f"Hugging Face cache ({src.weights})"
    if src is not None and src.origin == "file":
        return f"local folder {src.folder} has no model.safetensors: add the weights"
    return f"download on first use from {hub_endpoint()}/{ref}"


def _missing(info: dict[str, Any], pool: str) -> list[str]:
    """Weights the checkpoint lacks (the unused pooler of a CLS-readout backbone is fine)."""
    missing = [str(k) for k in info.get("missing_keys") or []]
    if pool == "token":
        missing = [k for k in missing if "pooler" not in k.split(".")]
    return missing


def build(
    src: Source, ref: str, *, random_weights: bool = False
) -> tuple[HFViT, dict[str, Any], list[str]]:
    """The adapter over ``src``'s model (its weights, or random ones), the data config and
    notes (what the readout leaves out, what the preprocessing assumed)."""
    arch = check_config(src.config, ref)
    config = _config_object(src.config)
    if getattr(config, "n_cls_tokens", 1) != 1:
        raise ModelError(f"hf:{ref} has several class tokens, which vitviz cannot lay out")
    cls, classifier = _model_class(arch, config)
    if random_weights:
        with _quiet():
            model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    else:
        model = _pretrained(cls, src, ref, config, arch)
    model = model.float().eval()
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl != "eager":
        raise ModelError(f"hf:{ref}: transformers chose {impl} attention, not eager")
    patch = _pair(config.patch_size)
    cfg, notes = data_config(src.processor, _pair(config.image_size), patch, arch.interpolates)
    hw = (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    adapter = HFViT(model, arch, ref, hw, classifier)
    _check_structure(adapter, ref)
    extra = readout_note(type(model).__name__)
    return adapter, cfg, [*([extra] if extra else []), *notes]


def _pretrained(cls: type, src: Source, ref: str, config: Any, arch: Architecture) -> nn.Module:
    """``cls`` with the weights of ``src`` (safetensors, or a ``weights_only`` pickle)."""
    if src.weights is None:
        raise WeightsError(
            f"hf:{ref}: no model.safetensors (or pytorch_model.bin) in {src.folder}; "
            "add the weights, or pass --random-weights for an architecture test"
        )
    try:
        with _quiet():
            model, info = cls.from_pretrained(
                str(src.folder),
                config=config,
                attn_implementation="eager",
                dtype=torch.float32,
                local_files_only=True,
                trust_remote_code=False,
                output_loading_info=True,
            )
    except Exception as e:  # unsafe pickles, broken files, shapes: one clear message
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        if "weights only load failed" in text.lower():
            raise WeightsError(
                f"hf:{ref}: refused {src.weights.name}: the pickle holds more than tensors "
                "(pickled code or objects), which could run code on this machine; convert it "
                "to model.safetensors from a trusted environment"
            ) from None
        if "ignore_mismatched_sizes" in text:
            raise WeightsError(
                f"the weights in {src.folder} have tensors of another shape than config.json "
                "describes (another number of classes or layer width?); check they belong "
                "together"
            ) from None
        first = (text.splitlines() or [type(e).__name__])[0][:300]
        raise WeightsError(f"could not load the weights of hf:{ref}: {first}") from None
    missing = _missing(info, arch.pool)
    if missing:
        raise WeightsError(
            f"the weights in {src.folder} do not fit {cls.__name__}: {len(missing)} tensors "
            f"missing ({', '.join(missing[:3])}…); check config.json matches the weights"
        )
    return model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No transformers progress bars or loading reports on the console while building (vitviz
    checks the loading report itself)."""
    from transformers.utils import logging as tf_logging

    bars, level = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(level)
        if bars:
            tf_logging.enable_progress_bar()


def _check_structure(adapter: HFViT, ref: str) -> None:
    """Every layer has the attention module the capture hooks."""
    blocks = adapter.blocks
    ok = isinstance(blocks, nn.ModuleList) and len(blocks) > 0
    for blk in blocks if ok else []:
        try:
            blk.get_submodule(HOOK)
        except AttributeError:
            ok = False
    if not ok:
        raise ModelError(f"hf:{ref}: its layers do not have the attention vitviz captures")


def labels_of(config: Any, classifier: bool) -> list[str] | None:
    """Class names from ``config.id2label`` (None for a backbone)."""
    if not classifier:
        return None
    n = int(config.num_labels)
    names = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [names.get(i, f"class {i}") for i in range(n)]


def load(
    ref: str,
    *,
    key: str | None = None,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    device: str = "auto",
    precision: Precision = "auto",
    max_params: int | None = None,
) -> LoadedModel:
    """Load ``hf:<ref>`` (a hub id or a local folder) ready for capture.

    Args:
        ref: hub id (``google/vit-base-patch16-224``) or folder with ``config.json`` and
            ``model.safetensors`` (``preprocessor_config.json`` gives the preprocessing).
        key: the curated key naming it, if any.
        weights: refused: a transformers model's weights live in its folder.
        random_weights: build from the config alone (architecture tests; flagged).
        device, precision: as :func:`vitviz.models.load_model`.
        max_params: refuse larger models, counted from the config before any weights.

    Raises:
        ModelError / WeightsError with a message that says what to do.
    """
    if weights is not None:
        raise ModelError(
            "--weights takes a timm weights file; a Hugging Face model's weights live in its "
            "folder: put model.safetensors beside config.json and pass --model hf:FOLDER"
        )
    require_transformers()
    name = key or (f"hf:{Path(ref).name}" if is_path(ref) else f"hf:{ref}")  # no server paths
    src = resolve(ref, weights=False)  # the config first: refusals and size before weights
    arch = check_config(src.config, ref)
    if max_params is not None:
        _check_size(name, _parameter_count(src, ref), max_params)
    if not random_weights and src.weights is None and src.origin != "file":
        src = resolve(ref)
    adapter, cfg, notes = build(src, ref, random_weights=random_weights)
    note = "; ".join([EAGER_NOTE, *notes])
    if random_weights:
        info = WeightsInfo("random", "", RANDOM_WARNING, note)
    elif src.origin == "hub":
        info = WeightsInfo("hub", f"{hub_endpoint()}/{ref}", None, note)
    else:
        info = WeightsInfo(src.origin, src.location, None, note)
    dev = pick_device(device)
    prec = pick_precision(dev, precision)
    if key in CURATED:
        title = CURATED[key].title
    else:
        where = src.folder.name if src.origin == "file" else ref
        title = f"{where} ({arch.title}, Hugging Face)"
    return LoadedModel(
        name=name,
        title=title,
        model=adapter.to(dev),
        data_config=cfg,
        labels=labels_of(adapter.hf.config, adapter.is_classifier),
        weights=info,
        device=dev,
        precision=prec,  # type: ignore[arg-type]
        keep_aspect=False,
        hook=HOOK,
    )
