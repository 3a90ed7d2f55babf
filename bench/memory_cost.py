"""Estimated against measured: the peak memory of an explanation, before and while it runs.

For each geometry a fresh Python process builds a random-weight timm ViT, explains one image
once to warm up, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), then explains
another image (plain, or class maps of the top-5 classes) and reads the peak (``VmHWM``) less
the RSS before. That is printed beside :func:`vitviz.memory.cost.explanation_cost`'s estimate.

    python bench/memory_cost.py --json [--geometry vit_small_patch16_224:224 ...] [--classes 0 5]

Linux only (``/proc``). glibc's allocator is set to serve every block over 64 KiB with ``mmap`` (no
dynamic threshold) and trimmed before the measured call, so the RSS follows what is alive.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [
    "vit_tiny_patch16_224:224",
    "vit_tiny_patch16_224:384",
    "deit_tiny_distilled_patch16_224:224",
    "vit_betwixt_patch16_reg4_gap_256:256",
    "vit_base_patch16_224:224",
]

CHILD = r"""
import ctypes, gc, json, re, sys
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD fixed: no dynamic raise, big blocks via mmap
import numpy as np
from PIL import Image
from vitviz.backends.local import LocalBackend
from vitviz.memory.cost import explanation_cost

name, size = sys.argv[1], int(sys.argv[2])
be = LocalBackend.from_name(name, random_weights=True, model_kwargs={"img_size": size})
rng = np.random.default_rng(0)
def image():
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
def status():
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}
def run(im, classes):
    if classes:
        return be.explain_classes([im], [[None, *range(1, classes)]], seen=True)
    return be.explain([im], seen=True)
for classes in map(int, sys.argv[3].split(",")):
    first = run(image(), classes)
    del first
    gc.collect()
    libc.malloc_trim(0)
    im = be.loaded.seen_image(image())
    open("/proc/self/clear_refs", "w").write("5")
    before = status()["VmRSS"]
    out = run(im, classes)
    peak = status()["VmHWM"] - before
    del out
    est = explanation_cost(be.loaded.shape, (size, size), classes=classes)
    print(json.dumps({"model": name, "size": size, "classes": classes,
        "tokens": be.loaded.shape.tokens((size, size)), "measured": peak,
        "estimate": est.peak, "ratio": peak / est.peak, "parts": est.parts}), flush=True)
"""


def measure(name: str, size: int, classes: list[int]) -> list[dict]:
    """One geometry in a fresh process, each class count in turn (see the module docstring)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, str(size), ",".join(map(str, classes))],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    if out.returncode:
        raise RuntimeError(f"{name} at {size} px failed:\n{out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main(argv: list[str] | None = None) -> int:
    """Measure each geometry and method; print a table or JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--geometry", nargs="+", default=DEFAULT, help="TIMM_NAME:SIZE ...")
    ap.add_argument("--classes", nargs="+", type=int, default=[0, 5])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for geometry in args.geometry:
        name, size = geometry.rsplit(":", 1)
        for r in measure(name, int(size), args.classes):
            rows.append(r)
            if not args.json:
                print(
                    f"{name:40s} {size:>4} N={r['tokens']:<5} K={r['classes']} measured "
                    f"{r['measured'] / 2**20:8.1f} MB estimate {r['estimate'] / 2**20:8.1f} MB "
                    f"ratio {r['ratio']:.2f}",
                    flush=True,
                )
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
