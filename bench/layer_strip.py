"""What the Rollout view's layer strip and the Compare view's second map cost on the CPU.

Times ``methods.compute_strip`` (the map "up to layer l" for every l) for rollout and for
Chefer from a class relevance, against one map of the same method, on ViT-B/16-sized random
attention (12 layers × 12 heads × 197 tokens). Prints JSON; run it several times.

    python bench/layer_strip.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from vitviz import methods
from vitviz.layout import TokenLayout


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    layout = TokenLayout(prefix=("cls",), grid=(14, 14), patch_size=(16, 16), readout="cls")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 12, 197, 197)).astype(np.float32)
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    grads = rng.normal(size=attn.shape).astype(np.float32)
    rel = methods.class_relevance(attn, grads, layout)
    out = {"layers": 12, "heads": 12, "tokens": 197, "repeats": args.repeats}
    for name, grads_of in (("rollout", None), ("chefer", rel), ("grad-rollout", rel)):

        def one_map(name=name, grads_of=grads_of):
            return methods.compute_row(name, attn, layout, grads=grads_of)

        def strip_of(name=name, grads_of=grads_of):
            return methods.compute_strip(name, attn, layout, grads=grads_of)

        one = _median_ms(one_map, 3)
        strip = _median_ms(strip_of, args.repeats)
        out[name] = {"one_map_ms": round(one, 2), "strip_ms": round(strip, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
