"""Throughput of the HTTP server against the same model batched in-process.

    python bench/serve_load.py --json [--model vit-b16] [--requests 48] [--attention full]

1. ``inprocess_rps``: ``LocalBackend.explain`` on batches of ``--batch`` images (the
   server's batch size), median of ``--repeats`` runs, before any server starts.
2. Starts ``python -m vitviz serve`` on a free loopback port with the same weights (random
   ones, written to a temporary file, unless ``--weights``), then for 1, 4 and 16 concurrent
   clients sends ``--requests`` explain requests each time (the image as the model's input,
   PNG, ``seen=true`` — what ``RemoteBackend`` sends) and asks for ``--attention``
   (``full``: the whole tensor in float16, the light clients' precision; the app asks for
   float32 since its maps must equal the in-process ones; ``readout``: the light answer).
3. After the timing, every answer is decoded and compared with the in-process result for its
   image: a mismatch is attention off by more than float16 precision (2e-3) or logits off by
   more than 1e-3.

Prints one JSON object ``{"inprocess_rps", "concurrency": [{"clients", "requests", "errors",
"mismatches", "throughput_rps", "p50_ms", "p95_ms"}, …], "ratio_16_clients", …}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from vitviz import wire  # noqa: E402
from vitviz.backends.local import LocalBackend  # noqa: E402
from vitviz.demo.scenes import generate_scene  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vitviz", "serve", "--model", args.model, "--port", str(port)]
    cmd += ["--max-batch-size", str(args.batch), "--batch-wait-ms", str(args.wait_ms)]
    cmd += ["--queue-limit", "256", "--timeout", "600", "--weights", args.weights]
    cmd += ["--device", args.device, "--precision", args.precision]
    log = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/v1/health", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def _level(url: str, bodies: list[bytes], clients: int, n: int, attention: str) -> dict:
    """``n`` requests from ``clients`` threads; returns timings and the raw answers."""
    params = {"attention": attention, "seen": "true", "dtype": "float16"}
    answers: list[tuple[int, bytes | None]] = [(0, None)] * n
    latencies = [0.0] * n
    counter = iter(range(n))
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/v1/explain", data=body, params=params, timeout=600)
                answers[i] = (i % len(bodies), r.content if r.ok else None)
            except requests.RequestException:
                answers[i] = (i % len(bodies), None)
            latencies[i] = time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": n,
        "throughput_rps": round(n / wall, 3),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * float(np.percentile(latencies, 95)), 1),
        "_answers": answers,
    }


def _mismatches(answers, expected, attention: str) -> tuple[int, int]:
    errors = mismatches = 0
    for idx, data in answers:
        if data is None:
            errors += 1
            continue
        _, arrays = wire.decode(data)
        want = expected[idx]
        if attention == "full":
            got, ref = arrays["attention"], want.attention
        else:
            got = arrays["readout"]
            ref = np.einsum("n,lhnm->lhm", want.layout.readout_weights(), want.attention)
        same = np.allclose(got, ref, atol=2e-3, rtol=0)
        if want.logits is not None:
            same = same and np.allclose(arrays["logits"], want.logits, atol=1e-3, rtol=1e-4)
        mismatches += not same
    return errors, mismatches


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit-b16")
    p.add_argument("--weights", help="weights file (default: random weights)")
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--batch", type=int, default=16, help="server batch size and in-process batch")
    p.add_argument("--wait-ms", type=float, default=10.0, help="server batch wait")
    p.add_argument("--attention", choices=["full", "readout"], default="full")
    p.add_argument("--images", type=int, default=16, help="distinct images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu, cuda (server and in-process alike)")
    p.add_argument("--precision", default="fp32", help="fp32 keeps answers comparable")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import tempfile

    import torch
    from safetensors.torch import save_file

    tmp = tempfile.TemporaryDirectory(prefix="vitviz-bench-")
    if not args.weights:  # random weights, written to a file so the server loads the same
        torch.manual_seed(0)
        model = LocalBackend.from_name(args.model, random_weights=True, device="cpu")
        args.weights = str(Path(tmp.name) / "random.safetensors")
        state = model.loaded.model.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, args.weights)
        del model
    local = LocalBackend.from_name(
        args.model,
        weights=args.weights,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch,
    )
    images = [Image.fromarray(generate_scene(9000 + i).image) for i in range(args.images)]
    seen = [local.loaded.seen_image(im) for im in images]
    bodies = []
    for im in seen:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)
        bodies.append(buf.getvalue())
    batch = (seen * (args.batch // len(seen) + 1))[: args.batch]
    local.explain(batch[:2], seen=True)  # warm-up
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        local.explain(batch, seen=True)
        runs.append(len(batch) / (time.perf_counter() - t0))
    inprocess = statistics.median(runs)
    expected = local.explain(seen, seen=True)
    del local

    port = _port()
    proc = _start_server(args, port)
    url = f"http://127.0.0.1:{port}"
    try:
        params = {"attention": args.attention, "seen": "true"}
        for body in bodies[:2]:  # warm-up
            requests.post(f"{url}/v1/explain", data=body, params=params, timeout=600)
        levels = []
        for clients in (int(c) for c in args.clients.split(",")):
            level = _level(url, bodies, clients, args.requests, args.attention)
            errors, mism = _mismatches(level.pop("_answers"), expected, args.attention)
            levels.append({**level, "errors": errors, "mismatches": mism})
        health = requests.get(f"{url}/v1/health", timeout=10).json()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        tmp.cleanup()
    top = levels[-1]["throughput_rps"]
    out = {
        "model": args.model,
        "attention": args.attention,
        "batch": args.batch,
        "inprocess_rps": round(inprocess, 3),
        "inprocess_runs_rps": [round(r, 3) for r in runs],
        "concurrency": levels,
        f"ratio_{levels[-1]['clients']}_clients": round(top / inprocess, 3),
        "server_batches": health["replica"],
        "device": args.device,
        "precision": args.precision,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
