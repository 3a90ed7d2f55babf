"""What the logit lens and the token norms hold, known before they run
(:func:`vitviz.engine.lens.lens_cost`, :func:`vitviz.engine.lens.norms_cost`), against the peak
measured in a fresh process the way tests/test_cost.py measures an explanation's
(bench/memory_cost.py: glibc serving big blocks with ``mmap``, one warm-up call, the kernel's
peak mark reset, ``VmHWM`` less the RSS before), on three geometries: 577 tokens (class
token, 384 px), 198 (class and distillation tokens) and 260 (four registers, average pooling).

The margin is tests/test_cost.py's: a measured peak lies within 25 % of the estimate plus 8 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitviz.memory.cost import FLOAT, ModelShape, explanation_cost

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20

CHILD = r"""
import ctypes, gc, json, re, sys
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD fixed: no dynamic raise, big blocks via mmap
import numpy as np
from PIL import Image
from vitviz.backends.local import LocalBackend
from vitviz.engine.lens import lens_cost, norms_cost

name, size = sys.argv[1], int(sys.argv[2])
be = LocalBackend.from_name(name, random_weights=True, model_kwargs={"img_size": size})
rng = np.random.default_rng(0)
def image():
    return be.loaded.seen_image(
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    )
def status():
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}
runs = {
    "lens": (lambda im: be.logit_lens(im, top_k=5),
             lambda: lens_cost(be.loaded.shape, (size, size), len(be.labels))),
    "norms": (lambda im: be.token_norms(im, k=3.0),
              lambda: norms_cost(be.loaded.shape, (size, size))),
}
for what, (run, cost) in runs.items():
    first = run(image())
    del first
    gc.collect()
    libc.malloc_trim(0)
    im = image()
    open("/proc/self/clear_refs", "w").write("5")
    before = status()["VmRSS"]
    out = run(im)
    peak = status()["VmHWM"] - before
    del out
    est = cost()
    print(json.dumps({"model": name, "size": size, "what": what,
        "tokens": be.loaded.shape.tokens((size, size)), "measured": peak,
        "estimate": est.peak, "ratio": peak / est.peak, "parts": est.parts}), flush=True)
"""


def test_the_costs_by_hand():
    from vitviz.engine.lens import lens_cost, norms_cost

    shape = ModelShape(12, 12, 768, 3072, 86_567_656, 1, (16, 16))
    lens = lens_cost(shape, (224, 224), 1000)
    stream = 12 * 197 * 768 * FLOAT  # the recorded block outputs
    assert lens.parts["stream"] == stream
    plain = explanation_cost(shape, (224, 224))
    transient = 2 * 12 * 197 * 197 * FLOAT + plain.parts["activations"]
    assert lens.parts["forward or stack"] == max(transient, stream)
    assert lens.kept == 12 * 1000 * FLOAT and lens.parts["logits"] == 3 * lens.kept
    assert lens.peak == sum(lens.parts.values())
    deep = ModelShape(48, 2, 768, 64, 1, 1, (16, 16))  # a stream larger than the transients
    assert lens_cost(deep, (224, 224), 10).parts["forward or stack"] == 48 * 197 * 768 * FLOAT
    norms = norms_cost(shape, (224, 224))
    assert norms.kept == 12 * 197 * (2 * FLOAT + 1) + 12 * 197 * 197 * FLOAT
    assert norms.parts["attention"] == 12 * 12 * 197 * 197 * FLOAT  # every layer captured
    assert norms.peak == sum(norms.parts.values()) > lens.peak


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "geometry",
    [
        "vit_tiny_patch16_224:384",
        "deit_tiny_distilled_patch16_224:224",
        "vit_betwixt_patch16_reg4_gap_256:256",
    ],
)
def test_estimate_within_margin_of_the_measured_peak(geometry):
    name, size = geometry.rsplit(":", 1)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, size],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["what"] for r in rows] == ["lens", "norms"]
    for r in rows:
        slack = 0.25 * r["estimate"] + 8 * MB
        assert abs(r["measured"] - r["estimate"]) <= slack, r
