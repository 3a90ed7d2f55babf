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

The concerns live in their own modules: :mod:`~vitviz.models.hf_architectures` (the table of
supported and refused model types), :mod:`~vitviz.models.hf_config` (a config's checks and
class), :mod:`~vitviz.models.hf_files` (folder, cache, hub), :mod:`~vitviz.models.hf_preprocess`
(the image processor as timm's data config), :mod:`~vitviz.models.hf_adapter` (:class:`HFViT`);
this module builds and loads, and :mod:`vitviz.models.families.hf` registers the family.

Supported (:data:`ARCHITECTURES`): ViT, DeiT (distilled too), BEiT, Data2Vec-Vision, DINOv2,
DINOv2 with registers, DINOv3 (ViT), ViT-MSN and I-JEPA. Windowed, hierarchical and pooled
architectures are refused with the reason (:data:`REFUSED`), as for timm.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vitviz.errors import ModelError, WeightsError
from vitviz.models.device import Precision
from vitviz.models.families import Built, Request
from vitviz.models.hf_adapter import HOOK, HFViT, PatchEmbedView, pair, readout_note
from vitviz.models.hf_architectures import ARCHITECTURES, REFUSED, Architecture
from vitviz.models.hf_config import (
    check_config,
    config_object,
    count_parameters,
    model_class,
    require_transformers,
)
from vitviz.models.hf_files import (
    Source,
    check_download_size,
    download_weights,
    is_path,
    local_source,
    resolve,
)
from vitviz.models.hf_preprocess import data_config
from vitviz.models.hub import hub_endpoint
from vitviz.models.registry import CURATED
from vitviz.results import WeightsInfo

if TYPE_CHECKING:
    from vitviz.models.loading import LoadedModel

__all__ = [
    "ARCHITECTURES",
    "EAGER_NOTE",
    "HOOK",
    "NO_WEIGHTS_FILE",
    "REFUSED",
    "Architecture",
    "HFViT",
    "PatchEmbedView",
    "Source",
    "build",
    "build_adapter",
    "check_config",
    "check_download_size",
    "data_config",
    "download_weights",
    "is_path",
    "labels_of",
    "load",
    "parameter_count",
    "readout_note",
    "require_transformers",
    "resolve",
    "shown_name",
    "weights_plan",
]

EAGER_NOTE = (
    "Hugging Face transformers model run with attn_implementation='eager' (the attention "
    "probabilities the model multiplies with; SDPA/flash kernels never materialize them)"
)
NO_WEIGHTS_FILE = (
    "--weights takes a timm weights file; a Hugging Face model's weights live in its "
    "folder: put model.safetensors beside config.json and pass --model hf:FOLDER"
)


def shown_name(name: str, ref: str) -> str:
    """The name of ``hf:<ref>`` in messages and results: a curated key, or the hub id, or a
    folder by its name only (never a path of the machine)."""
    if name in CURATED:
        return name
    return f"hf:{Path(ref).name}" if is_path(ref) else f"hf:{ref}"


def parameter_count(ref: str) -> int:
    """Parameters and buffers of ``ref``'s model, counted on the meta device from its config
    alone (no weights read or downloaded; the config may come from the hub)."""
    require_transformers()
    return count_parameters(resolve(ref, weights=False).config, ref)


def weights_plan(ref: str) -> str:
    """One line saying where ``ref``'s weights would come from now (no network used)."""
    try:
        src = local_source(ref)
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


def build_adapter(
    src: Source, ref: str, *, random_weights: bool = False
) -> tuple[HFViT, dict[str, Any], list[str]]:
    """The adapter over ``src``'s model (its weights, or random ones), the data config and
    notes (what the readout leaves out, what the preprocessing assumed)."""
    arch = check_config(src.config, ref)
    config = config_object(src.config)
    if getattr(config, "n_cls_tokens", 1) != 1:
        raise ModelError(f"hf:{ref} has several class tokens, which vitviz cannot lay out")
    cls, classifier = model_class(arch, config)
    if random_weights:
        with _quiet():
            model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    else:
        model = _pretrained(cls, src, ref, config, arch)
    model = model.float().eval()
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl != "eager":
        raise ModelError(f"hf:{ref}: transformers chose {impl} attention, not eager")
    patch = pair(config.patch_size)
    cfg, notes = data_config(src.processor, pair(config.image_size), patch, arch.interpolates)
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


def build(req: Request) -> Built:
    """The adapter over ``hf:<ref>``'s model (a hub id or a local folder) with its weights (or
    random ones), read config first: refusals before any weights are downloaded.

    Raises:
        ModelError / WeightsError with a message that says what to do.
    """
    ref = req.ref
    require_transformers()
    src = resolve(ref, weights=False)  # the config first: refusals before weights
    arch = check_config(src.config, ref)
    random_weights = req.weights is not None  # no weights file: given weights are random
    if not random_weights and src.weights is None and src.origin != "file":
        src = resolve(ref)
    adapter, cfg, notes = build_adapter(src, ref, random_weights=random_weights)
    note = "; ".join([EAGER_NOTE, *notes])
    if req.weights is not None:
        info = WeightsInfo("random", "", req.weights.info.warning, note)
    elif src.origin == "hub":
        info = WeightsInfo("hub", f"{hub_endpoint()}/{ref}", None, note)
    else:
        info = WeightsInfo(src.origin, src.location, None, note)
    where = src.folder.name if src.origin == "file" else ref
    return Built(
        name=shown_name(req.name, ref),
        title=f"{where} ({arch.title}, Hugging Face)",
        model=adapter,
        data_config=cfg,
        labels=labels_of(adapter.hf.config, adapter.is_classifier),
        weights=info,
        hook=HOOK,
    )


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
    """Load ``hf:<ref>`` (a hub id or a local folder) ready for capture: the curated ``key``
    naming it, if any, else ``hf:<ref>``, through :func:`vitviz.models.load_model`."""
    from vitviz.models.loading import load_model

    return load_model(
        key or f"hf:{ref}",
        weights=weights,
        random_weights=random_weights,
        device=device,
        precision=precision,
        max_params=max_params,
    )
