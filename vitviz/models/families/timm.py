"""The timm family, the default one (names without a prefix): curated keys and titles, and any
global-attention timm ViT name.

Weights come from, in this order: a local file the user names (read by
:func:`~vitviz.models.load_model`), random weights, the bundled demo weights, the Hugging Face
cache, or the hub through timm's own pretrained loading. Preprocessing comes from the model's
own pretrained config (``timm.data.resolve_model_data_config``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_model_data_config
from torch import nn

from vitviz.errors import ModelError, WeightsError
from vitviz.models.checks import no_pretrained_weights, weights_mismatch
from vitviz.models.families import Built, Family, Progress, Request, register
from vitviz.models.hub import cached_weights, download_location, require_reachable
from vitviz.models.registry import CURATED, check_structure, family_of, resolve_name
from vitviz.models.weights import classes_of, depth_of, read_state_dict
from vitviz.results import WeightsInfo

DEMO_NOTE = (
    "the demo model was trained by vitviz on synthetic scenes of 8 textures (stripes, dots, "
    "checkerboard …), not on photos: it answers with texture names"
)


def parameter_count(name: str, model_kwargs: dict[str, Any] | None = None) -> int:
    """Parameters and buffers of a model, counted on the meta device (nothing allocated).

    Takes about 0.05–0.2 s, even for a 1.8-billion-parameter ViT.
    """
    _, timm_name, kwargs = resolve_name(name)
    kwargs.update(model_kwargs or {})
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def labels_for(model: nn.Module, meta: dict[str, str] | None = None) -> list[str] | None:
    """Class names: from safetensors metadata ``vitviz_labels``, ImageNet, or class numbers."""
    n = int(getattr(model, "num_classes", 0) or 0)
    if n == 0:
        return None
    if meta and "vitviz_labels" in meta:
        try:
            labels = json.loads(meta["vitviz_labels"])
        except json.JSONDecodeError:
            labels = None  # a malformed label list falls back to the numbers below
        if isinstance(labels, list) and len(labels) == n:
            return [str(x) for x in labels]
    subset = infer_imagenet_subset(model)
    if subset:
        info = ImageNetInfo(subset)
        return [info.index_to_description(i) for i in range(n)]
    return [f"class {i}" for i in range(n)]


def weights_plan(name: str) -> str:
    """One line saying where a model's weights would come from now (no network used)."""
    key, timm_name, _ = resolve_name(name)
    spec = CURATED.get(key)
    if spec is not None and spec.bundled is not None:
        if spec.bundled.is_file():
            return f"bundled with vitviz ({spec.bundled.name}, works offline)"
        return "bundled weights missing: python -m vitviz.demo.train"
    hit = cached_weights(timm_name)
    if hit is not None:
        return f"Hugging Face cache ({hit})"
    where = download_location(timm_name)
    if where is None:
        return "no pretrained weights in timm: pass --weights FILE"
    return f"download on first use from {where}"


def download_weights(name: str, progress: Progress | None = None) -> Path | None:
    """Download a model's hub weights into the Hugging Face cache, reporting progress.

    Returns the cached file, or None when the weights are not on the Hugging Face hub (timm
    then downloads them itself from their URL, without progress). Raises WeightsError when it
    fails.
    """
    from huggingface_hub import hf_hub_download
    from tqdm.auto import tqdm

    _, timm_name, _ = resolve_name(name)
    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not repo:
        return None

    class Reporter(tqdm):  # huggingface_hub drives it; we forward the byte counts
        done = 0  # counted here: a disabled tqdm (HF_HUB_DISABLE_PROGRESS_BARS) keeps no n

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            if progress is not None:
                progress(self.done, int(self.total) if self.total else None)
            return super().update(n)

    errors = []
    for fname in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, fname, tqdm_class=Reporter))
        except Exception as e:  # any failure becomes one clear message
            errors.append(f"{fname}: {str(e).strip().splitlines()[0][:200] if str(e) else e!r}")
    raise WeightsError(f"could not download the weights of {timm_name}: {'; '.join(errors)}")


def require_hub(timm_name: str, key: str) -> WeightsInfo:
    """Where timm will download the weights from, if it answers now; a fast, clear error
    when timm knows no weights or the hub cannot be reached."""
    where = download_location(timm_name)
    if where is None:
        raise no_pretrained_weights(f"timm has no pretrained weights for {timm_name}")
    require_reachable(
        where,
        f"model {key}: the weights {timm_name} are",
        "pass --weights FILE with a local .safetensors/.pth file",
        by_file=True,
    )
    return WeightsInfo("hub", where)


def build(req: Request) -> Built:
    """The timm ViT of ``req`` with its weights (a file's, random, bundled, cached or the
    hub's), checked to expose what capture needs."""
    key, timm_name, kwargs = resolve_name(req.name)
    spec = CURATED.get(key)
    kwargs.update(req.model_kwargs)
    cfg_overlay = dict(spec.cfg_overlay) if spec is not None else {}
    if req.keep_aspect:
        kwargs["dynamic_img_size"] = True
    meta: dict[str, str] = {}
    if req.weights is not None:
        sd, meta, info = req.weights.state_dict, req.weights.meta, req.weights.info
    elif spec is not None and spec.bundled is not None:
        if not spec.bundled.is_file():
            raise WeightsError(
                f"the bundled weights of {key} are missing ({spec.bundled}); "
                "train them with: python -m vitviz.demo.train"
            )
        sd, meta = read_state_dict(spec.bundled)
        info = WeightsInfo("bundled", str(spec.bundled), note=DEMO_NOTE)
    else:
        hit = cached_weights(timm_name)
        if hit is not None:
            sd, meta = read_state_dict(hit)
            info = WeightsInfo("cache", str(hit))
        else:
            sd = None
            info = require_hub(timm_name, key)
    try:
        if sd is not None:
            nc = kwargs.pop("num_classes", classes_of(sd))
            if "depth" not in kwargs and depth_of(sd) is not None:
                kwargs["depth"] = depth_of(sd)  # a file may hold a shallower variant
            overlay = {**cfg_overlay, "state_dict": sd, "num_classes": nc}
            model = timm.create_model(
                timm_name, pretrained=True, num_classes=nc, pretrained_cfg_overlay=overlay, **kwargs
            )
        else:
            if cfg_overlay:
                kwargs["pretrained_cfg_overlay"] = cfg_overlay
            model = timm.create_model(timm_name, pretrained=info.source == "hub", **kwargs)
    except TypeError as e:
        if req.keep_aspect:
            raise ModelError(
                f"{timm_name} cannot take non-square input (no dynamic_img_size)"
            ) from None
        raise ModelError(f"{timm_name} does not accept these settings: {e}") from None
    except (RuntimeError, KeyError, ValueError) as e:
        raise weights_mismatch(info.location or info.source, timm_name, str(e)) from None
    except OSError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise WeightsError(f"could not fetch weights for {timm_name}: {first}") from None
    model.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights
    _, module_family = family_of(timm_name.split(".", 1)[0])
    hook = module_family.hook if module_family is not None else "attn.attn_drop"
    check_structure(model, timm_name, hook)
    data_config = resolve_model_data_config(model)
    # The pretrained config may name another size (DINOv2: 518 px); the model's own wins.
    data_config["input_size"] = (3, *(int(s) for s in model.patch_embed.img_size))
    return Built(
        name=key,
        title=timm_name,
        model=model,
        data_config=data_config,
        labels=labels_for(model, meta),
        weights=info,
        hook=hook,
    )


def _check(name: str) -> None:
    resolve_name(name)  # unknown names and refused attention families


TIMM = register(
    Family(
        name="timm",
        prefix=None,
        build=build,
        count=parameter_count,
        plan=weights_plan,
        download=download_weights,
        check=_check,
        weights_file=True,
        creation_args=True,
    )
)
