"""Overhead of a full explanation over timm's plain forward, measured alternately.

``forward_ms``: timm's stock model (fused SDPA attention), logits only.
``explain_ms``: vitviz capture (logits + every layer's per-head attention, one forward) plus
attention rollout, on the same device, synchronized. Both use the same weights and input.
With ``--method chefer`` (or ``grad-rollout``, ``attn-grad``) ``explain_ms`` is the
class-specific explanation instead: one forward that keeps the attention in the autograd graph,
one backward to the attention of the top class (only the layers the method reads), its
reduction to the class relevance the page and server keep, and the method's map.
With ``--method trust --batch 16``: a deletion and an insertion curve of 16 steps (34 perturbed
images, run 16 a forward, :mod:`vitviz.analysis.trust`) against one forward of 16 images, so
``ratio`` is the cost in forward-equivalents.
With ``--family clip`` the model is an open_clip CLIP (default ``clip-b32``, random weights)
and ``forward_ms`` is open_clip's own image tower (``nn.MultiheadAttention``, fused) with the
zero-shot head over the default labels (cached text features), against vitviz's adapter.
With ``--family hf`` the model is a transformers ``ViTForImageClassification`` of ViT-B/16's
size (random weights, a config written to a temporary folder); ``forward_ms`` is transformers'
default (SDPA) forward of the same weights, against vitviz's adapter (eager attention, hooked).
Prints one JSON object (``--json``) or a short table.

    python bench/explain_overhead.py --model vit_base_patch16_224 --json
    python bench/explain_overhead.py --model vit_base_patch16_224 --batch 8 --json
    python bench/explain_overhead.py --model vit_base_patch16_224 --method chefer --json
    python bench/explain_overhead.py --family clip --method chefer --json
    python bench/explain_overhead.py --family hf --method chefer --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm
import torch

from vitviz import methods
from vitviz.engine.capture import autocast_for, capture_tensor
from vitviz.engine.gradients import attention_relevance
from vitviz.engine.runtime import tune_allocator
from vitviz.models import load_model, pick_device, pick_precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _clip_stock(loaded) -> torch.nn.Module:
    """open_clip's plain zero-shot forward over the loaded model's labels (same weights):
    ``logit_scale · normalize(encode_image(x)) · textᵀ`` with open_clip's fused attention."""
    clip, text = loaded.model.tower.clip, loaded.model.head.text_features

    class Stock(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            image = torch.nn.functional.normalize(clip.encode_image(x), dim=-1)
            return clip.logit_scale.exp() * image @ text.to(image.dtype).T

    return Stock()


class _HFLogits(torch.nn.Module):
    """transformers' own forward (its default attention) returning the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def measure(args: argparse.Namespace) -> dict:
    """Run the alternating measurement and return the JSON-ready result."""
    tuned = tune_allocator() if args.tune_allocator else False
    device = pick_device(args.device)
    precision = pick_precision(device, args.precision)
    kwargs = {"img_size": args.img_size} if args.img_size else {}
    torch.manual_seed(0)
    if args.family == "hf":
        import tempfile

        from transformers import ViTConfig, ViTForImageClassification

        folder = tempfile.mkdtemp(prefix="vitviz-bench-hf-")
        config = ViTConfig(num_labels=1000)  # ViT-B/16 at 224 px
        stock = ViTForImageClassification(config).eval()
        stock.save_pretrained(folder)
        args.model = f"hf:{folder}"
        loaded = load_model(args.model, device=str(device), precision=precision)
        stock = _HFLogits(stock.to(device))
    elif args.family == "clip":
        args.model = args.model or "clip-b32"
        loaded = load_model(
            args.model, random_weights=True, device=str(device), precision=precision
        )
        stock = _clip_stock(loaded)
    else:
        args.model = args.model or "vit_base_patch16_224"
        stock = timm.create_model(args.model, pretrained=False, **kwargs).eval().to(device)
        loaded = load_model(
            args.model, random_weights=True, device=str(device), precision=precision,
            model_kwargs=kwargs,
        )  # fmt: skip
        loaded.model.load_state_dict(stock.state_dict())
    size = loaded.data_config["input_size"][1:]
    x = torch.randn(args.batch, 3, *size, device=device)
    attn_dtype = torch.float16 if args.attn_dtype == "float16" else torch.float32

    def forward() -> None:
        with torch.inference_mode(), autocast_for(device, precision):
            stock(x)

    spec = methods.METHODS.get(args.method)

    def explain() -> None:
        if spec is None:  # trust: one deletion + insertion curve pair (K = 16) of one image
            from vitviz.analysis.trust import curves

            layout = loaded.layout(tuple(size))
            order = np.random.default_rng(0).permutation(layout.num_patches)
            curves(
                loaded.model, x[0], 0, order, layout.grid, layout.patch_size,
                steps=16, batch=args.batch,
            )  # fmt: skip
            return
        if spec.needs_gradients:
            layers = spec.gradient_layers({}, len(loaded.model.blocks))
            classes = [[None]] * args.batch
            out = attention_relevance(loaded, x, classes, layers=layers)
            methods.compute_map(
                args.method, out.attention[0], out.layout, grads=out.relevance[0][0]
            )
            return
        with torch.inference_mode():
            _, attention, layout = capture_tensor(loaded, x, attn_dtype=attn_dtype)
            methods.compute_map(args.method, attention, layout)

    def timed(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return (time.perf_counter() - start) * 1000

    for _ in range(args.warmup):
        timed(forward)
        timed(explain)
    fwd, exp = [], []
    peak: dict[str, float] = {}
    for i in range(args.repeats):
        # alternate the order so drift (thermal, caches) hits both alike
        order = [(forward, fwd), (explain, exp)] if i % 2 == 0 else [(explain, exp), (forward, fwd)]
        for fn, out in order:
            out.append(timed(fn))
    if device.type == "cuda":
        for name, fn in (("forward", forward), ("explain", explain)):
            torch.cuda.reset_peak_memory_stats(device)
            timed(fn)
            peak[f"{name}_peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    f_med, e_med = statistics.median(fwd), statistics.median(exp)
    pairwise = statistics.median(e / f for e, f in zip(exp, fwd, strict=True))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "family": args.family,
        "model": args.model,
        "method": args.method,
        "device": name,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "attn_dtype": args.attn_dtype,
        "img_size": int(size[0]),
        "batch": args.batch,
        "repeats": args.repeats,
        "allocator_tuned": tuned,
        "forward_ms": round(f_med, 2),
        "explain_ms": round(e_med, 2),
        "ratio": round(e_med / f_med, 4),
        "pairwise_ratio_median": round(pairwise, 4),
        **peak,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--family",
        default="timm",
        choices=["timm", "clip", "hf"],
        help="timm (default); clip: an open_clip CLIP against open_clip's own forward; hf: a "
        "transformers ViT against transformers' own forward",
    )
    p.add_argument(
        "--model", default=None, help="default vit_base_patch16_224 (timm), clip-b32 (clip)"
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--method",
        default="rollout",
        choices=[*methods.METHODS, "trust"],
        help="a map method, or trust: a deletion+insertion curve pair (K = 16, --batch images a "
        "forward) against one forward of --batch images",
    )
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--attn-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--no-tune-allocator",
        dest="tune_allocator",
        action="store_false",
        help="leave glibc malloc at its defaults (see vitviz.engine.runtime)",
    )
    args = p.parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
