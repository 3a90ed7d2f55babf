"""Live camera speed: a recorded clip through the page's frame processor at the camera's rate.

    python bench/live.py --model demo --json [--fps 30] [--seconds 8] [--method rollout]
    python bench/live.py --model vit-b16 --random-weights --json

Generates a 640×480 clip from the demo scenes (the camera pans over one scene, then another),
feeds it to :class:`vitviz.engine.stream.LiveExplainer` (what the page's WebRTC callback uses) at
``--fps`` frames per second, as a camera would, and draws the latest map on every frame as the
page does. Prints ``model``, ``device``, ``fps_in``, ``fps_out`` (maps per second),
``dropped`` (frames never explained because a newer one arrived), ``latency_ms_p50`` and
``latency_ms_p95`` (frame arrival → its map) and ``compose_ms_p50`` (drawing the map on one
frame). A warm-up of 3 frames is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="any model name the CLI takes")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--method", default="rollout", choices=("rollout", "attention", "class"))
    ap.add_argument("--fps", type=float, default=30.0, help="the camera's frame rate")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from vitviz.backends.local import LocalBackend
    from vitviz.engine.stream import LiveExplainer, LiveSettings, moving_clip

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    backend = LocalBackend.from_name(
        args.model, random_weights=args.random_weights, device=args.device
    )
    frames = list(moving_clip(frames=max(2, round(args.fps * args.seconds))))
    live = LiveExplainer(backend, LiveSettings(method=args.method))
    for frame in frames[:3]:  # warm-up, not counted
        live.explain_frame(frame)
    live.stats.latencies_ms.clear()
    compose_ms: list[float] = []
    start = time.monotonic()
    for i, frame in enumerate(frames):
        due = start + i / args.fps
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        live.submit(frame)
        t0 = time.perf_counter()
        live.compose(frame)
        compose_ms.append((time.perf_counter() - t0) * 1000)
    fed = time.monotonic() - start
    deadline = time.monotonic() + 30
    while live.stats.explained + live.stats.dropped + live.stats.failed < live.stats.submitted:
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    live.close()
    stats = live.stats
    latencies = list(stats.latencies_ms)
    info = backend.info()
    result = {
        "model": args.model,
        "timm_name": info.timm_name,
        "weights": info.weights.source,
        "device": info.device_label,
        "method": args.method,
        "frame": [frames[0].shape[1], frames[0].shape[0]],
        "fps_in": round(len(frames) / fed, 1),
        "fps_out": round(stats.explained / elapsed, 1),
        "submitted": stats.submitted,
        "explained": stats.explained,
        "dropped": stats.dropped,
        "failed": stats.failed,
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p95": round(percentile(latencies, 95), 1) if latencies else None,
        "compose_ms_p50": round(statistics.median(compose_ms), 2),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
