"""Shared fixtures: tiny random-weight timm ViTs and the sample photos. Tests run offline."""

from __future__ import annotations

import os
import re
import tempfile

# Before huggingface_hub is imported anywhere: no network, and an empty cache of our own so
# that weights a developer has downloaded cannot change what the tests see.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="vitviz-hf-")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)

import contextlib
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vitviz.backends.local import LocalBackend
from vitviz.inputs.assets import ASSETS
from vitviz.models import LoadedModel, load_model

# How long a test waits for a state it expects (a thread's result, a server's answer, a page's
# canvas): generous, so that a loaded machine (a busy 2-core CI runner, a CPU hog beside the
# suite) slows the suite down without failing it. No test asserts a speed; speeds are measured
# in bench/.
STATE_TIMEOUT_S = 180.0


def tiny(name: str, seed: int = 0, **kwargs) -> LoadedModel:
    """A random-weight model on the CPU, seeded so two calls give the same weights."""
    torch.manual_seed(seed)
    return load_model(name, random_weights=True, device="cpu", **kwargs)


@pytest.fixture(scope="session")
def vit_tiny() -> LoadedModel:
    """Random-weight vit_tiny_patch16_224: 12 layers, 3 heads, class token."""
    return tiny("vit_tiny_patch16_224")


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """A seeded vit_tiny saved as safetensors (stands in for a trained model)."""
    m = tiny("vit_tiny_patch16_224", seed=7)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in m.model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def demo() -> LocalBackend:
    """The bundled demo model in this process, on the CPU (one per test module)."""
    return LocalBackend.from_name("demo", device="cpu")


@pytest.fixture
def fresh_cache():
    """Each test starts without models or explanations cached by an earlier one (page tests:
    ``pytestmark = pytest.mark.usefixtures("fresh_cache")``)."""
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


@pytest.fixture(scope="session")
def cat_image() -> Image.Image:
    """The CC0 cat photo (451×300)."""
    return Image.open(ASSETS / "chelsea.png").convert("RGB")


@pytest.fixture(scope="session")
def coffee_image() -> Image.Image:
    """The CC0 coffee photo (600×400)."""
    return Image.open(ASSETS / "coffee.png").convert("RGB")


def free_port() -> int:
    """A loopback TCP port nobody listens on (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image: Image.Image) -> bytes:
    """An image as PNG file bytes."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def words(markdown: str) -> str:
    """What the browser shows for Streamlit Markdown whose punctuation the page escaped
    (and whose addresses it kept from being linked with invisible word joiners)."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def plotly_array(obj):
    """A plotly JSON value as numpy (plotly 6 writes arrays as base64 ``bdata``)."""
    import base64

    import numpy as np

    if isinstance(obj, dict) and "bdata" in obj:
        arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
        if "shape" in obj:
            arr = arr.reshape([int(s) for s in str(obj["shape"]).split(",")])
        return arr
    return np.asarray(obj)


def in_threads(target, count: int) -> None:
    """Run ``target(i)`` for i in 0…count-1, each in its own thread, and wait for all."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait_until(condition, seconds: float = STATE_TIMEOUT_S, what: str = "the condition") -> None:
    """Poll ``condition()`` until it is true; fail after ``seconds`` (a hang, not a slow run)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds:.0f} s waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def no_network(monkeypatch):
    """The connections a test attempts, each refused at once: a test that must fail without
    waiting on the network asserts this list stays empty (instead of timing itself)."""
    import socket

    attempts: list[tuple[str, tuple]] = []

    def refuse(kind: str):
        def refused(*args, **kwargs):
            attempts.append((kind, args))
            raise OSError(f"this test allows no network ({kind})")

        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


@contextlib.contextmanager
def never_waits_on(fifo: Path, seconds: float = STATE_TIMEOUT_S):
    """Around code that must refuse the FIFO ``fifo`` without opening it. Code that opens it
    waits for a writer forever: after ``seconds`` a writer is opened to release it and the test
    fails, so a hang becomes a failure without a time limit on the code."""
    import os

    released: list[bool] = []

    def release() -> None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader has it open: nothing waits on it
            return
        released.append(True)
        os.close(fd)

    timer = threading.Timer(seconds, release)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    assert not released, f"{fifo} was opened and waited on for {seconds:.0f} s"


# ----------------------------------------------------------------------------- processes

ROOT = ASSETS.parent
# Two Ray instances starting side by side take ~20 s on a quiet 2-core machine; beside two busy
# loops a start once took minutes: a server start waits on its health up to this long.
SERVER_START_S = 600.0


def wait_healthy(proc, url: str, log: Path, seconds: float, what: str) -> None:
    """Until ``GET url`` answers 200; the process is killed and the test fails with the tail of
    its log when it exits first or ``seconds`` pass."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=5) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{what} did not start:\n{log.read_text(errors='replace')[-4000:]}")


def stop(proc, sig: int | None = None, seconds: float = 60) -> None:
    """Stop a process the tests started (``sig``, SIGTERM by default), killed if it lingers."""
    import signal
    import subprocess

    proc.send_signal(sig or signal.SIGTERM)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def start_serve(args: list[str], env: dict[str, str], name: str = "serve"):
    """``python -m vitviz serve`` with ``args`` on a free loopback port (not waited for):
    ``(process, url, log path)``. ``--model demo`` unless ``args`` names a model."""
    import subprocess
    import sys

    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vitviz-{name}-{port}.log"
    model = [] if "--model" in args else ["--model", "demo"]
    cmd = [sys.executable, "-m", "vitviz", "serve", *model, "--port", str(port), *args]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}", log


@contextlib.contextmanager
def page_process(env: dict[str, str] | None = None, name: str = "page"):
    """``streamlit run app.py`` on a free loopback port, healthy: yields ``(url, process)``.
    Afterwards the page is stopped and its log must hold no traceback."""
    import subprocess
    import sys

    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vitviz-{name}-{port}.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")]
    cmd += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{url}/_stcore/health", log, STATE_TIMEOUT_S, "the page")
        yield url, proc
    finally:
        stop(proc, seconds=20)
        output = log.read_text(errors="replace")
        log.unlink(missing_ok=True)
    assert "Traceback" not in output, output[-3000:]
