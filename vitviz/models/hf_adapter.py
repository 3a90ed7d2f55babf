"""The timm-like adapter over a transformers ViT: :class:`HFViT` exposes the attributes the
engine reads from a timm ViT (``blocks``, ``patch_embed``, ``num_prefix_tokens``,
``cls_token``, ``global_pool`` …) over the transformers modules, registered once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitviz.models.hf_architectures import Architecture
from vitviz.models.hf_files import is_path

HOOK = "attention"  # in each encoder layer: the module returning (output, probabilities)


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
        patch = pair(config.patch_size)
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


def pair(v: Any) -> tuple[int, int]:
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
