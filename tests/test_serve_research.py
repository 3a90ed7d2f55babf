"""Head ablation, the logit lens and token norms through a vitviz server (API version 5).

One real ``python -m vitviz serve`` on the demo model (Ray on loopback, a 30 MiB work limit so
that one refusal can be seen) answers the same numbers as the in-process ``LocalBackend`` and
refuses bad options with a 4xx and words that say what is wrong. A random-weight ViT with four
registers (not worth a second Ray instance) goes through the server's core in this process
(:class:`~vitviz.server.service.Engine`, routed to by the client as the routes do), as do the
malformed answers that the client must catch and the description of an older server.
"""

from __future__ import annotations

import copy
import json
import math
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import SERVER_START_S, png, start_serve, stop, tiny, wait_healthy
from vitviz.backends.local import LocalBackend
from vitviz.backends.remote import RemoteBackend
from vitviz.demo.scenes import generate_scene
from vitviz.errors import OptionsError, ServerError
from vitviz.memory.cost import size_text
from vitviz.server.options import WORK_ENV, AblationOptions, LensOptions, NormsOptions, Settings
from vitviz.server.service import ApiError, Engine

WORK_MB = 30  # the real server's work limit: the demo ablates ≤ 5 copies per forward within it
RESEARCH = ("head_ablation", "logit_lens", "token_norms")


def scene(seed: int) -> Image.Image:
    return Image.fromarray(generate_scene(seed).image)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``python -m vitviz serve --model demo`` with a 30 MiB work limit, on loopback."""
    pytest.importorskip("ray.serve", reason="the server needs Ray Serve (requirements-serve.txt)")
    proc, url, log = start_serve(
        ["--batch-wait-ms", "5"],
        {"VITVIZ_TOKEN": "", WORK_ENV: str(WORK_MB)},
        name="serve-research",
    )
    try:
        wait_healthy(proc, f"{url}/v1/health", log, SERVER_START_S, "the server")
        yield url
    finally:
        stop(proc, signal.SIGINT)
        text = log.read_text(errors="replace")
        log.unlink(missing_ok=True)
        assert "Traceback" not in text, text[-4000:]


@pytest.fixture(scope="module")
def image(demo) -> Image.Image:
    return demo.geometry(scene(11))


def relative(got: np.ndarray, want: np.ndarray) -> float:
    """max |got − want| / max |want|."""
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def assert_same_ablation(got, want) -> None:
    assert (got.target, got.kind) == (want.target, want.kind)
    assert (got.batch, got.forwards) == (want.batch, want.forwards)
    for name in ("logit", "probability", "layer_logit", "layer_probability"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape and a.dtype == b.dtype
        assert relative(a, b) <= 1e-4, name
    assert got.clean_logit == pytest.approx(want.clean_logit, rel=1e-5, abs=1e-6)
    assert got.clean_probability == pytest.approx(want.clean_probability, abs=1e-6)


def assert_same_lens(got, want) -> None:
    assert got.final == want.final
    np.testing.assert_array_equal(got.top, want.top)
    np.testing.assert_array_equal(got.final_rank, want.final_rank)
    np.testing.assert_allclose(got.top_probability, want.top_probability, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.final_probability, want.final_probability, atol=1e-5, rtol=0)
    assert got.logits.shape == want.logits.shape and got.logits.dtype == np.float32
    assert relative(got.logits, want.logits) <= 1e-4


def assert_same_norms(got, want) -> None:
    assert got.k == want.k and got.num_prefix == want.num_prefix
    assert got.norms.shape == want.norms.shape and relative(got.norms, want.norms) <= 1e-4
    np.testing.assert_array_equal(got.outliers, want.outliers)
    np.testing.assert_array_equal(got.share, want.share)
    assert got.registers.shape == want.registers.shape
    if want.registers.size:
        assert relative(got.registers, want.registers) <= 1e-4
    assert got.attention_share == pytest.approx(want.attention_share, abs=1e-5)


# ------------------------------------------------------------------------- over a real server


def test_a_server_offers_the_three_and_answers_what_the_local_engine_computes(server, demo, image):
    client = RemoteBackend(server)
    info = client._info
    assert info["api_version"] == 5 and client.api_version == 5
    assert set(RESEARCH) <= set(info["capabilities"])
    assert info["limits"]["max_work_bytes"] == WORK_MB * 2**20
    assert all(client.offers(name) for name in RESEARCH)
    classes = demo.info().classes
    top = demo.explain([image], seen=True)[0].predictions[0].index
    for target, kind, batch in ((top, "zero", 4), ((top + 3) % classes, "mean", 3)):
        seen: list[tuple[int, int]] = []
        got = client.ablate_heads(image, target, kind=kind, batch=batch, progress=_record(seen))
        want = demo.ablate_heads(image, target, kind=kind, batch=batch)
        assert_same_ablation(got, want)
        total = want.logit.size + want.layer_logit.size
        assert seen == [(0, total), (total, total)]
    for top_k in (1, 3, 50):  # 50 > the demo's 8 classes: every class, as in-process
        assert_same_lens(client.logit_lens(image, top_k=top_k), demo.logit_lens(image, top_k=top_k))
    for k in (1.5, 3.0):
        want = demo.token_norms(image, k=k)
        assert_same_norms(client.token_norms(image, k=k), want)
    assert want.outliers.shape[1] == 196  # 14×14 patches


def _record(calls: list[tuple[int, int]]) -> Callable[[int, int], None]:
    return lambda done, total: calls.append((done, total))


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("/v1/ablation", {"class": 1, "kind": "half"}, 400, "kind must be zero or mean"),
        ("/v1/ablation", {"class": 8}, 400, "class 8 does not exist: the model has 8 classes"),
        ("/v1/ablation", {"class": -1}, 400, "class -1 does not exist"),
        ("/v1/ablation", {}, 422, "class"),
        ("/v1/ablation", {"class": 1, "batch": 0}, 422, "batch"),
        ("/v1/ablation", {"class": 1, "batch": 100_000}, 422, "less than or equal to 256"),
        ("/v1/ablation", {"class": 1, "batch": 8}, 400, "over this server's limit of 30 MB"),
        ("/v1/lens", {"top_k": 0}, 422, "top_k"),
        ("/v1/lens", {"top_k": 101}, 422, "top_k"),
        ("/v1/norms", {"k": 1}, 422, "greater than 1"),
        ("/v1/norms", {"k": 0.5}, 422, "greater than 1"),
        ("/v1/norms", {"k": "nan"}, 422, "k"),
        ("/v1/norms", {"k": "many"}, 422, "k"),
    ],
)
def test_bad_options_get_a_4xx_that_says_what_is_wrong(server, image, path, params, status, words):
    r = requests.post(server + path, params=params, data=png(image), timeout=120)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert words in message, message
    assert "Traceback" not in r.text


def test_work_over_the_limit_is_refused_naming_its_size_and_the_batch_that_fits(
    server, demo, image
):
    from vitviz.engine.ablation import ablation_cost

    client = RemoteBackend(server)
    with pytest.raises(ServerError) as err:
        client.ablate_heads(image, 1, batch=8)
    message = str(err.value)
    cost = ablation_cost(demo.memory_shape(), (224, 224), 8).peak
    assert f"would hold {size_text(cost)}" in message and "ask for batch=5" in message
    fits = ablation_cost(demo.memory_shape(), (224, 224), 5).peak  # the batch it names fits
    assert fits <= WORK_MB * 2**20 < ablation_cost(demo.memory_shape(), (224, 224), 6).peak
    with pytest.raises(OptionsError, match="kind must be zero or mean"):
        client.ablate_heads(image, 1, kind="half")
    with pytest.raises(OptionsError, match="not a resized and cropped input"):
        client.token_norms(scene(3).resize((300, 200)))  # an original image, not the input


def test_a_body_that_is_not_the_models_input_is_refused(server):
    small = png(scene(2).resize((100, 50)))
    for path, params in (("/v1/ablation", {"class": 1}), ("/v1/lens", {}), ("/v1/norms", {})):
        r = requests.post(server + path, params=params, data=small, timeout=120)
        assert r.status_code == 400 and "model's input" in r.json()["error"]["message"], r.text


# ------------------------------------------------------------- the server's core, in-process


def engine_client(engine: Engine, monkeypatch) -> RemoteBackend:
    """A :class:`RemoteBackend` whose requests go to ``engine`` in this process, as the routes
    of :mod:`vitviz.server.serve` send them (options validated by the same pydantic models)."""
    from pydantic import ValidationError

    from vitviz.backends import remote
    from vitviz.server.service import options_error

    routes: dict[str, tuple[Any, Any]] = {
        "/v1/ablation": (AblationOptions, lambda body, o: engine.ablation_answer(body, o)),
        "/v1/lens": (LensOptions, lambda body, o: engine.lens_answer(body, o)),
        "/v1/norms": (NormsOptions, lambda body, o: engine.norms_answer(body, o)),
    }

    def respond(status: int, body: bytes) -> requests.Response:
        r = requests.Response()
        r.status_code, r._content, r._content_consumed = status, body, True
        r.headers["content-type"] = "application/json"
        r.headers["content-length"] = str(len(body))
        return r

    def route(self, method, path, *, timeout=None, params=None, data=None, **kw):
        try:
            if path == "/v1/model":
                return respond(200, json.dumps(engine.info()).encode())
            model, answer = routes[path]
            try:
                options = model.model_validate(params)
            except ValidationError as err:
                raise options_error(err.errors()) from None
            return respond(200, answer(data, options))
        except ApiError as err:
            refused = respond(err.status, json.dumps(err.body()).encode())
            raise remote._error(self.url, refused) from None

    monkeypatch.setattr(remote.RemoteBackend, "_request", route)
    return remote.RemoteBackend("http://engine.test")


@pytest.fixture(scope="module")
def demo_engine(demo) -> Engine:
    return Engine(Settings(model="demo"), demo)


@pytest.fixture(scope="module")
def registers() -> LocalBackend:
    """A random-weight ViT-S/14 with a class token and four registers (2 blocks, 56 px, 7
    classes)."""
    kwargs = {"depth": 2, "img_size": 56, "num_classes": 7}
    loaded = tiny("vit_small_patch14_reg4_dinov2", model_kwargs=kwargs)
    return LocalBackend(loaded)


def test_a_model_with_registers_through_the_server_core_equals_the_local_one(
    registers, monkeypatch
):
    client = engine_client(Engine(Settings(model="registers"), registers), monkeypatch)
    image = registers.geometry(scene(5))
    assert image.size == (56, 56) and all(client.offers(name) for name in RESEARCH)
    for kind in ("zero", "mean"):
        assert_same_ablation(
            client.ablate_heads(image, 2, kind=kind, batch=4),
            registers.ablate_heads(image, 2, kind=kind, batch=4),
        )
    assert_same_lens(client.logit_lens(image, top_k=3), registers.logit_lens(image, top_k=3))
    got, want = client.token_norms(image, k=1.2), registers.token_norms(image, k=1.2)
    assert_same_norms(got, want)
    assert got.num_prefix == 5 and got.registers.shape == (2, 4) and got.outliers.shape == (2, 16)
    # the registers' norms are the norm of those tokens' residual stream, by hand
    np.testing.assert_allclose(got.registers, got.norms[:, 1:5], rtol=0, atol=0)


def test_work_is_checked_before_it_runs_for_each_call(demo, monkeypatch):
    from vitviz.memory.cost import ablation_cost, lens_cost, norms_cost

    shape, hw = demo.memory_shape(), (224, 224)
    limit = 8 * 2**20  # below all three at these options (8.5 MB the lens, 8.6 MB one copy)
    engine = Engine(Settings(model="demo", max_work_bytes=limit), demo)
    client = engine_client(engine, monkeypatch)

    def never(*args, **kwargs):
        raise AssertionError("the work ran although it was over the limit")

    for name in ("ablate_heads", "logit_lens", "token_norms"):
        monkeypatch.setattr(demo, name, never)
    image = demo.geometry(scene(4))
    cases = [
        (lambda: client.ablate_heads(image, 0, batch=2), ablation_cost(shape, hw, 2), "limit"),
        (lambda: client.logit_lens(image), lens_cost(shape, hw, 8), "higher limit"),
        (lambda: client.token_norms(image), norms_cost(shape, hw), "higher limit"),
    ]
    for call, cost, way_out in cases:
        assert cost.peak > limit
        with pytest.raises(ServerError) as err:
            call()
        assert f"would hold {size_text(cost.peak)}" in str(err.value), str(err.value)
        assert "8 MB per request" in str(err.value) and way_out in str(err.value)


def test_the_work_limit_comes_from_the_environment_or_a_default(monkeypatch):
    from vitviz.server.options import DEFAULT_MAX_WORK_BYTES

    monkeypatch.delenv(WORK_ENV, raising=False)
    assert Settings().max_work_bytes == DEFAULT_MAX_WORK_BYTES == 4 * 2**30
    monkeypatch.setenv(WORK_ENV, "1.5")
    assert Settings().max_work_bytes == 3 * 2**19
    assert Settings(max_work_bytes=7).max_work_bytes == 7
    for bad in ("0", "-2", "lots", "inf"):
        monkeypatch.setenv(WORK_ENV, bad)
        with pytest.raises(ValueError, match=WORK_ENV):
            Settings()


# ------------------------------------------------------------------------- malformed answers


@pytest.fixture(scope="module")
def replies(demo, demo_engine) -> dict[str, Any]:
    """One good answer per endpoint (computed once), as the JSON the client reads."""
    image = demo.geometry(scene(6))
    body = png(image)
    return {
        "image": image,
        "ablation": json.loads(demo_engine.ablation_answer(body, AblationOptions(target=1))),
        "lens": json.loads(demo_engine.lens_answer(body, LensOptions(top_k=3))),
        "norms": json.loads(demo_engine.norms_answer(body, NormsOptions(k=1.5))),
    }


def _set(key: str, value: Any) -> Callable[[dict], None]:
    return lambda o: o.__setitem__(key, value)


def _cell(key: str, i: int, j: int, value: Any) -> Callable[[dict], None]:
    return lambda o: o[key][i].__setitem__(j, value)


MALFORMED: list[tuple[str, Callable[[dict], None], str]] = [
    ("ablation", lambda o: o["delta_logit"].pop(), "delta_logit has shape"),
    ("ablation", lambda o: o["layer_delta_logit"].append(0.0), "layer_delta_logit has shape"),
    ("ablation", _cell("delta_probability", 0, 1, math.nan), "not finite"),
    ("ablation", _cell("delta_probability", 2, 0, -1.5), "outside \\[-1, 1\\]"),
    ("ablation", lambda o: o["clean"].__setitem__("probability", 1.2), "outside \\[0, 1\\]"),
    ("ablation", _set("class", 2), "for class 2, not 1"),
    ("ablation", _set("class", True), "class True"),
    ("ablation", _set("kind", "mean"), "'mean' ablation, not 'zero'"),
    ("ablation", _set("batch", 17), "batch is 17"),
    ("ablation", _set("batch", 4.0), "batch is 4.0"),
    ("ablation", _set("forwards", 1), "forwards is not what a batch of 16 takes"),
    ("ablation", lambda o: o.pop("clean"), "malformed head ablation"),
    ("lens", lambda o: o["logits"].pop(), "logits has shape"),
    ("lens", _cell("logits", 0, 0, math.inf), "not finite"),
    ("lens", _cell("top", 0, 2, 8), "not an integer in \\[0, 7\\]"),
    ("lens", _cell("top", 1, 0, True), "True, not an integer"),
    ("lens", lambda o: o["top"][0].__setitem__(1, o["top"][0][0]), "repeat a class"),
    ("lens", lambda o: o["top"][0].reverse(), "highest logits, highest first"),
    ("lens", _cell("top_probability", 0, 0, 0.0), "softmax of the logits"),
    ("lens", lambda o: o["final_probability"].__setitem__(-1, 0.0), "softmax of the logits"),
    ("lens", lambda o: o.__setitem__("final", o["top"][-1][1]), "not the last layer's highest"),
    ("lens", lambda o: o["final_rank"].__setitem__(0, 9), "not an integer in \\[1, 8\\]"),
    ("lens", lambda o: o["final_rank"].__setitem__(-1, 2), "final_rank is not"),
    ("lens", lambda o: o["top"].pop(), "top has shape"),
    ("norms", lambda o: o["norms"][0].pop(), "norms is not numbers of shape"),
    ("norms", lambda o: o["norms"].pop(), "norms has shape"),
    ("norms", _cell("norms", 1, 3, -1.0), "a norm is negative"),
    ("norms", _cell("norms", 1, 3, math.nan), "not finite"),
    ("norms", lambda o: o["outliers"].pop(), "not a list of 6 layers"),
    ("norms", lambda o: o["outliers"][0].append(196), "not an integer in \\[0, 195\\]"),
    ("norms", lambda o: o["outliers"].__setitem__(0, [5, 5]), "repeat or are too many"),
    ("norms", lambda o: o["outliers"].__setitem__(0, list(range(99))), "too many"),
    ("norms", _set("registers", [[1.0]] * 6), "registers has shape"),
    ("norms", _set("attention_share", 1.5), "outside \\[0, 1\\]"),
    ("norms", _set("k", 3.0), "k = 3.0, not 1.5"),
    ("norms", _set("num_prefix", 2), "num_prefix"),
    ("norms", lambda o: o["layout"].__setitem__("grid", [7, 28]), "not this input's"),
    ("norms", _set("layout", []), "malformed token norms"),
]


@pytest.mark.parametrize(("endpoint", "how", "words"), MALFORMED)
def test_the_client_refuses_malformed_answers(
    demo_engine, replies, monkeypatch, endpoint, how, words
):
    good = replies[endpoint]
    broken = copy.deepcopy(good)
    how(broken)
    assert json.dumps(broken) != json.dumps(good)
    name = {"ablation": "ablation_answer", "lens": "lens_answer", "norms": "norms_answer"}[endpoint]
    monkeypatch.setattr(Engine, name, lambda self, body, options: json.dumps(broken).encode())
    client = engine_client(demo_engine, monkeypatch)
    image = replies["image"]
    call = {
        "ablation": lambda: client.ablate_heads(image, 1),
        "lens": lambda: client.logit_lens(image, top_k=3),
        "norms": lambda: client.token_norms(image, k=1.5),
    }[endpoint]
    with pytest.raises(ServerError, match=words) as err:
        call()
    assert "engine.test" in str(err.value)


def test_the_good_replies_are_read_back_as_the_engine_computed_them(
    demo, demo_engine, replies, monkeypatch
):
    """The replies the malformed cases start from pass the checks, and equal the engine's."""
    client = engine_client(demo_engine, monkeypatch)
    image = replies["image"]
    assert_same_ablation(client.ablate_heads(image, 1), demo.ablate_heads(image, 1))
    assert_same_lens(client.logit_lens(image, top_k=3), demo.logit_lens(image, top_k=3))
    assert_same_norms(client.token_norms(image, k=1.5), demo.token_norms(image, k=1.5))


# -------------------------------------------------------------------------- an older server


def test_a_version_4_server_is_used_without_the_three(demo_engine, monkeypatch):
    """A version 4 server (even one listing the names) offers none of the three: the client
    says that its version predates them, and still talks to it for the rest."""
    old = {**demo_engine.info(), "api_version": 4}
    monkeypatch.setattr(Engine, "info", lambda self: old)
    client = engine_client(demo_engine, monkeypatch)
    assert client.api_version == 4 and set(RESEARCH) <= set(old["capabilities"])
    assert client.offers("trust") and client.offers("explain")
    assert not any(client.offers(name) for name in RESEARCH)
    image = demo_engine.backend.geometry(scene(1))
    for call, what in (
        (lambda: client.ablate_heads(image, 1), "head ablation"),
        (lambda: client.logit_lens(image), "logit lens"),
        (lambda: client.token_norms(image), "token norms"),
    ):
        with pytest.raises(OptionsError, match=f"speaks API version 4, which has no {what}"):
            call()
    older = {**old, "api_version": 3}
    monkeypatch.setattr(Engine, "info", lambda self: older)
    with pytest.raises(ServerError, match="speaks API version 3, this client version 5"):
        engine_client(demo_engine, monkeypatch)


def test_a_server_whose_model_lacks_one_does_not_offer_it(monkeypatch):
    """A backbone (no classifier): no ablation or lens, but token norms; the server refuses
    the others with 400 ``not_offered`` and the client says so before asking."""
    backbone = LocalBackend(
        tiny(
            "vit_small_patch14_reg4_dinov2",
            model_kwargs={"depth": 1, "img_size": 28, "num_classes": 0},
        )
    )
    engine = Engine(Settings(model="backbone"), backbone)
    assert [c for c in RESEARCH if c in engine.capabilities()] == ["token_norms"]
    client = engine_client(engine, monkeypatch)
    image = backbone.geometry(scene(2))
    with pytest.raises(OptionsError, match="does not offer head ablation"):
        client.ablate_heads(image, 0)
    with pytest.raises(ApiError, match="does not offer logit lens"):
        engine.lens_answer(png(image), LensOptions())
    assert client.token_norms(image).registers.shape == (1, 4)


def test_the_three_commands_over_the_server_write_the_local_numbers(server, demo, tmp_path):
    """``vitviz ablate|lens|norms --server URL``: the files hold what this process computes."""
    from vitviz.cli import main
    from vitviz.inputs.assets import ASSETS
    from vitviz.inputs.images import load_image_file

    path = ASSETS / "demo-scene-1.png"
    seen = demo.geometry(load_image_file(path).image)
    remote = ["--server", server, "--out", str(tmp_path)]
    assert main(["ablate", str(path), *remote, "--class", "2", "--batch", "4"]) == 0
    assert main(["lens", str(path), *remote, "--top", "3"]) == 0
    assert main(["norms", str(path), *remote, "--k", "1.3"]) == 0
    want = demo.ablate_heads(seen, 2, batch=4)
    with np.load(tmp_path / "demo-scene-1.ablation.npz") as npz:
        assert relative(npz["logit"], want.logit) < 1e-4
        assert relative(npz["layer_probability"], want.layer_probability) < 1e-4
    lens = demo.logit_lens(seen, top_k=3)
    with np.load(tmp_path / "demo-scene-1.lens.npz") as npz:
        np.testing.assert_array_equal(npz["top"], lens.top)
        np.testing.assert_allclose(npz["top_probability"], lens.top_probability, atol=1e-5)
    norms = demo.token_norms(seen, k=1.3)
    with np.load(tmp_path / "demo-scene-1.norms.npz") as npz:
        assert relative(npz["norms"], norms.norms) < 1e-4
        np.testing.assert_array_equal(npz["outliers"], norms.outliers)
