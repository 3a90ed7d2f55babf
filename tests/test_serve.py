"""The HTTP server, for real: ``python -m vitviz serve`` on loopback, driven over HTTP.

Two servers run while this module's tests do, each its own Ray instance:
- ``main``: the demo model with default limits but a 5 s upload timeout;
- ``strict``: a token, a queue of one request, a 2 s timeout that every explanation passes
  (its batches wait 3 s to fill), a 0.5 MiB upload limit, two uploads at a time and a 3 s
  upload timeout, to see each refusal.
Answers are compared with the in-process engine on the same images.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import (
    ASSETS,
    SERVER_START_S,
    STATE_TIMEOUT_S,
    free_port,
    png,
    start_serve,
    stop,
    wait_healthy,
    words,
)
from vitviz import methods, wire
from vitviz.backends.local import LocalBackend
from vitviz.backends.remote import RemoteBackend
from vitviz.cli import main
from vitviz.demo.scenes import generate_scene
from vitviz.errors import OptionsError, ServerError

pytest.importorskip("ray.serve", reason="the server needs Ray Serve (requirements-serve.txt)")


ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"
ATOL = 2e-3  # float16 on the wire: attention ≤ 1, so ≤ 2⁻¹¹ plus accumulated rounding


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    return start_serve(args, env)


def _wait(proc: subprocess.Popen, url: str, log: Path) -> None:
    wait_healthy(proc, f"{url}/v1/health", log, SERVER_START_S, "the server")


def _stop(proc: subprocess.Popen) -> None:
    stop(proc, signal.SIGINT)


@pytest.fixture(scope="module")
def servers():
    """Both servers, started side by side (each needs ~20 s to come up)."""
    main_srv = _start(["--batch-wait-ms", "30", "--upload-timeout", "5"], {"VITVIZ_TOKEN": ""})
    limits = ["--queue-limit", "1", "--timeout", "2", "--batch-wait-ms", "3000"]
    uploads = ["--max-uploads", "2", "--upload-timeout", "3"]
    strict = _start([*limits, *uploads, "--max-upload-mb", "0.5"], {"VITVIZ_TOKEN": TOKEN})
    try:
        for proc, url, log in (main_srv, strict):
            _wait(proc, url, log)
        yield {"main": main_srv[1], "strict": strict[1], "main_pid": main_srv[0].pid}
    finally:
        for proc, _, log in (main_srv, strict):
            _stop(proc)
            text = log.read_text(errors="replace")
            log.unlink(missing_ok=True)
            assert "Traceback" not in text, text[-4000:]


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    return LocalBackend.from_name("demo", device="cpu")


def scenes(n: int, start: int = 100) -> list[Image.Image]:
    return [Image.fromarray(generate_scene(start + i).image) for i in range(n)]


def assert_same(remote, local) -> None:
    """A remote explanation equals the in-process one, to float16 precision."""
    assert remote.layout == local.layout
    assert np.array_equal(remote.image, local.image)
    assert [p.index for p in remote.predictions] == [p.index for p in local.predictions]
    for r, lo in zip(remote.predictions, local.predictions, strict=True):
        assert r.label == lo.label and abs(r.probability - lo.probability) < 1e-4
    np.testing.assert_allclose(remote.attention, local.attention, atol=ATOL, rtol=0)
    np.testing.assert_allclose(remote.logits, local.logits, atol=1e-4, rtol=1e-5)


# -------------------------------------------------------------------------------- stopping
# First in the module, before the two servers above start, so the machine is less busy.

STOPPED_WITHIN_S = 120  # generous: a loaded 2-core machine; no speed is asserted


def _gone(proc) -> bool:
    """A psutil process that has ended (a zombie nobody reaps has ended too)."""
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _descendants(pid: int) -> set:
    import psutil

    try:
        return set(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return set()


def _name(proc) -> str:
    """A process's name, or "" once it has ended (short-lived Ray helpers come and go)."""
    import psutil

    try:
        return proc.name()
    except psutil.Error:
        return ""


def _listening(procs: set) -> set[tuple[str, int]]:
    """The (address, port) pairs the processes listen on."""
    import psutil

    pids = {p.pid for p in procs}
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def _stop_and_check(proc: subprocess.Popen, seen: set, log: Path, when: float) -> None:
    """SIGTERM the server: within STOPPED_WITHIN_S it exits, and when it has exited none of
    the processes it ever had runs and nothing that ran before the signal listens on the
    ports they had (Ray's agents used to outlive it by a minute)."""
    import psutil

    ports = _listening(seen | {psutil.Process(proc.pid)})
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOPPED_WITHIN_S
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= _descendants(proc.pid)  # whatever it starts while stopping counts too
        time.sleep(0.2)
    text = log.read_text(errors="replace")
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)
        pytest.fail(f"the server did not exit on SIGTERM:\n{text[-4000:]}")
    left = [p for p in seen if not _gone(p)]
    names = [(p.pid, _name(p)) for p in left if not _gone(p)]
    for p in left:  # clean up after a failure, then report it
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert names == [], f"exit code {proc.returncode}\n{text[-4000:]}"
    still = [
        (c.laddr, c.pid)
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
        and (c.laddr.ip, c.laddr.port) in ports
        and (c.pid is None or _started_before(c.pid, when))
    ]
    assert still == []
    assert "Traceback" not in text, text[-4000:]


def _started_before(pid: int, when: float) -> bool:
    import psutil

    try:
        return psutil.Process(pid).create_time() < when
    except psutil.Error:
        return False


def test_a_stopped_server_leaves_no_process_behind():
    """Issue 21: SIGTERM used to leave Ray's DashboardAgent and RuntimeEnvAgent running,
    listening on loopback. Now the server, Ray and every process they started are gone."""
    proc, url, log = _start([], {"VITVIZ_TOKEN": ""})
    try:
        _wait(proc, url, log)
        seen = _descendants(proc.pid)
        names = " ".join(_name(p) for p in seen)
        assert "raylet" in names and "gcs_server" in names
        assert len(_listening(seen)) >= 5  # the HTTP proxy, GCS, raylet, workers, agents
        _stop_and_check(proc, seen, log, time.time())
        assert proc.returncode == 130  # interrupted, not aborted by Ray's crash handler
    finally:
        if proc.poll() is None:
            proc.kill()
        log.unlink(missing_ok=True)


def test_a_server_stopped_while_starting_leaves_no_process_behind():
    """SIGTERM as soon as Ray's raylet runs (Serve not up yet): nothing is left either."""
    proc, _, log = _start([], {"VITVIZ_TOKEN": ""})
    try:
        seen: set = set()
        raylet = False
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline and proc.poll() is None and not raylet:
            seen |= _descendants(proc.pid)
            raylet = any("raylet" in _name(p) for p in seen)
            time.sleep(0.1)
        assert raylet, log.read_text(errors="replace")
        _stop_and_check(proc, seen, log, time.time())
    finally:
        if proc.poll() is None:
            proc.kill()
        log.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- main server


def test_health_and_model_description(servers, local):
    health = requests.get(f"{servers['main']}/v1/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == "demo"
    info = requests.get(f"{servers['main']}/v1/model", timeout=10).json()
    assert info["api_version"] == 5 and info["name"] == "demo"
    assert "trust" in info["capabilities"] and "text_relevance" not in info["capabilities"]
    assert info["labels"] == local.labels
    assert (info["layers"], info["heads"]) == (local.loaded.num_layers, local.loaded.num_heads)
    assert set(info["methods"]) == set(methods.METHODS)
    assert info["methods"]["chefer"]["needs_gradients"] is True
    assert info["limits"]["token_required"] is False
    assert "token" not in json.dumps(info["limits"]).replace("token_required", "")
    docs = requests.get(f"{servers['main']}/openapi.json", timeout=10).json()
    paths = {"/v1/health", "/v1/model", "/v1/model/anatomy", "/v1/explain", "/v1/trust"}
    assert paths | {"/v1/text-relevance"} <= set(docs["paths"])
    trust_query = {p["name"] for p in docs["paths"]["/v1/trust"]["post"]["parameters"]}
    assert trust_query == {"class", "main", "steps", "seeds", "batch"}


def test_anatomy_matches_the_local_model(servers, local):
    remote = RemoteBackend(servers["main"]).anatomy()
    here = local.anatomy()
    assert np.array_equal(remote.filters, here.filters)
    np.testing.assert_allclose(remote.position_similarity, here.position_similarity, atol=1e-6)
    assert remote.position_grid == here.position_grid and remote.width == here.width


def test_remote_backend_equals_the_local_engine(servers, local):
    remote = RemoteBackend(servers["main"])
    images = [Image.open(ASSETS / n).convert("RGB") for n in ("chelsea.png", "coffee.png")]
    for r, lo in zip(remote.explain(images), local.explain(images), strict=True):
        assert_same(r, lo)
    info = remote.info()
    assert info.backend == servers["main"] and info.name == "demo"


def test_the_live_view_over_a_server_gets_the_light_readout_answer(servers, local):
    """The live stream asks the server for the readout rows only; its map equals the local
    engine's raw attention of the same frame."""
    from vitviz.engine.stream import LiveExplainer, LiveSettings, moving_clip

    frame = next(moving_clip(frames=2))
    remote = RemoteBackend(servers["main"])
    seen = remote.geometry(Image.fromarray(frame))
    predictions, layout, rows = remote.readout(seen, top_k=3, seen=True)
    here = local.explain([seen], seen=True)[0]
    assert layout == here.layout and rows.shape == (*here.attention.shape[:2], layout.num_tokens)
    assert [p.index for p in predictions] == [p.index for p in here.predictions[:3]]
    live = LiveExplainer(remote, LiveSettings(method="attention", layer=3, head=None))
    got = live.explain_frame(frame).grid
    want = methods.compute_map("attention", here.attention, here.layout, layer=3, head=None)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_the_lesson_gets_the_image_vectors_from_the_server(servers, local):
    """Lesson steps 3–5 over a server: the same patch, position and token vectors, in float16."""
    remote = RemoteBackend(servers["main"])
    seen = remote.geometry(Image.open(ASSETS / "chelsea.png").convert("RGB"))
    got, want = remote.embeddings(seen), local.embeddings(seen)
    assert got.num_prefix == want.num_prefix and got.norm_pre == want.norm_pre
    for name in ("pixels", "patches", "positions", "tokens", "features"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, atol=2e-3 * max(1.0, np.abs(b).max()), rtol=0)
    with pytest.raises(OptionsError, match="model's input"):
        remote.embeddings(Image.open(ASSETS / "chelsea.png").convert("RGB"))
    r = requests.post(f"{servers['main']}/v1/embeddings", data=b"not an image", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_image"


def test_token_features_come_from_the_server(servers, local):
    """The Features view over a server: the same last-layer features, layout and norm (float16
    with one scale per token), so the PCA picture and patch similarity match the engine's."""
    remote = RemoteBackend(servers["main"])
    cat = Image.open(ASSETS / "chelsea.png").convert("RGB")
    seen = remote.geometry(cat)
    got, want = remote.features(seen), local.features(seen)
    assert got.layout == want.layout and got.norm == want.norm == "LayerNorm"
    assert got.tokens.dtype == np.float32 and got.tokens.shape == want.tokens.shape
    peak = np.abs(want.tokens).max(axis=1, keepdims=True)
    np.testing.assert_allclose(got.tokens, want.tokens, atol=2e-3 * peak.max(), rtol=0)
    p = want.layout.num_prefix
    np.testing.assert_allclose(
        methods.patch_similarity(got.tokens, p + 42),
        methods.patch_similarity(want.tokens, p + 42),
        atol=2e-3,
    )
    with pytest.raises(OptionsError, match="model's input"):
        remote.features(cat)
    r = requests.post(f"{servers['main']}/v1/features", data=png(cat), timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "bad_option"
    assert "features need the model's input" in err["message"]


def test_class_gradients_equal_the_local_engine(servers, local):
    remote = RemoteBackend(servers["main"])
    images = scenes(2, start=7)
    wanted = [[None, 2], [5, 1]]
    r_all = remote.explain_classes(images, wanted, full_gradients=True)
    l_all = local.explain_classes(images, wanted, full_gradients=True)
    light = remote.explain_classes(images, wanted)  # the default: relevance only
    for r, lo, li in zip(r_all, l_all, light, strict=True):
        assert r.classes == lo.classes == li.classes and r.labels == lo.labels
        assert_same(r.explanation, lo.explanation)
        assert li.gradients is None
        scale = np.abs(lo.gradients).max()
        np.testing.assert_allclose(r.gradients, lo.gradients, atol=2e-3 * scale, rtol=0)
        attn, layout = lo.explanation.attention, lo.explanation.layout
        for k in range(2):  # the class maps a user sees agree as well
            b = methods.compute_map("chefer", attn, layout, grads=lo.gradients[k])
            for got in (r.gradients[k], li.relevance[k]):
                a = methods.compute_map(
                    "chefer", r.explanation.attention, r.explanation.layout, grads=got
                )
                np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-3 * np.abs(b).max())
            want = methods.compute_map(
                "grad-rollout", attn, layout, grads=lo.gradients[k], fusion="min", discard=0.5
            )
            a = methods.compute_map(
                "grad-rollout", attn, layout, grads=li.relevance[k], fusion="min", discard=0.5
            )
            np.testing.assert_allclose(a, want, rtol=2e-2, atol=2e-3 * np.abs(want).max())
    # only the layers asked for are sent; the others stay zero as in the local engine
    some = remote.explain_classes(images[:1], [[3]], layers=[4, 5], full_gradients=True)[0]
    assert not some.gradients[:, :4].any() and some.gradients[:, 4:].any()
    assert some.relevance[0].layers == (4, 5) and not some.relevance[0].chefer[:4].any()


def test_the_server_resizes_original_uploads_itself(servers, local):
    data = (ASSETS / "chelsea.png").read_bytes()
    r = requests.post(
        f"{servers['main']}/v1/explain", data=data, params={"dtype": "uint8"}, timeout=60
    )
    assert r.status_code == 200 and r.headers["content-type"] == wire.MEDIA_TYPE
    header, arrays = wire.decode(r.content)
    here = local.explain([Image.open(ASSETS / "chelsea.png")])[0]
    assert np.array_equal(arrays["image"], here.image)
    assert "attention" not in arrays  # only on request
    readout = here.attention[:, :, here.layout.readout_tokens[0], :]
    bound = readout.max(-1, keepdims=True) / 510 + 1e-6  # uint8, scaled per row
    assert np.all(np.abs(arrays["readout"] - readout) <= bound)
    np.testing.assert_allclose(
        arrays["rollout"], methods.attention_rollout(here.attention, here.layout), atol=1e-5
    )
    assert header["predictions"][0]["index"] == here.predictions[0].index


@pytest.mark.parametrize(
    ("params", "body", "status", "code", "words"),
    [
        ({}, b"this is not an image", 400, "bad_image", "not an image"),
        ({}, b"", 400, "bad_image", "empty"),
        ({"top_k": "many"}, None, 422, "bad_option", "top_k"),
        ({"attention": "some"}, None, 400, "bad_option", "attention must be"),
        ({"class": "unicorn"}, None, 400, "bad_option", "no class named"),
        ({"class": "2", "layer": "9"}, None, 400, "bad_option", "layer 9"),
        ({"seen": "true"}, None, 400, "bad_option", "seen=true"),
    ],
)
def test_bad_requests_get_json_errors(servers, params, body, status, code, words):
    data = (ASSETS / "chelsea.png").read_bytes() if body is None else body
    r = requests.post(f"{servers['main']}/v1/explain", data=data, params=params, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and words in err["message"]
    assert "Traceback" not in r.text


def test_sixteen_concurrent_clients_get_their_own_answers(servers, local):
    """Different images at once, mixed plain and class-specific: no cross-talk in batches."""
    images = scenes(16, start=300)
    expected = local.explain(images)
    expected_classes = {
        i: local.explain_classes([images[i]], [[None]], full_gradients=True)[0]
        for i in range(0, 16, 4)
    }
    remote = RemoteBackend(servers["main"])
    before = requests.get(f"{servers['main']}/v1/health", timeout=10).json()["replica"]
    barrier = threading.Barrier(16)

    def client(i: int):
        barrier.wait()
        if i in expected_classes:
            return remote.explain_classes([images[i]], [[None]])[0]
        return remote.explain([images[i]])[0]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(client, range(16)))
    for i, got in enumerate(answers):
        if i in expected_classes:
            want = expected_classes[i]
            assert got.classes == want.classes
            layout = want.explanation.layout
            b = methods.chefer(want.explanation.attention, layout, grads=want.gradients[0])
            a = methods.chefer(want.explanation.attention, layout, grads=got.relevance[0])
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)
            got = got.explanation
        assert_same(got, expected[i])
    after = requests.get(f"{servers['main']}/v1/health", timeout=10).json()["replica"]
    assert after["jobs"] - before["jobs"] == 16
    assert after["batches"] - before["batches"] < 16  # requests were batched together
    assert after["largest_batch"] > 1


def test_cli_explains_through_the_server(servers, tmp_path, capsys):
    img = tmp_path / "cat.png"
    img.write_bytes((ASSETS / "chelsea.png").read_bytes())
    args = ["explain", str(img), "--method", "chefer"]
    assert main([*args, "--server", servers["main"], "--out", str(tmp_path / "r")]) == 0
    assert main([*args, "--model", "demo", "--out", str(tmp_path / "l")]) == 0
    remote = json.loads((tmp_path / "r" / "cat.json").read_text())
    here = json.loads((tmp_path / "l" / "cat.json").read_text())
    assert remote["model"]["backend"] == servers["main"]
    assert here["model"]["backend"] == "in-process"
    assert remote["explained_class"] == here["explained_class"]
    assert [p["index"] for p in remote["predictions"]] == [p["index"] for p in here["predictions"]]
    with np.load(tmp_path / "r" / "cat.npz") as r, np.load(tmp_path / "l" / "cat.npz") as lo:
        np.testing.assert_allclose(r["attention"], lo["attention"], atol=ATOL)
        np.testing.assert_allclose(r["map"], lo["map"], rtol=2e-2, atol=2e-3 * lo["map"].max())
    capsys.readouterr()
    assert main([*args, "--server", servers["main"], "--model", "vit-b16"]) == 2
    assert "serves 'demo', not 'vit-b16'" in capsys.readouterr().err


def test_unreachable_server_fails_fast_with_a_clear_message(capsys, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    calls: list[str] = []
    send = requests.Session.request

    def counted(self, method, target, *args, **kwargs):
        calls.append(target)
        return send(self, method, target, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", counted)
    assert main(["explain", str(ASSETS / "chelsea.png"), "--server", url]) == 2
    assert len(calls) == 1 and calls[0].startswith(url)  # one try, no retries
    err = capsys.readouterr().err
    assert f"could not reach the vitviz server at {url}" in err and "Traceback" not in err
    with pytest.raises(ServerError, match="http://"):
        RemoteBackend("gpu-box:8000")


class Trickler:
    """A client that sends its headers, then its body one byte at a time (slowloris)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        import socket

        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(
            f"POST /v1/explain HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4096\r\n"
            f"{extra}Content-Type: application/octet-stream\r\n\r\n\0".encode()
        )

    def answer(self, within: float) -> str:
        """The status line the server finally sends, dripping a byte every 0.2 s meanwhile."""
        import contextlib

        self.sock.settimeout(0.2)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.sock.sendall(b"\0")
            try:
                got = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return "reset"
            return got.split(b"\r\n", 1)[0].decode() if got else "closed"
        return "no answer"

    def close(self) -> None:
        self.sock.close()


def test_slow_uploads_do_not_lock_other_clients_out(servers):
    """70 slowloris clients (more than the 64 queue slots) while a normal client is served."""
    url = servers["main"]
    tricklers = [Trickler(url) for _ in range(70)]
    try:
        deadline = time.time() + STATE_TIMEOUT_S
        while requests.get(f"{url}/v1/health", timeout=10).json()["replica"]["uploading"] < 60:
            assert time.time() < deadline, "the trickling uploads never reached the replica"
            time.sleep(0.1)
        health = requests.get(f"{url}/v1/health", timeout=10).json()["replica"]
        assert health["in_flight"] == 0  # uploading clients hold no queue slot
        r = requests.post(f"{url}/v1/explain", data=png(scenes(1)[0]), timeout=STATE_TIMEOUT_S)
        assert r.status_code == 200  # served, not refused, while they hold their uploads
        # the slow ones are cut off after the upload timeout (5 s here) with 408
        answers = [t.answer(within=20) for t in tricklers]
        assert all(" 408 " in a for a in answers), set(answers)
    finally:
        for t in tricklers:
            t.close()
    r = requests.get(f"{url}/v1/health", timeout=10).json()["replica"]
    assert r["uploading"] == 0 and r["in_flight"] == 0


def test_every_port_of_a_started_server_is_on_loopback(servers):
    import psutil

    root = psutil.Process(servers["main_pid"])
    tree = {p.pid: p for p in (root, *root.children(recursive=True))}
    listening = [
        (c.laddr.ip, c.laddr.port, tree[c.pid].name())
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in tree
    ]
    names = {name for _, _, name in listening}
    assert any("raylet" in n for n in names) and any("gcs_server" in n for n in names)
    assert len(listening) >= 5  # the HTTP proxy, GCS, raylet, workers, agents
    loopback = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    assert [x for x in listening if x[0] not in loopback] == []


def test_the_servers_workers_run_at_the_servers_priority(servers):
    """Ray starts workers at niceness 15; the proxy, controller and replicas are the server, and
    at 15 two busy loops kept Serve's proxy from starting for 10 minutes."""
    import psutil

    root = psutil.Process(servers["main_pid"])
    workers = [
        p for p in root.children(recursive=True) if p.name().startswith(("ray::", "ServeRepl"))
    ]
    names = " ".join(p.name() for p in workers)
    assert "ProxyActor" in names and "ServeController" in names, names
    assert {p.nice() for p in workers} == {root.nice()}


# ----------------------------------------------------------------------------- strict server


def test_uploads_beyond_the_upload_slots_get_503_and_slow_ones_408(servers):
    url, auth = servers["strict"], {"Authorization": f"Bearer {TOKEN}"}
    slow = [Trickler(url, auth) for _ in range(2)]
    try:
        deadline = time.time() + 10
        while requests.get(f"{url}/v1/health", timeout=10).json()["replica"]["uploading"] < 2:
            assert time.time() < deadline
            time.sleep(0.05)
        third = requests.post(f"{url}/v1/explain", data=b"x", headers=auth, timeout=30)
        assert third.status_code == 503 and "uploads being received" in third.text
        assert int(third.headers["Retry-After"]) >= 1
        answers = [t.answer(within=15) for t in slow]
        assert all(" 408 " in a for a in answers), answers
    finally:
        for t in slow:
            t.close()


def test_token_is_enforced(servers):
    url = servers["strict"]
    assert requests.get(f"{url}/v1/health", timeout=10).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = requests.get(f"{url}/v1/model", headers=headers, timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
        r = requests.post(f"{url}/v1/explain", data=b"x", headers=headers, timeout=10)
        assert r.status_code == 401
    with pytest.raises(ServerError, match="needs a token"):
        RemoteBackend(url, token="wrong")
    remote = RemoteBackend(url, token=TOKEN)
    assert remote.info().name == "demo" and remote.limits["token_required"] is True


def test_uploads_over_the_limit_are_refused(servers):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.post(
        f"{servers['strict']}/v1/explain", data=b"\0" * (600 * 1024), headers=auth, timeout=30
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
    # without a Content-Length (chunked), the body is cut off as it streams in
    chunks = (b"\0" * 65536 for _ in range(10))
    r = requests.post(f"{servers['strict']}/v1/explain", data=chunks, headers=auth, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"


def test_full_queue_answers_503_with_retry_after_and_slow_work_504(servers):
    url, auth = servers["strict"], {"Authorization": f"Bearer {TOKEN}"}
    data = png(scenes(1)[0])
    first: dict = {}

    def slow() -> None:  # holds the only slot: its batch waits 3 s, the timeout is 2 s
        first["r"] = requests.post(f"{url}/v1/explain", data=data, headers=auth, timeout=30)

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.time() + 2.5
    while time.time() < deadline:  # until the slow request holds the slot
        health = requests.get(f"{url}/v1/health", timeout=10).json()
        if health["replica"]["in_flight"] == 1:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the first request never reached the server")
    busy = requests.post(f"{url}/v1/explain", data=data, headers=auth, timeout=30)
    t.join()
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
    assert int(busy.headers["Retry-After"]) >= 1
    timed_out = first["r"]
    assert timed_out.status_code == 504 and timed_out.json()["error"]["code"] == "timeout"
    # the timed-out work still runs, so it keeps its slot until it ends (no overcommit)
    assert requests.get(f"{url}/v1/health", timeout=10).json()["replica"]["in_flight"] == 1
    deadline = time.time() + 20
    while requests.get(f"{url}/v1/health", timeout=10).json()["replica"]["in_flight"]:
        assert time.time() < deadline, "the slot was never given back"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- the page


def test_the_page_on_a_server_shows_what_the_local_engine_computes(servers, local, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP, ok, shown

    cat = Image.open(ASSETS / "chelsea.png")
    here = local.explain([cat])[0]
    top = here.predictions[0]
    lc = local.explain_classes([cat], [[top.index]], full_gradients=True)[0]

    def no_local_model(*a, **k):
        raise AssertionError("the page ran the model in-process")

    monkeypatch.setattr(LocalBackend, "explain", no_local_model)
    monkeypatch.setattr(LocalBackend, "explain_classes", no_local_model)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["backend_kind"] = "server"
    at.session_state["server_url"] = servers["main"]
    at.session_state["source"] = "Samples"
    at.session_state["sample"] = "chelsea.png"
    at.run()
    ok(at)
    caption = words(" ".join(c.value for c in at.sidebar.caption))
    assert f"Backend:** server {servers['main']}" in caption and "(on the server)" in caption
    values = shown(at, "rollout").ravel()
    want = methods.compute_map("rollout", here.attention, here.layout).ravel()
    np.testing.assert_allclose(values, want, rtol=1e-2, atol=1e-3 * want.max())
    assert top.label in at.get("progress")[0].proto.text
    # "why this class?" gets the gradients from the server: the class map matches the engine's
    at.toggle(key="why_class").set_value(True).run()
    ok(at)
    assert at.session_state["target_class"] == top.index
    want = methods.compute_map(
        "chefer", lc.explanation.attention, lc.explanation.layout, grads=lc.gradients[0]
    )
    got = shown(at, "class-map").ravel()
    np.testing.assert_allclose(got, want.ravel(), rtol=2e-2, atol=2e-3 * np.abs(want).max())
    # the anatomy view gets the model's filters from the server
    at.segmented_control(key="view").set_value("How ViT sees this image").run()
    ok(at)
    assert "6 blocks × 3 attention heads" in at.get("graphviz_chart")[0].proto.spec
    # the lesson's embedding step reads this image's vectors from the server
    e = local.embeddings(local.geometry(cat.convert("RGB"))).patches[42]
    monkeypatch.setattr(LocalBackend, "embeddings", no_local_model)
    at.session_state["lesson"] = True
    at.session_state["lesson_step"] = 2
    at.session_state["patch"] = 42
    at.run()
    ok(at)
    captions = words(" ".join(c.value for c in at.caption))
    assert f"192 numbers, from {e.min():.2f} to {e.max():.2f}" in captions


def test_a_server_only_page_offers_no_local_models_or_file_paths(servers, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP, ok

    monkeypatch.setenv("VITVIZ_SERVER", servers["main"])
    monkeypatch.setenv("VITVIZ_SERVER_ONLY", "1")
    at = AppTest.from_file(APP, default_timeout=120).run()
    ok(at)
    keys = {w.key for w in at.sidebar.radio} | {w.key for w in at.sidebar.selectbox}
    assert "backend_kind" not in keys and "model" not in keys
    assert not [t for t in at.sidebar.text_input if t.key in ("server_url", "server_token")]
    assert f"server {servers['main']}" in words(" ".join(c.value for c in at.sidebar.caption))
    # when its server is away, the page says so and runs nothing here
    monkeypatch.setenv("VITVIZ_SERVER", f"http://127.0.0.1:{free_port()}")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception and not at.get("plotly_chart")
    assert any("could not reach the vitviz server" in words(e.value) for e in at.error)


def test_the_page_says_when_the_server_is_unreachable_and_keeps_working():
    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP, canvas

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["backend_kind"] = "server"
    at.session_state["server_url"] = f"http://127.0.0.1:{free_port()}"
    at.run()
    assert not at.exception
    errors = words(" ".join(e.value for e in at.error))
    assert "could not reach the vitviz server" in errors and "In this process" in errors
    assert canvas(at, "rollout")  # the demo model, in-process, fills the page


# ----------------------------------------------------------------------------- deployment


def test_serve_config_in_the_repo_is_valid_and_builds(monkeypatch):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from vitviz.server import serve

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    app_cfg = schema.applications[0]
    assert app_cfg.import_path == "vitviz.server.serve:build_app"
    assert config["http_options"]["host"] == "127.0.0.1"  # loopback unless changed on purpose
    monkeypatch.setattr(serve, "_cluster_gpus", lambda: 4)
    deployment = serve.build_app(app_cfg.args)._bound_deployment
    assert deployment.num_replicas == 4  # one replica per GPU
    assert deployment.ray_actor_options["num_gpus"] == 1
    (settings,) = deployment.init_args
    assert settings["model"] == "vit-b16" and settings["token"] is None  # never in the config
    auto = serve.build_app({**app_cfg.args, "replicas": "auto"})._bound_deployment
    scaling = auto._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)
    monkeypatch.setattr(serve, "_cluster_gpus", lambda: 0)
    cpu = serve.build_app({"model": "demo", "max_batch_size": "8"})._bound_deployment
    assert cpu.num_replicas == 1 and cpu.ray_actor_options["num_gpus"] == 0
    assert cpu.init_args[0]["max_batch_size"] == 8  # `serve run … k=v` strings are converted
    with pytest.raises(ValueError, match="unknown server options: colour"):
        serve.build_app({"colour": "red"})


def test_a_url_that_is_not_a_vitviz_server_gets_a_clear_error():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Html(BaseHTTPRequestHandler):
        def do_GET(self):
            status = 200 if self.path == "/v1/model" else 404
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(ServerError, match="not as a vitviz server"):
            RemoteBackend(url)
        with pytest.raises(ServerError, match="no such page"):
            RemoteBackend(url + "/elsewhere")
    finally:
        httpd.shutdown()


def test_the_research_views_on_a_server_show_the_local_engines_numbers(servers, local, monkeypatch):
    """Head ablation, the logit lens and token norms on a page whose model is a server's:
    what the page shows equals the in-process engine's numbers (nothing runs here)."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import plotly_array
    from tests.test_app import APP, canvas, chart, ok
    from tests.test_page_ablation import table
    from vitviz.ui import canvas as vcanvas

    seen = local.geometry(Image.open(ASSETS / "chelsea.png").convert("RGB"))
    top = local.explain([seen], seen=True)[0].predictions[0].index
    abl = local.ablate_heads(seen, top)
    lens = local.logit_lens(seen)
    norms = local.token_norms(seen)

    def no_local_model(*a, **k):
        raise AssertionError("the page ran the model in-process")

    for name in ("explain", "ablate_heads", "logit_lens", "token_norms"):
        monkeypatch.setattr(LocalBackend, name, no_local_model)
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["backend_kind"] = "server"
    at.session_state["server_url"] = servers["main"]
    at.session_state["source"] = "Samples"
    at.session_state["sample"] = "chelsea.png"
    at.run()
    ok(at)
    at.segmented_control(key="view").set_value("Token norms").run()
    ok(at)
    data = vcanvas.decode(canvas(at, "norms-canvas"))
    p = norms.num_prefix
    np.testing.assert_allclose(data["maps"][:, 0], norms.norms[:, p:], rtol=1e-4)
    at.segmented_control(key="view").set_value("Logit lens").run()
    ok(at)
    final = chart(at, "lens-final")["data"]
    shown = plotly_array(final[0]["y"]).astype(float)
    np.testing.assert_allclose(shown, lens.final_probability, rtol=1e-4, atol=1e-6)
    at.segmented_control(key="view").set_value("Head statistics").run()
    ok(at)
    assert at.selectbox(key="abl_class").value == top
    at.button(key="abl_run").click().run()
    ok(at)
    df = table(at)
    layer, head = df["layer"].to_numpy(), df["head"].to_numpy()
    got = df[df.columns[2]].to_numpy(float)  # Δ logit, as shown (rounded)
    np.testing.assert_allclose(got, abl.logit[layer, head], atol=1e-3)
