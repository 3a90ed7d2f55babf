"""Faithfulness of every registered explanation method on held-out synthetic scenes.

    python bench/faithfulness.py --json [--single 300] [--double 300] [--weights FILE]

Scenes come from seeds never used in training. Prints one JSON object:
``{"accuracy": …, "methods": {"<method>": {"pointing_game": …, "mass_in_mask": …,
"mass_baseline": …, "two_object_right_share": …}, …}, "curves": {"<method>": {"deletion_auc":
…, "insertion_auc": …}, …, "random": {…}}}`` where ``accuracy`` is top-1 on the
single-object scenes and each method runs with its default options (see vitviz.methods).
Class-agnostic methods give one map for both classes of a two-object scene, so they score
about 0.5 on ``two_object_right_share``; the class-specific methods (chefer, grad-rollout,
attn-grad) get the map of each class, computed from one forward pass per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image
from tqdm import tqdm

from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.demo import metrics
from vitviz.demo.scenes import generate_scene
from vitviz.demo.train import HELDOUT_SEED_BASE
from vitviz.engine.runtime import tune_allocator

DOUBLE_OFFSET = 100_000  # two-object scenes use seeds HELDOUT_SEED_BASE + DOUBLE_OFFSET + i


def evaluate(backend: LocalBackend, single: int, double: int, batch: int = 16) -> dict:
    """Accuracy and per-method metrics over the held-out scenes.

    Class-specific methods get the map of the scene's true class (single-object scenes) and of
    each of the two classes in turn (two-object scenes, both from one forward pass).
    """
    names = list(methods.METHODS)
    hits = {n: [] for n in names}
    mass = {n: [] for n in names}
    base: list[float] = []
    right = {n: [] for n in names}
    correct = 0
    for count, seeds in (
        (1, [HELDOUT_SEED_BASE + i for i in range(single)]),
        (2, [HELDOUT_SEED_BASE + DOUBLE_OFFSET + i for i in range(double)]),
    ):
        for start in tqdm(range(0, len(seeds), batch), desc=f"{count}-object", file=sys.stderr):
            scenes = [generate_scene(seed, count) for seed in seeds[start : start + batch]]
            results = backend.explain_classes(
                [Image.fromarray(s.image) for s in scenes],
                [list(s.classes) for s in scenes],
                top_k=1,
            )
            for scene, res in zip(scenes, results, strict=True):
                expl = res.explanation
                maps = {}  # maps[n][k]: method n's map for the scene's k-th class
                for n in names:
                    if methods.METHODS[n].needs_gradients:
                        maps[n] = [
                            np.asarray(methods.compute_map(n, expl.attention, expl.layout, grads=g))
                            for g in res.relevance
                        ]
                    else:
                        m = np.asarray(methods.compute_map(n, expl.attention, expl.layout))
                        maps[n] = [m] * count  # class-agnostic: the same map for each class
                if count == 1:
                    mask = scene.masks[0]
                    correct += int(expl.predictions[0].index == scene.classes[0])
                    base.append(metrics.mask_baseline(mask, expl.layout.grid))
                    for n, (m,) in maps.items():
                        hits[n].append(metrics.pointing_hit(m, mask))
                        mass[n].append(metrics.mass_in_mask(m, mask))
                else:
                    for n, ms in maps.items():
                        for k in range(2):
                            right[n].append(
                                metrics.right_object_wins(ms[k], scene.masks[k], scene.masks[1 - k])
                            )

    def mean(xs: list) -> float | None:
        return round(float(np.mean(xs)), 4) if xs else None

    return {
        "accuracy": mean([1.0] * correct + [0.0] * (single - correct)) if single else None,
        "methods": {
            n: {
                "pointing_game": mean(hits[n]),
                "mass_in_mask": mean(mass[n]),
                "mass_baseline": mean(base),
                "two_object_right_share": mean(right[n]),
            }
            for n in names
        },
    }


CURVED = ("attention", "rollout", "chefer", "grad-rollout", "attn-grad")  # whole-image maps


def curve_aucs(backend: LocalBackend, scenes: int, steps: int = 16) -> dict:
    """Deletion and insertion AUCs (:mod:`vitviz.analysis.trust`) of each whole-image method on
    single-object held-out scenes, for the scene's true class, with a random-order baseline
    (mean of 2 orders a scene). Lower deletion and higher insertion AUCs are better."""
    from vitviz.analysis.trust import curves, ranking

    loaded = backend.loaded
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, list[float]]] = {
        n: {"deletion": [], "insertion": []} for n in (*CURVED, "random")
    }
    seeds = [HELDOUT_SEED_BASE + 50_000 + i for i in range(scenes)]
    for seed in tqdm(seeds, desc="curves", file=sys.stderr):
        scene = generate_scene(seed, 1)
        target = scene.classes[0]
        res = backend.explain_classes([Image.fromarray(scene.image)], [[target]], top_k=1)[0]
        expl = res.explanation
        x = loaded.to_tensor(Image.fromarray(expl.image))
        grid, patch = expl.layout.grid, expl.layout.patch_size
        orders = {}
        for n in CURVED:
            grads = res.relevance[0] if methods.METHODS[n].needs_gradients else None
            orders[n] = ranking(methods.compute_map(n, expl.attention, expl.layout, grads=grads))
        for n, order in orders.items():
            d, i = curves(loaded.model, x, target, order, grid, patch, steps)
            out[n]["deletion"].append(d.auc)
            out[n]["insertion"].append(i.auc)
        for _ in range(2):
            d, i = curves(
                loaded.model, x, target, rng.permutation(grid[0] * grid[1]), grid, patch, steps
            )
            out["random"]["deletion"].append(d.auc)
            out["random"]["insertion"].append(i.auc)
    return {
        n: {f"{k}_auc": round(float(np.mean(v)), 4) for k, v in parts.items()}
        for n, parts in out.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, evaluate, print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--single", type=int, default=300)
    p.add_argument("--double", type=int, default=300)
    p.add_argument("--weights", help="demo-architecture weights (default: the bundled ones)")
    p.add_argument("--curves", type=int, default=60, help="scenes for deletion/insertion AUCs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    tune_allocator()
    started = time.time()
    backend = LocalBackend.from_name("demo", weights=args.weights, device="cpu")
    result = evaluate(backend, args.single, args.double)
    if args.curves:
        result["curves"] = curve_aucs(backend, args.curves)
    result["scenes"] = {"single": args.single, "double": args.double, "curves": args.curves}
    result["weights"] = backend.info().weights.location
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
