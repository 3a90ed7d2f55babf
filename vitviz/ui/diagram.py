"""The encoder → readout → head diagram of the "How ViT sees this image" view."""

from __future__ import annotations

from vitviz.layout import TokenLayout
from vitviz.results import ModelInfo
from vitviz.ui.i18n import t


def pipeline_dot(info: ModelInfo, layout: TokenLayout, width: int, top: str | None) -> str:
    """Graphviz source of the encoder → readout → head diagram for one model and input."""
    h, w = layout.image_size
    ph, pw = layout.patch_size
    n = layout.num_patches
    prefix = ", ".join(f"[{k.upper()}]" for k in layout.prefix) or t("pipeline.no_extra")
    readout = t(f"diagram.readout_{layout.readout.replace('+', '_')}")
    classes = info.classes
    head = t("diagram.linear", width=width, classes=classes) if classes else t("diagram.no_head")
    gh, gw = layout.grid
    steps = [
        t("diagram.input", h=h, w=w),
        t("diagram.patches", gh=gh, gw=gw, n=n, ph=ph, pw=pw),
        t("diagram.embedding", width=width),
        t("diagram.position", prefix=prefix),
        t("diagram.encoder", layers=info.layers, heads=info.heads),
        t("diagram.readout", readout=readout),
        t("diagram.head", head=head),
    ]
    if top:
        steps.append(t("diagram.prediction", top=top))
    lines = ["digraph G {", "rankdir=LR;", 'node [shape=box, style="rounded,filled"];']
    font = "Noto Sans CJK TC, Helvetica"  # Chinese labels need a CJK font where one exists
    lines += [f'node [fillcolor="#eef3fb", fontname="{font}", fontsize=11];']
    for i, text in enumerate(steps):
        # a label is a quoted DOT string: backslashes and quotes escaped (a class name may
        # hold either), then newlines as DOT's line breaks
        label = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'n{i} [label="{label}"];')
    lines += [f"n{i} -> n{i + 1};" for i in range(len(steps) - 1)]
    lines.append("}")
    return "\n".join(lines)
