"""Result types that cross every boundary (engine → page, server → client), numpy only.

Nothing here imports torch, timm or Streamlit, so the HTTP client, the wire format, the
page's state and its downloads can use these types without loading a model library:

* :class:`Prediction`, :class:`ImageExplanation`, :class:`ClassExplanation`: what a backend
  returns for an image;
* :class:`ClassRelevance`: what the class-specific methods read of one class's attention
  gradients (see below);
* :class:`WeightsInfo`, :class:`ModelInfo`: what a backend says about its model;
* :class:`Anatomy`: the model's patch-embedding filters and position-embedding similarity;
* :class:`TokenEmbeddings`, :class:`TokenFeatures`: one image's vectors going into the encoder
  and coming out of it.

``ClassRelevance``: the full ``[L, H, N, N]`` gradient ``G = ∂y_c/∂A`` is H/3 times larger
than what the maps need (4× for ViT-B/16's 12 heads), so the engine reduces it right after
each backward pass and only this travels and is cached:

* ``chefer``: the readout row of Chefer et al.'s relevance (the method has no options);
* ``fused[f, l]``: ``fuse_f(A_l ⊙ G_l)⁺`` for each head fusion f (mean, max, min): what
  gradient rollout multiplies through the layers (discard and start layer are applied later);
* ``heads[l, h]``: the readout row of ``(A_l^h ⊙ G_l^h)⁺`` (attention × gradient, one head);
* ``fused_rows[f, l]``: the readout row of ``fuse_f((A_l ⊙ G_l)⁺)`` (attention × gradient,
  heads fused after the clamp).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from vitviz.layout import TokenLayout

FEATURE_NORM = -1
"""The "class" of a backbone without a classifier: the norm of its readout feature."""
FEATURE_NORM_LABEL = "‖readout feature‖"


def flatten_patch(
    pixels: np.ndarray, patch: int, grid: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """The P²·C values of one patch of a ``[C, H, W]`` input, in the patch embedding's order
    (channel, then row, then column: the order of the convolution's weights)."""
    ph, pw = size
    r, c = divmod(int(patch), grid[1])
    return pixels[:, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw].reshape(-1)


FUSION_ORDER: tuple[str, ...] = ("mean", "max", "min")
"""The order of the fusion axis of :attr:`ClassRelevance.fused` and ``fused_rows``."""


@dataclass(frozen=True)
class Prediction:
    """One class prediction."""

    index: int
    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"index": self.index, "label": self.label, "probability": self.probability}


@dataclass
class ImageExplanation:
    """Everything one image's forward pass gives.

    Attributes:
        image: RGB uint8 ``H×W×3``, exactly the pixels the model saw.
        layout: token layout of this input.
        attention: ``[L, H, N, N]`` attention probabilities (float32, rows sum to 1).
        logits: ``[C]`` pre-softmax scores, or None without a classifier.
        predictions: top-k classes (empty without a classifier).
    """

    image: np.ndarray
    layout: TokenLayout
    attention: np.ndarray
    logits: np.ndarray | None
    predictions: list[Prediction] = field(default_factory=list)


@dataclass
class ClassRelevance:
    """The parts of ``∂y_c/∂A`` (with the attention) that the class-specific maps read.

    Attributes:
        index: the class explained.
        label: its name.
        layers: the layers whose gradients were computed (the others hold zeros).
        chefer: ``[L, N, N]`` Chefer's ``Ā_l = mean_h((A ⊙ G)⁺)`` (zeros where not computed).
        fused: ``[3, L, N, N]`` ``fuse_f(A ⊙ G)`` clamped at 0, f in :data:`FUSION_ORDER`.
        heads: ``[L, H, N]`` readout rows of ``(A ⊙ G)⁺`` per head.
        fused_rows: ``[3, L, N]`` readout rows of ``fuse_f((A ⊙ G)⁺)``.
        negative: G is ``-∂y_c/∂A`` ("why not" the class: the negative part of ``A ⊙ ∂y_c/∂A``).
    """

    index: int
    label: str
    layers: tuple[int, ...]
    chefer: np.ndarray
    fused: np.ndarray
    heads: np.ndarray
    fused_rows: np.ndarray
    negative: bool = False

    @property
    def num_layers(self) -> int:
        """Layers of the model (computed or not)."""
        return int(self.heads.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        arrays = (self.chefer, self.fused, self.heads, self.fused_rows)
        return sum(int(a.nbytes) for a in arrays)

    def only(self, layers: list[int] | tuple[int, ...]) -> ClassRelevance:
        """A copy restricted to ``layers`` (the others zeroed)."""
        keep = tuple(sorted(set(layers) & set(self.layers)))
        mask = np.zeros(self.num_layers, dtype=bool)
        mask[list(keep)] = True
        return ClassRelevance(
            index=self.index,
            label=self.label,
            layers=keep,
            chefer=np.where(mask[:, None, None], self.chefer, 0).astype(self.chefer.dtype),
            fused=np.where(mask[None, :, None, None], self.fused, 0).astype(self.fused.dtype),
            heads=np.where(mask[:, None, None], self.heads, 0).astype(self.heads.dtype),
            fused_rows=np.where(mask[None, :, None], self.fused_rows, 0).astype(
                self.fused_rows.dtype
            ),
            negative=self.negative,
        )


@dataclass
class ClassExplanation:
    """An explanation plus what the class-specific methods need for some of its classes.

    Attributes:
        explanation: predictions, layout, image and attention of the same forward pass.
        classes: the class indices explained, in order.
        labels: their names.
        relevance: one :class:`ClassRelevance` per class: the parts of ``∂y_c/∂A`` the maps
            read (pass it as ``grads`` to any class-specific method).
        gradients: ``[K, L, H, N, N]`` float32 ``∂y_c/∂A`` for each class (pre-softmax logit;
            layers not asked for are 0), only when asked for (``full_gradients=True``):
            about H/3 times the size of the relevance (4× for 12 heads).
    """

    explanation: ImageExplanation
    classes: list[int]
    labels: list[str]
    relevance: list[ClassRelevance]
    gradients: np.ndarray | None = None


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from.

    Attributes:
        source: ``file``, ``cache``, ``hub``, ``random`` or ``bundled``.
        location: the file, cache file or hub address.
        warning: shown in large letters (random weights).
        note: shown beside the model (the demo model's limits).
    """

    source: str
    location: str
    warning: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "source": self.source,
            "location": self.location,
            "warning": self.warning,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsInfo:
        """The inverse of :meth:`to_dict`."""
        return cls(
            str(data.get("source", "")),
            str(data.get("location") or ""),
            data.get("warning"),
            data.get("note"),
        )


@dataclass(frozen=True)
class ModelInfo:
    """What a backend says about its model (the ``/v1/model`` description, typed).

    Attributes:
        name: curated key or timm name the model was asked for by.
        title: the name shown to people.
        timm_name: ``architecture.tag`` of the timm model.
        weights: where its weights came from.
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        device_name: the GPU's name, ``Apple GPU (MPS)`` or ``CPU``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        layers: transformer blocks.
        heads: attention heads per block.
        classes: classifier outputs (0 for a backbone).
        keep_aspect: the model takes non-square input.
        patch_size: input pixels per token along (y, x).
        input_config: the model's preprocessing (``input_size``, ``interpolation``, ``mean``,
            ``std``, ``crop_pct``, ``crop_mode``).
        backend: ``in-process`` or the server's URL.
        label_set: for typed classes (CLIP), a digest of the labels and prompt template (a
            model with other labels gives other logits); empty for fixed classes.
    """

    name: str
    title: str
    timm_name: str
    weights: WeightsInfo
    device: str
    device_name: str
    precision: str
    layers: int
    heads: int
    classes: int
    keep_aspect: bool
    patch_size: tuple[int, int]
    input_config: dict[str, Any]
    backend: str = "in-process"
    label_set: str = ""

    @property
    def device_label(self) -> str:
        """The device in words: ``GPU: <name> (<precision>)``, ``Apple GPU (MPS)`` or ``CPU``."""
        if self.device.startswith("cuda"):
            return f"GPU: {self.device_name} ({self.precision})"
        return self.device_name

    @property
    def remote(self) -> bool:
        """Whether a server runs the model."""
        return self.backend != "in-process"

    def with_(self, **changes: Any) -> ModelInfo:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists for tuples)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["weights"] = self.weights.to_dict()
        out["patch_size"] = list(self.patch_size)
        out["input_config"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.input_config.items()
        }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """The inverse of :meth:`to_dict`; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["weights"] = WeightsInfo.from_dict(dict(data.get("weights") or {}))
        values["patch_size"] = tuple(int(x) for x in data["patch_size"])
        values["input_config"] = dict(data.get("input_config") or {})
        for name in ("layers", "heads", "classes"):
            values[name] = int(values[name])
        values["keep_aspect"] = bool(values.get("keep_aspect", False))
        return cls(**values)


@dataclass(frozen=True)
class Anatomy:
    """Facts about one model that do not depend on the image.

    Attributes:
        width: embedding width D.
        patch_size: (height, width) of a patch in input pixels.
        filters: ``[k, ph, pw, 3]`` uint8 principal components of the patch embedding, or
            None when patches are embedded through a CNN (hybrid models).
        filter_variance: share of the weights' variance each component explains.
        position_similarity: ``[gh·gw, gh, gw]`` cosine similarity of every patch's position
            embedding with all others, or None when the model has no learned positions.
        position_grid: the grid the position embeddings were learned for.
    """

    width: int
    patch_size: tuple[int, int]
    filters: np.ndarray | None
    filter_variance: np.ndarray | None
    position_similarity: np.ndarray | None
    position_grid: tuple[int, int] | None


@dataclass(frozen=True)
class TokenEmbeddings:
    """One image's vectors on their way into the encoder (:mod:`vitviz.engine.embeddings`).

    Attributes:
        pixels: ``[C, H, W]`` float32, the normalised input.
        patches: ``[N, D]`` each patch's embedding (the linear projection of its P²·C values).
        positions: ``[N, D]`` the position embedding added to each patch, or None when the
            model has no learned absolute ones for this grid.
        tokens: ``[T, D]`` what the first block reads: prefix tokens, then patches (+ positions).
        num_prefix: prefix tokens ([CLS], distillation, registers) at the front of ``tokens``.
        features: ``[D']`` what the classifier reads (the readout after its norm), or None.
        norm_pre: whether a LayerNorm sits between the sum and the first block.
    """

    pixels: np.ndarray
    patches: np.ndarray
    positions: np.ndarray | None
    tokens: np.ndarray
    num_prefix: int
    features: np.ndarray | None = None
    norm_pre: bool = False


@dataclass(frozen=True)
class TokenFeatures:
    """One image's token features after the last block.

    Made by :func:`vitviz.engine.embeddings.features_of`.

    Attributes:
        tokens: ``[T, D]`` float32, what timm's ``forward_features`` returns: prefix tokens,
            then patches, after the final norm (if the model applies one there).
        layout: the token layout of this input (``tokens[layout.num_prefix:]`` are the
            patches, row by row over ``layout.grid``).
        norm: the final norm applied, by its class name (``LayerNorm``, ``RmsNorm``…), or
            None when ``forward_features`` ends without one (models that normalise after
            pooling, ``fc_norm``).
    """

    tokens: np.ndarray
    layout: TokenLayout
    norm: str | None = None

    @property
    def patches(self) -> np.ndarray:
        """``[N, D]`` the patch tokens' features, row by row over the grid."""
        return self.tokens[self.layout.num_prefix :]


# ------------------------------------------------------------------ inside one encoder block
# Made by :mod:`vitviz.engine.block` (one image through the blocks) and
# :mod:`vitviz.engine.sizes` (parameters, the standard ViT sizes, text vs image, passes).


@dataclass(frozen=True)
class ResidualStream:
    """Norms of chosen tokens' vectors along the residual stream, block by block.

    timm's ViT blocks are pre-norm: ``x ← x + ls1(attn(norm1(x)))``, then
    ``x ← x + ls2(mlp(norm2(x)))`` (``ls`` = LayerScale where the model has it, else identity;
    drop-path is the identity in eval). The updates are what is actually added to ``x``.

    Attributes:
        tokens: the sequence positions followed (K of them).
        kinds: each one's kind: ``cls``, ``dist``, ``reg`` or ``patch``.
        entering: ``[L, K]`` ‖x‖ entering each block.
        after_attention: ``[L, K]`` ‖x + attention update‖.
        after_mlp: ``[L, K]`` ‖x + attention update + MLP update‖ (the block's output).
        attention_update: ``[L, K]`` ‖ls1(attn(norm1(x)))‖.
        mlp_update: ``[L, K]`` ‖ls2(mlp(norm2(x)))‖.
        layer_scale: whether the blocks scale their updates (LayerScale ``ls1``/``ls2``).
    """

    tokens: tuple[int, ...]
    kinds: tuple[str, ...]
    entering: np.ndarray
    after_attention: np.ndarray
    after_mlp: np.ndarray
    attention_update: np.ndarray
    mlp_update: np.ndarray
    layer_scale: bool = False

    @property
    def attention_ratio(self) -> np.ndarray:
        """``[L, K]`` ‖attention update‖ / ‖x entering the block‖ (the x it is added to)."""
        return self.attention_update / np.maximum(self.entering, 1e-30)

    @property
    def mlp_ratio(self) -> np.ndarray:
        """``[L, K]`` ‖MLP update‖ / ‖x after the attention sub-block‖ (the x it is added to)."""
        return self.mlp_update / np.maximum(self.after_attention, 1e-30)


@dataclass(frozen=True)
class NormStep:
    """One token's normalisation by one norm module, step by step.

    LayerNorm: ``μ = mean(x)``, ``σ² = mean((x − μ)²)`` (biased), ``x̂ = (x − μ)/√(σ² + ε)``,
    ``y = γ·x̂ + β``. RMSNorm: ``x̂ = x/√(mean(x²) + ε)``, ``y = γ·x̂`` (no mean, no β).

    Attributes:
        layer: the block.
        token: the sequence position.
        which: the module inside the block (``norm1`` before attention, ``norm2`` before the
            MLP).
        kind: ``LayerNorm`` or ``RMSNorm``.
        module: the module's class name.
        eps: ε.
        before: ``[D]`` the values the module reads.
        mean: μ (None for RMSNorm, which does not subtract it).
        variance: σ² (LayerNorm) or mean(x²) (RMSNorm).
        std: √(variance + ε), what x is divided by.
        normalized: ``[D]`` x̂.
        gamma: ``[D]`` γ (None without affine weights).
        beta: ``[D]`` β (None without, and for RMSNorm).
        after: ``[D]`` γ·x̂ + β computed from the steps above.
        output: ``[D]`` the module's own output (equal to ``after`` up to rounding).
    """

    layer: int
    token: int
    which: str
    kind: str
    module: str
    eps: float
    before: np.ndarray
    mean: float | None
    variance: float
    std: float
    normalized: np.ndarray
    gamma: np.ndarray | None
    beta: np.ndarray | None
    after: np.ndarray
    output: np.ndarray


@dataclass(frozen=True)
class MlpStep:
    """The MLP of one block applied to one token (it acts on every token alone).

    Attributes:
        layer: the block.
        token: the sequence position.
        width: D, the MLP's input (and output) width.
        hidden: the hidden width (``fc2``'s input).
        activation: the activation module's name (``GELU``, ``GELU(approximate='tanh')``,
            ``QuickGELU``, ``SiLU`` …).
        gated: whether the hidden layer is gated (SwiGLU/GLU: act(gate) · value).
        input: ``[D]`` what the MLP reads (norm2's output for this token).
        pre_activation: ``[hidden]`` the activation's input.
        post_activation: ``[hidden]`` its output.
        output: ``[D]`` the MLP's output for this token in the full sequence.
        alone: ``[D]`` the MLP applied to this token alone.
        independence_error: ``max |alone − output|``: ~0 since the MLP mixes no tokens.
    """

    layer: int
    token: int
    width: int
    hidden: int
    activation: str
    gated: bool
    input: np.ndarray
    pre_activation: np.ndarray
    post_activation: np.ndarray
    output: np.ndarray
    alone: np.ndarray
    independence_error: float

    @property
    def ratio(self) -> float:
        """hidden / D (4 for the standard ViTs)."""
        return self.hidden / self.width


@dataclass(frozen=True)
class BlockAnatomy:
    """The sizes inside one encoder block of a model, for an input of N tokens.

    Attributes:
        layers: L, the number of blocks.
        width: D.
        heads: H.
        head_dim: d_k per head (``D/H`` for the standard ViTs, read from the module).
        tokens: N, the sequence length of this input (patches + prefix tokens).
        qkv_weight: ``(3·H·d_k, D)`` shape of the fused q/k/v projection (None without one).
        q_shape: ``(H, N, d_k)`` each of q, k, v for one image.
        scores_shape: ``(H, N, N)`` attention scores of one image in one block.
        mlp_hidden: the MLP's hidden width.
        activation: the MLP activation's name.
        norm: the blocks' norm (``LayerNorm`` or ``RMSNorm``).
        layer_scale: whether the blocks have LayerScale.
        qk_norm: whether q and k are normalised per head before the scores.
    """

    layers: int
    width: int
    heads: int
    head_dim: int
    tokens: int
    qkv_weight: tuple[int, int] | None
    q_shape: tuple[int, int, int]
    scores_shape: tuple[int, int, int]
    mlp_hidden: int
    activation: str
    norm: str
    layer_scale: bool = False
    qk_norm: bool = False


@dataclass(frozen=True)
class BlockSteps:
    """What one forward pass shows of the encoder blocks for one image."""

    residual: ResidualStream
    norm: NormStep
    mlp: MlpStep
    anatomy: BlockAnatomy


@dataclass(frozen=True)
class ParameterPart:
    """The parameters of one part of a model.

    Attributes:
        part: ``patch_embed``, ``pos_embed``, ``cls_token``, ``reg_token``, ``dist_token``,
            ``norm_pre``, ``attention``, ``mlp``, ``norms``, ``layer_scale``, ``block_other``,
            ``final_norm``, ``fc_norm``, ``attn_pool``, ``head``, ``head_dist`` or ``other``.
        count: parameters (numbers) in it.
        layer: the block, for the per-block parts.
        names: the parameter names it holds.
    """

    part: str
    count: int
    layer: int | None = None
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParameterCount:
    """A model's parameters counted by part; ``total == sum(p.numel() for p in parameters)``."""

    total: int
    parts: tuple[ParameterPart, ...]

    def by_part(self) -> dict[str, int]:
        """Counts per part, summed over the blocks, in first-seen order."""
        out: dict[str, int] = {}
        for p in self.parts:
            out[p.part] = out.get(p.part, 0) + p.count
        return out

    def block(self, layer: int) -> dict[str, int]:
        """Counts per part of one block."""
        return {p.part: p.count for p in self.parts if p.layer == layer}


@dataclass(frozen=True)
class VitSize:
    """A standard ViT's size from the formulas (Dosovitskiy et al., ICLR 2021, Table 1).

    Attributes:
        name: ``ViT-B/16`` …
        width: D.
        depth: L.
        heads: H.
        mlp: the MLP's hidden width (4·D).
        patch: p, pixels per patch side.
        image: the input side in pixels.
        patches: N = (image/p)².
        classes: classifier outputs.
        parts: parameters per part from the formulas (``patch_embed`` 3·p²·D + D,
            ``pos_embed`` (N+1)·D, ``cls_token`` D, ``attention`` L·(4D² + 4D), ``mlp``
            L·(2·D·mlp + mlp + D), ``norms`` L·4D, ``final_norm`` 2D, ``head`` D·C + C).
    """

    name: str
    width: int
    depth: int
    heads: int
    mlp: int
    patch: int
    image: int
    patches: int
    classes: int
    parts: tuple[tuple[str, int], ...]

    @property
    def tokens(self) -> int:
        """N + 1 with the [CLS] token."""
        return self.patches + 1

    @property
    def params(self) -> int:
        """All parameters: the sum of the parts."""
        return sum(n for _, n in self.parts)


@dataclass(frozen=True)
class TextVsImage:
    """A ViT's sequence beside a text Transformer's (BERT-base).

    Attributes:
        tokens: N, the image's sequence length (patches + prefix tokens).
        patches: patch tokens.
        extra: prefix tokens ([CLS], distillation, registers).
        grid: the 2-D patch grid (rows, columns), flattened row by row into the sequence.
        width: D of the image model.
        text_tokens: the text model's longest sequence.
        text_width: the text model's D.
        text_model: which text model.
    """

    tokens: int
    patches: int
    extra: int
    grid: tuple[int, int]
    width: int
    text_tokens: int
    text_width: int
    text_model: str

    def grid_positions(self) -> np.ndarray:
        """``[rows, cols]`` the sequence index of each patch (row-major after the prefix)."""
        rows, cols = self.grid
        return self.extra + np.arange(rows * cols).reshape(rows, cols)

    def text_positions(self) -> np.ndarray:
        """``[text_tokens]`` the 1-D positions of text."""
        return np.arange(self.text_tokens)


@dataclass(frozen=True)
class PassCount:
    """All at once (ViT) versus one token at a time (GPT-like) over N tokens.

    Counts are attention scores per head per layer.

    Attributes:
        tokens: N.
        vit_passes: forward passes of the ViT: 1.
        vit_entries: scores of its one pass: N².
        autoregressive_passes: passes of a next-token model producing N tokens: N.
        cached_entries: with a KV cache, pass i scores 1 query against i keys: Σ i = N(N+1)/2.
        uncached_entries: without a cache, pass i recomputes the i×i scores (dense QKᵀ, the
            masked half computed then discarded): Σ i² = N(N+1)(2N+1)/6.
    """

    tokens: int
    vit_passes: int
    vit_entries: int
    autoregressive_passes: int
    cached_entries: int
    uncached_entries: int


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve: the class probability after removing (or putting back)
    ``fractions`` of the patches."""

    fractions: np.ndarray
    probabilities: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve (trapezoids over the fraction of patches)."""
        f, p = self.fractions, self.probabilities
        return float(np.sum((f[1:] - f[:-1]) * (p[1:] + p[:-1]) / 2))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "fractions": [round(float(x), 6) for x in self.fractions],
            "probabilities": [float(x) for x in self.probabilities],
            "auc": self.auc,
        }


@dataclass
class TrustReport:
    """Deletion and insertion of one map, their random baseline, and occlusion."""

    target: int
    deletion: Curve
    insertion: Curve
    random_deletion: Curve
    random_insertion: Curve
    occlusion: np.ndarray  # [gh, gw] probability drop when each patch is removed
    correlations: dict[str, float] = field(default_factory=dict)  # Spearman with occlusion

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "class": self.target,
            "deletion": self.deletion.to_dict(),
            "insertion": self.insertion.to_dict(),
            "random_baseline": {
                "deletion": self.random_deletion.to_dict(),
                "insertion": self.random_insertion.to_dict(),
            },
            "occlusion": {
                "map": np.asarray(self.occlusion, float).round(6).tolist(),
                "spearman": {k: round(v, 6) for k, v in self.correlations.items()},
            },
        }


# ----------------------------------------------------------------------------- inside the heads
# Head ablation, the logit lens and token norms (issue 24): what a researcher reads of one image.

ABLATIONS: tuple[str, ...] = ("zero", "mean")
"""How :class:`HeadAblation` removes a head: its output set to 0, or to its mean over tokens."""


@dataclass(frozen=True)
class HeadAblation:
    """Each head's effect on one class when it is removed (Michel et al., NeurIPS 2019).

    Every Δ is *ablated − clean*: a head the class needs has a negative Δ.

    Attributes:
        target: the class c.
        kind: the ablation, one of :data:`ABLATIONS`.
        clean_logit: ``y_c`` of the unablated image.
        clean_probability: ``softmax(y)_c`` of the unablated image.
        logit: ``[L, H]`` Δ of ``y_c`` with head (l, h) removed.
        probability: ``[L, H]`` Δ of ``softmax(y)_c`` with head (l, h) removed.
        layer_logit: ``[L]`` Δ of ``y_c`` with all heads of layer l removed.
        layer_probability: ``[L]`` Δ of ``softmax(y)_c`` with all heads of layer l removed.
        batch: ablated copies of the image per forward.
        forwards: batched forwards run (the clean one included).
    """

    target: int
    kind: str
    clean_logit: float
    clean_probability: float
    logit: np.ndarray
    probability: np.ndarray
    layer_logit: np.ndarray
    layer_probability: np.ndarray
    batch: int
    forwards: int

    def ranked(self) -> list[tuple[int, int, float]]:
        """``(layer, head, Δlogit)`` from the most harmful removal (lowest Δ) to the least."""
        flat = np.argsort(self.logit, axis=None, kind="stable")
        heads = self.logit.shape[1]
        return [(int(i) // heads, int(i) % heads, float(self.logit.flat[i])) for i in flat]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "class": self.target,
            "kind": self.kind,
            "clean": {"logit": self.clean_logit, "probability": self.clean_probability},
            "delta_logit": np.asarray(self.logit, float).tolist(),
            "delta_probability": np.asarray(self.probability, float).tolist(),
            "layer_delta_logit": np.asarray(self.layer_logit, float).tolist(),
            "layer_delta_probability": np.asarray(self.layer_probability, float).tolist(),
            "batch": self.batch,
            "forwards": self.forwards,
        }


@dataclass(frozen=True)
class LogitLens:
    """The model's own final norm and head read after every block (the logit lens).

    Attributes:
        logits: ``[L, C]`` the head's logits of the readout after block l; the last row is the
            model's output.
        top: ``[L, k]`` class indices of the k highest logits per layer.
        top_probability: ``[L, k]`` their softmax probabilities.
        final: the model's predicted class (argmax of the last row).
        final_probability: ``[L]`` that class's probability per layer.
        final_rank: ``[L]`` its rank per layer (1 = the highest logit).
    """

    logits: np.ndarray
    top: np.ndarray
    top_probability: np.ndarray
    final: int
    final_probability: np.ndarray
    final_rank: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the full logits)."""
        return {
            "final": self.final,
            "top": np.asarray(self.top, int).tolist(),
            "top_probability": np.asarray(self.top_probability, float).tolist(),
            "final_probability": np.asarray(self.final_probability, float).tolist(),
            "final_rank": np.asarray(self.final_rank, int).tolist(),
        }


@dataclass(frozen=True)
class TokenNorms:
    """Every token's residual-stream norm after every block, and its high-norm outliers
    (Darcet et al., "Vision Transformers Need Registers", ICLR 2024).

    Attributes:
        norms: ``[L, N]`` ``‖x_l[n]‖₂`` of each token after block l (before the final norm).
        k: the outlier rule's factor: a patch is an outlier at layer l when its norm exceeds
            ``k × median`` of the patch tokens' norms at l.
        outliers: ``[L, patches]`` whether each patch token is an outlier.
        share: ``[L]`` the share of patch tokens that are outliers.
        attention_share: the share of the readout's last-layer attention (mean over heads) that
            goes to the last layer's outlier patches (None: no attention given).
        registers: ``[L, R]`` the register tokens' norms (``R = 0`` without registers).
        num_prefix: prefix tokens P (patch tokens start at P).
    """

    norms: np.ndarray
    k: float
    outliers: np.ndarray
    share: np.ndarray
    attention_share: float | None
    registers: np.ndarray
    num_prefix: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "k": self.k,
            "norms": np.asarray(self.norms, float).round(6).tolist(),
            "outliers": [np.flatnonzero(row).tolist() for row in self.outliers],
            "share": np.asarray(self.share, float).tolist(),
            "attention_share": self.attention_share,
            "registers": np.asarray(self.registers, float).round(6).tolist(),
            "num_prefix": self.num_prefix,
        }
