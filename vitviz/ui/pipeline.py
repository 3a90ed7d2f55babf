"""The encoder → readout → head diagram of the "How ViT sees this image" view."""

from __future__ import annotations

from vitviz.layout import TokenLayout
from vitviz.results import ModelInfo


def pipeline_dot(info: ModelInfo, layout: TokenLayout, width: int, top: str | None) -> str:
    """Graphviz source of the encoder → readout → head diagram for one model and input."""
    h, w = layout.image_size
    ph, pw = layout.patch_size
    n = layout.num_patches
    prefix = ", ".join(f"[{k.upper()}]" for k in layout.prefix) or "no extra tokens"
    readout = {
        "cls": "the [CLS] token's output",
        "cls+dist": "mean of the [CLS] and [DIST] heads",
        "avg": "mean of all patch tokens",
        "avg+prefix": "mean of all tokens",
    }[layout.readout]
    classes = info.classes
    head = f"Linear {width} → {classes} classes" if classes else "no classifier (backbone)"
    steps = [
        f"Input image\\n{h}×{w} px",
        f"Cut into {layout.grid[0]}×{layout.grid[1]} = {n} patches\\nof {ph}×{pw} px",
        f"Patch embedding\\neach patch → {width} numbers",
        f"Add position embeddings\\nprepend {prefix}",
        f"Encoder\\n{info.layers} blocks × {info.heads} attention heads",
        f"Readout\\n{readout}",
        f"Head\\n{head}",
    ]
    if top:
        steps.append(f"Prediction\\n{top}")
    lines = ["digraph G {", "rankdir=LR;", 'node [shape=box, style="rounded,filled"];']
    lines += ['node [fillcolor="#eef3fb", fontname="Helvetica", fontsize=11];']
    for i, text in enumerate(steps):
        label = text.replace('"', '\\"')
        lines.append(f'n{i} [label="{label}"];')
    lines += [f"n{i} -> n{i + 1};" for i in range(len(steps) - 1)]
    lines.append("}")
    return "\n".join(lines)
