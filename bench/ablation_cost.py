"""What head ablation costs over plain forwards of the same number of images.

``ablation_ms``: :func:`vitviz.engine.ablation.ablate_heads` of one image, i.e. ``L·H + L + 1``
copies of it (every head removed, every layer's attention removed, the clean copy), ``batch``
copies a forward, each with its own row of the head mask (a pre-hook on each ``attn.proj``).
``plain_ms``: the same number of images through the same model in batches of the same size,
no hooks. Both run on the model as :class:`vitviz.backends.local.LocalBackend` holds it
(unfused attention, capture hooks idle), alternately, ``repeat`` times; medians and
``ratio = ablation / plain`` (the target is at most 1.2; reported, not asserted), and the
median of each run's own ratio (``pair_ratio_median``: steadier on a shared machine, where the
two halves of one run see the same load).
Prints one JSON object (``--json``) or a short table.

    python bench/ablation_cost.py --model demo --batch 16 --repeat 3 --json
    python bench/ablation_cost.py --model vit-b16 --random-weights --batch 16 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from vitviz.engine.ablation import ablate_heads, ablation_cost, ablation_forwards
from vitviz.engine.capture import prepare
from vitviz.memory.cost import size_text
from vitviz.models import load_model, pick_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain(model: torch.nn.Module, x: torch.Tensor, images: int, batch: int) -> None:
    with torch.inference_mode():
        for start in range(0, images, batch):
            model(x.expand(min(batch, images - start), -1, -1, -1))


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return (and print) its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo", help="a vitviz model name (demo, vit-b16, …)")
    parser.add_argument("--random-weights", action="store_true", help="no weights download")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kind", default="zero", choices=("zero", "mean"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device) if args.device else pick_device()
    options = {"random_weights": True} if args.random_weights else {}
    loaded = load_model(args.model, device=str(device), **options)
    prepare(loaded.model, loaded.hook)  # as LocalBackend holds it
    model = loaded.model
    size = loaded.geometry.size
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    layers, heads = loaded.num_layers, loaded.num_heads
    images = layers * heads + layers + 1
    target = 0

    ablate_heads(model, x, target, kind=args.kind, batch=args.batch)  # warm-up
    _plain(model, x, args.batch, args.batch)
    ablation, plain = [], []
    for _ in range(max(1, args.repeat)):
        _sync(device)
        t0 = time.perf_counter()
        ablate_heads(model, x, target, kind=args.kind, batch=args.batch)
        _sync(device)
        t1 = time.perf_counter()
        _plain(model, x, images, args.batch)
        _sync(device)
        t2 = time.perf_counter()
        ablation.append((t1 - t0) * 1000)
        plain.append((t2 - t1) * 1000)
    a_ms, p_ms = statistics.median(ablation), statistics.median(plain)
    cost = ablation_cost(loaded.shape, size, args.batch)
    result = {
        "model": args.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "layers": layers,
        "heads": heads,
        "kind": args.kind,
        "batch": args.batch,
        "images": images,
        "forwards": ablation_forwards(layers, heads, args.batch),
        "repeat": len(ablation),
        "ablation_ms": round(a_ms, 1),
        "plain_ms": round(p_ms, 1),
        "ratio": round(a_ms / p_ms, 3),
        "pair_ratio_median": round(
            statistics.median(a / p for a, p in zip(ablation, plain, strict=True)), 3
        ),
        "ablation_runs_ms": [round(v, 1) for v in ablation],
        "plain_runs_ms": [round(v, 1) for v in plain],
        "estimated_peak": size_text(cost.peak),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
    return result


if __name__ == "__main__":
    main()
