"""What a page visitor can make the page do: tokens, server URLs, paths, model sizes, memory.

A local HTTP listener records every request it gets, so the tests see exactly which headers
the page sends where.
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS, words
from tests.test_app import APP, TIMEOUT, ok
from vitviz.errors import ServerError
from vitviz.ui.servers import ServerPolicy, normalize

SECRET = "page-secret-4711"


pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py


class Listener:
    """A loopback HTTP server that records request headers; optionally redirects."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        record, target = self.requests, redirect_to

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                record.append({"path": self.path, **dict(self.headers.items())})
                if target:
                    self.send_response(302)
                    self.send_header("Location", target + self.path)
                    self.end_headers()
                    return
                body = json.dumps({"hello": "not vitviz"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def saw_secret(self) -> bool:
        return any(SECRET in value for req in self.requests for value in req.values())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def listener():
    one = Listener()
    yield one
    one.close()


def page(monkeypatch, env: dict[str, str], **state) -> AppTest:
    for key in ("VITVIZ_SERVER", "VITVIZ_TOKEN", "VITVIZ_ALLOWED_SERVERS", "VITVIZ_SERVER_ONLY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


# ----------------------------------------------------------------------------- the token


def test_the_page_token_goes_to_its_own_server(monkeypatch, listener):
    """The control: without it the tests below could pass by sending nothing at all."""
    at = page(monkeypatch, {"VITVIZ_SERVER": listener.url, "VITVIZ_TOKEN": SECRET})
    assert not at.exception
    assert listener.requests and listener.requests[0]["Authorization"] == f"Bearer {SECRET}"


def test_a_typed_url_never_gets_the_page_token(monkeypatch, listener):
    env = {
        "VITVIZ_SERVER": "http://127.0.0.1:9",
        "VITVIZ_TOKEN": SECRET,
        "VITVIZ_ALLOWED_SERVERS": "*",
    }
    at = page(monkeypatch, env, backend_kind="server", server_url=listener.url)
    assert not at.exception
    assert listener.requests, "the typed server was never asked"
    assert not listener.saw_secret()
    assert all("Authorization" not in req for req in listener.requests)
    assert any("not as a vitviz server" in words(e.value) for e in at.error)


def test_a_personal_page_sends_its_environment_token_nowhere(monkeypatch, listener):
    at = page(monkeypatch, {"VITVIZ_TOKEN": SECRET}, backend_kind="server", server_url=listener.url)
    assert not at.exception and listener.requests and not listener.saw_secret()


def test_a_visitor_token_goes_only_where_the_visitor_sent_it(monkeypatch, listener):
    env = {"VITVIZ_TOKEN": SECRET}
    at = page(monkeypatch, env, backend_kind="server", server_url=listener.url, server_token="mine")
    assert not at.exception
    assert listener.requests[0]["Authorization"] == "Bearer mine" and not listener.saw_secret()


def test_a_page_with_its_own_server_does_not_call_other_urls(monkeypatch, listener):
    env = {"VITVIZ_SERVER": "http://127.0.0.1:9", "VITVIZ_TOKEN": SECRET}
    at = page(monkeypatch, env, backend_kind="server", server_url=listener.url)
    assert not at.exception
    assert listener.requests == []  # not even a probe
    assert not [t for t in at.sidebar.text_input if t.key == "server_url"]  # nothing to type
    assert at.sidebar.selectbox(key="server_url").options == ["http://127.0.0.1:9"]
    assert any("not one of this page's" in words(w.value) for w in at.sidebar.warning)


def test_redirects_are_not_followed_with_the_token(monkeypatch, listener):
    hop = Listener(redirect_to=listener.url)
    try:
        at = page(monkeypatch, {"VITVIZ_SERVER": hop.url, "VITVIZ_TOKEN": SECRET})
        assert not at.exception
        assert hop.requests and listener.requests == []
        assert any("HTTP 302" in words(e.value) for e in at.error), [e.value for e in at.error]
    finally:
        hop.close()


def test_server_policy_from_the_environment():
    own = "http://gpu-box:8000"
    personal = ServerPolicy.from_env({"VITVIZ_TOKEN": SECRET})
    assert personal.any_url and personal.token_for("http://anything:1", "") == ""
    shared = ServerPolicy.from_env({"VITVIZ_SERVER": own, "VITVIZ_TOKEN": SECRET})
    assert not shared.any_url and shared.allowed == ("http://gpu-box:8000",)
    assert shared.token_for("HTTP://GPU-BOX:8000/", "") == SECRET  # the same origin
    for other in (
        "http://gpu-box:8001",
        "https://gpu-box:8000",
        "http://gpu-box.evil.example:8000",
        "http://evil.example/?x=http://gpu-box:8000",
    ):
        with pytest.raises(ServerError):
            assert shared.token_for(shared.check(other), "") != SECRET
        if "?" not in other:
            assert shared.token_for(other, "") == ""
    with pytest.raises(ServerError, match="VITVIZ_ALLOWED_SERVERS"):
        shared.check("http://169.254.169.254/latest")
    listed = ServerPolicy.from_env(
        {"VITVIZ_SERVER": own, "VITVIZ_ALLOWED_SERVERS": "http://lab:8000, http://lab2:9000/"}
    )
    assert listed.allowed == ("http://gpu-box:8000", "http://lab:8000", "http://lab2:9000")
    assert listed.check("http://lab2:9000") == "http://lab2:9000"
    anyone = ServerPolicy.from_env({"VITVIZ_SERVER": own, "VITVIZ_ALLOWED_SERVERS": "*"})
    assert anyone.any_url and anyone.check("http://x:1") == "http://x:1"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x",
        "http://",
        "http://user:pw@gpu-box:8000",
        "http://gpu-box:8000@evil",
        "http://x:99999",
    ],
)
def test_odd_server_urls_are_refused(url):
    with pytest.raises(ServerError):
        normalize(url)


# ----------------------------------------------------------------------------- paths


def weights_file_message(monkeypatch, path: str) -> str:
    at = page(monkeypatch, {}, model="__file__")
    at.text_input[0].input("vit_tiny_patch16_224")
    at.text_input[1].input(path).run()
    assert not at.exception
    errors = [words(e.value) for e in at.error]
    assert errors, "no error for a path that is not weights"
    return errors[0]


def test_the_weights_field_answers_the_same_whatever_is_at_the_path(monkeypatch, tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    empty = tmp_path / "empty.safetensors"
    from safetensors.torch import save_file

    save_file({}, str(empty))
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    messages = {}
    for label, path in {
        "missing": tmp_path / "missing.safetensors",
        "folder": folder,
        "text": text,
        "empty": empty,
    }.items():
        msg = weights_file_message(monkeypatch, str(path))
        messages[label] = msg.replace(str(path), "PATH")
    assert len(set(messages.values())) == 1, messages
    assert "not a readable weights file" in messages["missing"]


def test_the_sidebar_shows_the_bundled_weights_relative_to_the_project(monkeypatch):
    at = page(monkeypatch, {})
    ok(at)
    captions = words(words(" ".join(c.value for c in at.sidebar.caption)))
    assert "assets/demo/vitviz-demo.safetensors" in captions
    assert str(ASSETS) not in captions


# ----------------------------------------------------------------------------- models


def test_a_model_over_the_size_limit_is_refused_before_it_is_built(monkeypatch):
    import timm

    built = []
    original = timm.create_model

    def watch(name, *a, **k):
        import torch

        built.append((name, torch.empty(0).device.type))  # "meta" inside parameter_count
        return original(name, *a, **k)

    monkeypatch.setattr(timm, "create_model", watch)
    at = page(monkeypatch, {"VITVIZ_MAX_PARAMS": "50e6"}, model="__timm__", random_weights=True)
    at.text_input[0].input("vit_base_patch16_224").run()  # 86 M parameters
    assert not at.exception
    errors = words(" ".join(e.value for e in at.error))
    assert "87 M parameters" in errors and "limit of 50 M" in errors
    # it was only counted on the meta device, never built; the page fell back to the demo
    assert ("vit_base_patch16_224", "meta") in built
    assert ("vit_base_patch16_224", "cpu") not in built
    caches = _page_caches()[0]
    assert all(key[0] != "vit_base_patch16_224" for key in caches.models)


def _page_caches():
    import gc

    from vitviz.ui.state import PageCaches

    return [o for o in gc.get_objects() if isinstance(o, PageCaches)][-1:]


def test_the_model_cache_is_bounded_in_bytes(monkeypatch):
    from vitviz.memory.cache import nbytes

    # room for one tiny model (≈ 23 MB) but not two
    at = page(monkeypatch, {"VITVIZ_MODEL_CACHE_MB": "30"}, model="__timm__", random_weights=True)
    at.text_input[0].input("vit_tiny_patch16_224").run()
    ok(at)
    at.text_input[0].input("deit_tiny_patch16_224").run()
    ok(at)
    caches = _page_caches()[0]
    names = [key[0] for key in caches.models]
    assert names == ["deit_tiny_patch16_224"]
    assert caches.models.nbytes == nbytes(caches.models.get(caches.models.keys()[0]))
    assert caches.models.nbytes <= 30 * 2**20


# ----------------------------------------------------------------------------- memory


def big_upload(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.new("P", (side, side), 0)
    img.putpalette([int(v) for v in rng.integers(0, 256, 768)])
    img.paste(1, (side // 4, side // 4, side // 2, side // 2))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_kept_at_the_model_input_size_and_caches_stay_in_budget(monkeypatch):
    # room for 3 demo explanations (2.8 MB each) and 5 model inputs (150 KB each)
    at = page(monkeypatch, {"VITVIZ_CACHE_MB": "16"}, source="Upload")
    for i in range(4):
        data = big_upload(3000, i)  # 9 megapixels, a few KB
        at.file_uploader(key="upload").set_value((f"big-{i}.png", data, "image/png")).run()
        ok(at)
    caches = _page_caches()[0]
    assert len(caches.images) == 4
    for key in caches.images:
        decoded = caches.images.get(key)
        assert decoded.image.size == (224, 224) and decoded.original_size == (3000, 3000)
    assert caches.images.nbytes <= 4 * (224 * 224 * 3 + 1024)  # pixels, plus names and notes
    assert caches.nbytes <= caches.limits.cache_bytes
    assert len(caches.explanations) < 4  # the oldest were evicted to stay in budget


def test_this_machines_netrc_is_not_sent_to_a_typed_url(monkeypatch, listener, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"default login me password {SECRET}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    at = page(monkeypatch, {}, backend_kind="server", server_url=listener.url)
    assert not at.exception and listener.requests
    assert all("Authorization" not in req for req in listener.requests)


def test_a_model_over_the_limit_is_not_even_downloaded(monkeypatch):
    from vitviz import models

    downloads = []
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(models, "download_weights", lambda name, *a: downloads.append(name))
    at = page(monkeypatch, {"VITVIZ_MAX_PARAMS": "50e6"}, model="vit-b16")
    assert not at.exception
    assert downloads == []
    assert any("87 M parameters" in words(e.value) for e in at.error)


def test_downloads_name_no_directory_of_the_machine(tmp_path):
    from tests.test_app import LocalBackend
    from vitviz.ui import downloads

    backend = LocalBackend.from_name("demo", device="cpu")
    expl = backend.explain([Image.open(ASSETS / "chelsea.png")])[0]
    from vitviz.results import WeightsInfo

    elsewhere = backend.info().with_(weights=WeightsInfo("file", str(tmp_path / "w.pt")))
    for info, shown in (
        (backend.info(), "assets/demo/vitviz-demo.safetensors"),
        (elsewhere, "w.pt"),
    ):
        npz = np.load(io.BytesIO(downloads.attention_npz(expl, info, "x.png")))
        model = json.loads(str(npz["model"]))
        pred = json.loads(downloads.predictions_json(expl, info, "x.png"))
        for weights in (model["weights"], pred["weights"]):
            assert weights["location"] == shown
        assert str(tmp_path) not in str(npz["model"]) and str(ASSETS) not in str(npz["model"])


def test_malformed_limits_and_urls_say_what_is_wrong_without_secrets(monkeypatch):
    from vitviz.errors import OptionsError
    from vitviz.ui.state import PageLimits

    for bad in ("inf", "nan", "-3", "lots"):
        with pytest.raises(OptionsError, match="VITVIZ_CACHE_MB"):
            PageLimits.from_env({"VITVIZ_CACHE_MB": bad})
    at = page(monkeypatch, {"VITVIZ_MODEL_CACHE_MB": "inf"})
    assert not at.exception
    assert any(
        "misconfigured" in e.value and "VITVIZ_MODEL_CACHE_MB" in words(e.value) for e in at.error
    )
    with pytest.raises(ServerError) as err:
        normalize("ftp://operator:hunter2@gpu-box:8000")
    assert "hunter2" not in str(err.value) and "gpu-box" in str(err.value)
    at = page(monkeypatch, {"VITVIZ_SERVER": "http://operator:hunter2@gpu-box:8000"})
    assert not at.exception
    shown = words(" ".join(e.value for e in at.error))
    assert "misconfigured" in shown and "hunter2" not in shown
