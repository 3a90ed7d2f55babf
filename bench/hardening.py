"""Memory and robustness under hostile use: big uploads, slow uploads, open ports.

    python bench/hardening.py page --model demo --json          # page RSS after 20 uploads
    python bench/hardening.py page --model vit_base_patch16_224 --json
    python bench/hardening.py server --model demo --json        # replica RSS, slow uploads, ports

``page`` drives the app in this process with Streamlit's AppTest: it loads the model (random
weights for timm names), opens a sample, then uploads ``--uploads`` different
``--side``×``--side`` PNGs (a few KB each: palette images of flat rectangles) and reports the
process's RSS growth from just before the first upload (``rss_growth_mb``, and its peak), the
bytes the page's caches hold, and the time per upload.

``server`` starts ``python -m vitviz serve`` on loopback and reports:

* ``replica_rss_mb``: the replica's RSS idle, at its peak while ``--clients`` concurrent
  clients each upload such a PNG, and after;
* ``slow_uploads``: while ``--tricklers`` clients send their bodies one byte a second, the
  status and latency of ordinary requests (and, for reference, without the tricklers), and
  what the tricklers finally get (408 after the upload timeout);
* ``listening``: every listening socket of the server's processes (address, process name).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

MB = 2**20


def big_png(side: int, seed: int) -> bytes:
    """A ``side``×``side`` palette PNG of flat rectangles (compresses to a few KB)."""
    rng = np.random.default_rng(seed)
    img = Image.new("P", (side, side), 0)
    img.putpalette([int(v) for v in rng.integers(0, 256, 768)])
    for i in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, side // 2, 2))
        img.paste(i + 1, (x0, y0, x0 + side // 3, y0 + side // 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MiB."""
    return psutil.Process(pid or os.getpid()).memory_info().rss / MB


# ----------------------------------------------------------------------------- page


def bench_page(args: argparse.Namespace) -> dict:
    """RSS of the page process while visitors upload large images."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    if args.model != "demo":
        at.session_state["model"] = "__timm__"
        at.session_state["random_weights"] = True
    at.run()
    if args.model != "demo":
        at.text_input[0].input(args.model).run()
    at.radio(key="source").set_value("Upload").run()
    assert not at.exception, at.exception
    uploads = [big_png(args.side, i) for i in range(args.uploads)]
    # warm-up upload of a small image, so the model's first explanation is not counted
    small = io.BytesIO()
    Image.new("RGB", (300, 200), "gray").save(small, format="PNG")
    at.file_uploader(key="upload").set_value(("warm.png", small.getvalue(), "image/png")).run()
    before = rss_mb()
    peak, times = before, []
    for i, data in enumerate(uploads):
        start = time.perf_counter()
        at.file_uploader(key="upload").set_value((f"big-{i}.png", data, "image/png")).run()
        times.append(time.perf_counter() - start)
        assert not at.exception, at.exception
        errors = [e.value for e in at.error]
        assert not errors, errors
        peak = max(peak, rss_mb())
    after = rss_mb()
    found = _cache_resources()  # the page's own PageCaches (None before they existed)
    caches = found[0] if found else None
    return {
        "mode": "page",
        "model": args.model,
        "uploads": args.uploads,
        "side": args.side,
        "upload_bytes_median": int(statistics.median(len(u) for u in uploads)),
        "rss_before_mb": round(before, 1),
        "rss_growth_mb": round(after - before, 1),
        "rss_peak_growth_mb": round(peak - before, 1),
        "cached_mb": None if caches is None else round(caches.nbytes / MB, 1),
        "cache_budget_mb": None if caches is None else round(caches.limits.cache_bytes / MB, 1),
        "upload_s_median": round(statistics.median(times), 3),
    }


def _cache_resources() -> list:
    """Values Streamlit's ``st.cache_resource`` holds in this process."""
    import gc

    try:
        from vitviz.ui.state import PageCaches
    except ImportError:  # an older vitviz
        return []
    return [o for o in gc.get_objects() if isinstance(o, PageCaches)]


# ----------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    import requests

    port = _free_port()
    cmd = [sys.executable, "-m", "vitviz", "serve", "--model", args.model, "--port", str(port)]
    if args.model not in ("demo",):
        cmd.append("--random-weights")
    help_text = subprocess.run(
        [sys.executable, "-m", "vitviz", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    if "--upload-timeout" in help_text:  # older versions had only the request timeout
        cmd += ["--upload-timeout", str(args.upload_timeout)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VITVIZ_TOKEN": ""}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/v1/health", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _replica(pid: int) -> psutil.Process:
    for p in _tree(pid):
        try:
            if "ServeReplica" in p.name() or "ServeReplica" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    raise SystemExit("no Serve replica process found")


def _listening(pid: int) -> list[dict]:
    pids = {p.pid: p for p in _tree(pid)}
    out = []
    for c in psutil.net_connections("inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.append({"address": f"{c.laddr.ip}:{c.laddr.port}", "process": pids[c.pid].name()})
    return sorted(out, key=lambda d: (d["process"], d["address"]))


def _trickle(url: str, seconds: float, results: list, started: threading.Barrier) -> None:
    """Send headers, then one byte a second; record the final status line."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=seconds + 30)
    body = 4096
    sock.sendall(
        f"POST /v1/explain HTTP/1.1\r\nHost: {host}\r\nContent-Length: {body}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    started.wait()
    start = time.monotonic()
    sock.settimeout(1.0)
    status = "no answer"
    while time.monotonic() - start < seconds + 20:
        with contextlib.suppress(OSError):
            sock.sendall(b"\0")
        try:
            got = sock.recv(4096)
            if got:
                status = got.split(b"\r\n", 1)[0].decode(errors="replace")
                break
        except TimeoutError:
            continue
        except OSError:
            status = "reset"
            break
    results.append((status, round(time.monotonic() - start, 1)))
    sock.close()


def _normal_requests(url: str, data: bytes, n: int) -> tuple[list[int], list[float]]:
    import requests

    codes, times = [], []
    for _ in range(n):
        start = time.perf_counter()
        r = requests.post(f"{url}/v1/explain", data=data, timeout=120)
        times.append(time.perf_counter() - start)
        codes.append(r.status_code)
    return codes, times


def bench_server(args: argparse.Namespace) -> dict:
    """Replica RSS under concurrent big uploads, slow uploads, and listening sockets."""
    import requests

    proc, url = _start_server(args)
    try:
        replica = _replica(proc.pid)
        listening = _listening(proc.pid)
        small = io.BytesIO()
        Image.new("RGB", (300, 200), "gray").save(small, format="PNG")
        _normal_requests(url, small.getvalue(), 3)  # warm up
        idle = rss_mb(replica.pid)
        peak = [idle]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(replica.pid))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        uploads = [big_png(args.side, 1000 + i) for i in range(args.clients)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            codes = list(
                pool.map(
                    lambda d: requests.post(f"{url}/v1/explain", data=d, timeout=600).status_code,
                    uploads,
                )
            )
        big_s = time.perf_counter() - start
        stop.set()
        watcher.join()
        after = rss_mb(replica.pid)

        # ordinary requests with and without tricklers
        data = small.getvalue()
        base_codes, base_times = _normal_requests(url, data, args.requests)
        results: list = []
        started = threading.Barrier(args.tricklers + 1)
        threads = [
            threading.Thread(target=_trickle, args=(url, args.upload_timeout, results, started))
            for _ in range(args.tricklers)
        ]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.5)
        health = requests.get(f"{url}/v1/health", timeout=10).json()["replica"]
        codes_t, times_t = _normal_requests(url, data, args.requests)
        for t in threads:
            t.join()
        finals: dict[str, int] = {}
        for status, _ in results:
            finals[status] = finals.get(status, 0) + 1
        return {
            "mode": "server",
            "model": args.model,
            "side": args.side,
            "clients": args.clients,
            "big_upload_statuses": sorted(set(codes)),
            "big_uploads_s": round(big_s, 2),
            "replica_rss_mb": {
                "idle": round(idle, 1),
                "peak": round(peak[0], 1),
                "after": round(after, 1),
                "peak_growth": round(peak[0] - idle, 1),
            },
            "slow_uploads": {
                "tricklers": args.tricklers,
                "upload_timeout_s": args.upload_timeout,
                "uploading_seen_by_server": health.get("uploading"),
                "in_flight_seen_by_server": health["in_flight"],
                "without": {
                    "statuses": sorted(set(base_codes)),
                    "median_ms": round(1000 * statistics.median(base_times), 1),
                },
                "with": {
                    "statuses": sorted(set(codes_t)),
                    "median_ms": round(1000 * statistics.median(times_t), 1),
                    "max_ms": round(1000 * max(times_t), 1),
                },
                "trickler_outcomes": finals,
                "trickler_seconds_median": statistics.median(s for _, s in results),
            },
            "listening": listening,
            "all_loopback": all(
                d["address"].split(":")[0] in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
                or d["address"].startswith("::ffff:127.0.0.1")
                for d in listening
            ),
        }
    finally:
        proc.send_signal(2)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark and print its JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["page", "server"])
    p.add_argument("--model", default="demo")
    p.add_argument("--side", type=int, default=6000)
    p.add_argument("--uploads", type=int, default=20)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--tricklers", type=int, default=64)
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--upload-timeout", type=float, default=15.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = bench_page(args) if args.mode == "page" else bench_server(args)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
