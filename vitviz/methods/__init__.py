"""Explanation methods: pure functions from captured attention to maps and statistics.

Every method takes attention probabilities ``attn`` of shape ``[..., L, H, N, N]`` (any
leading batch dims; rows sum to 1) and a :class:`~vitviz.layout.TokenLayout`, and works on
numpy arrays or torch tensors alike (a tensor stays on its device; numpy in, numpy out).
Map methods are row functions ``fn(attn, layout, *, grads=None, **options) -> [..., N]``,
registered once in :data:`METHODS` with their title and typed options; :func:`compute_map`
runs one by name and puts its row on the patch grid.

``attention``  raw readout rows, one patch's row, DINO's thresholded masks
``rollout``    attention rollout (Abnar & Zuidema 2020), discard ratio done right
``gradient``   Chefer et al. 2021, gradient rollout (corrected), attention × gradient
``statistics`` mean attention distance, attention entropy
``features``   the last layer's token features: the PCA picture, patch similarity
``registry``   :class:`Method`, :class:`Option`, :func:`register`, :func:`compute_map`,
               :func:`of_kind` (the methods a caller can show, in display order)
"""

from vitviz.methods.arrays import FUSIONS, Fusion, fuse_heads, relative_layer, to_grid
from vitviz.methods.attention import (
    head_rows,
    head_slot,
    mask,
    query,
    raw_attention,
    threshold_mask,
)
from vitviz.methods.class_specific import (
    attn_grad,
    chefer,
    chefer_row,
    class_head_rows,
    class_relevance,
    grad_rollout,
    relevance_parts,
)
from vitviz.methods.features import FeaturePCA, patch_similarity, pca_rgb
from vitviz.methods.registry import (
    DEFAULT_METHOD,
    KINDS,
    METHODS,
    WHOLE_IMAGE,
    Method,
    MethodKind,
    Option,
    check_options,
    compute_map,
    compute_row,
    compute_strip,
    first_of_kind,
    of_kind,
    register,
    resolve_options,
)
from vitviz.methods.rollout import (
    attention_rollout,
    discard_lowest,
    rollout_layers,
    rollout_matrix,
)
from vitviz.methods.statistics import (
    HEAD_KINDS,
    STATISTICS,
    attention_entropy,
    head_table,
    mean_attention_distance,
    prefix_attention,
    self_attention,
)

__all__ = [
    "DEFAULT_METHOD",
    "FUSIONS",
    "HEAD_KINDS",
    "KINDS",
    "METHODS",
    "STATISTICS",
    "WHOLE_IMAGE",
    "FeaturePCA",
    "Fusion",
    "Method",
    "MethodKind",
    "Option",
    "attention_entropy",
    "attention_rollout",
    "attn_grad",
    "check_options",
    "chefer",
    "chefer_row",
    "class_head_rows",
    "class_relevance",
    "compute_map",
    "compute_row",
    "compute_strip",
    "discard_lowest",
    "first_of_kind",
    "fuse_heads",
    "grad_rollout",
    "head_rows",
    "head_slot",
    "head_table",
    "mask",
    "mean_attention_distance",
    "of_kind",
    "patch_similarity",
    "pca_rgb",
    "prefix_attention",
    "query",
    "raw_attention",
    "register",
    "relative_layer",
    "relevance_parts",
    "resolve_options",
    "rollout_layers",
    "rollout_matrix",
    "self_attention",
    "threshold_mask",
    "to_grid",
]
