"""The server's core without Ray: request validation, batching, per-job errors, encoding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import png
from vitviz import methods, wire
from vitviz.backends.local import LocalBackend
from vitviz.demo.scenes import generate_scene
from vitviz.server.service import Admission, ApiError, Engine, Job, Settings, check_token


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(Settings(model="demo", max_pixels=2_000_000), LocalBackend.from_name("demo"))


def scene(seed: int) -> Image.Image:
    return Image.fromarray(generate_scene(seed).image)


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"attention": "all"}, 400, "attention must be"),
        ({"dtype": "int4"}, 400, "dtype must be"),
        ({"top_k": 0}, 400, "top_k"),
        ({"classes": ["no such class"]}, 400, "no class named"),
        ({"classes": ["99"]}, 400, "does not exist"),
        ({"layers": [6]}, 400, "layer 6 does not exist"),
        ({"seen": True}, 400, "not a resized and cropped input"),
    ],
)
def test_bad_options_are_refused_with_what_to_do(engine, kwargs, status, words):
    with pytest.raises(ApiError) as err:
        engine.make_job(png(Image.new("RGB", (300, 200), "gray")), **kwargs)
    assert err.value.status == status and words in err.value.message


def test_bad_and_oversized_images_are_refused(engine):
    with pytest.raises(ApiError) as err:
        engine.make_job(b"GIF89a broken")
    assert err.value.status == 400 and err.value.code == "bad_image"
    big = Image.new("RGB", (2000, 1500))
    with pytest.raises(ApiError) as err:
        engine.make_job(png(big))
    assert err.value.status == 413 and "megapixels" in err.value.message


def test_class_names_top_and_negative_layers_resolve(engine):
    labels = engine.backend.labels
    job = engine.make_job(png(scene(1)), classes=["top", labels[3], "5"], layers=[-1, 0, -1])
    assert job.classes == [None, 3, 5] and job.layers == [0, 5]


def test_one_broken_job_does_not_take_down_its_batch(engine):
    good = [engine.make_job(png(scene(s)), attention="full") for s in (1, 2, 3)]
    broken = Job(Image.new("RGB", (50, 50)))  # slipped past validation
    outcomes = engine.run([good[0], broken, good[1], good[2]])
    assert outcomes[1].result is None and outcomes[1].error.status == 400
    for job, out in zip(good, [outcomes[0], outcomes[2], outcomes[3]], strict=True):
        alone = engine.run([job])[0].result
        assert out.error is None
        assert np.allclose(out.result.attention, alone.attention, atol=1e-5)
        assert out.result.predictions[0].index == alone.predictions[0].index


def test_class_jobs_of_different_lengths_share_a_batch_correctly(engine):
    a = engine.make_job(png(scene(4)), classes=["2"], gradients="full")
    b = engine.make_job(png(scene(5)), classes=["top", "1", "6"], layers=[5])
    both = engine.run([a, b])
    for job, out in zip((a, b), both, strict=True):
        alone = engine.backend.explain_classes(
            [job.image], [job.classes], layers=job.layers or None, seen=True, full_gradients=True
        )[0]
        assert out.result.classes == alone.classes
        assert len(out.result.relevance) == len(job.classes)
        for got, want in zip(out.result.relevance, alone.relevance, strict=True):
            assert got.index == want.index and got.layers == want.layers
            for name in ("fused", "heads", "fused_rows"):
                assert np.allclose(getattr(got, name), getattr(want, name), atol=1e-5, rtol=1e-4)
    # full gradients only where asked for, and only the layers asked for elsewhere
    assert both[0].result.gradients.shape[0] == 1 and both[1].result.gradients is None
    assert np.allclose(both[0].result.gradients, alone_a(engine, a), atol=1e-5, rtol=1e-4)
    assert both[1].result.relevance[0].layers == (5,)
    assert not both[1].result.relevance[0].chefer[:5].any()
    assert not both[1].result.relevance[0].fused[:, :5].any()


def alone_a(engine, job):
    res = engine.backend.explain_classes([job.image], [job.classes], seen=True, full_gradients=True)
    return res[0].gradients


def test_encoded_answer_matches_the_engine(engine):
    job = engine.make_job(png(scene(6)), classes=["top"], attention="readout")
    res = engine.run([job])[0].result
    header, arrays = wire.decode(engine.encode(job, res))
    expl = res.explanation
    layout = expl.layout
    assert header["classes"] == res.classes and header["gradient_layers"] == list(range(6))
    assert [p["index"] for p in header["predictions"]] == [p.index for p in expl.predictions]
    assert np.array_equal(arrays["image"], expl.image)
    assert "attention" not in arrays  # the full tensor only when asked
    # readout rows: the class token's row of every head, checked against plain indexing
    cls = layout.readout_tokens[0]
    assert np.allclose(arrays["readout"], expl.attention[:, :, cls, :], atol=1e-3)
    assert np.allclose(
        arrays["rollout"], methods.attention_rollout(expl.attention, layout), atol=1e-6
    )
    for name, fn in methods.STATISTICS.items():
        assert np.allclose(arrays[name], fn(expl.attention, layout), atol=1e-5)
    full = engine.backend.explain_classes([job.image], [[None]], seen=True, full_gradients=True)
    grads = full[0].gradients
    chefer = methods.chefer(expl.attention, layout, grads=grads[0])  # from the full gradients
    assert "gradients" not in arrays  # the relevance is what the maps read; full only if asked
    (rel,) = wire.decode_relevance(header, arrays)
    got = methods.chefer(expl.attention, layout, grads=rel)  # from the float16 Ā_l on the wire
    assert np.allclose(got, chefer, rtol=2e-3, atol=1e-5)
    for method, opts in (("grad-rollout", {"fusion": "max"}), ("attn-grad", {"head": 1})):
        got = methods.compute_map(method, expl.attention, layout, grads=rel, **opts)
        want = methods.compute_map(method, expl.attention, layout, grads=grads[0], **opts)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    full_job = engine.make_job(png(scene(6)), classes=["top"], gradients="full")
    _, arrays = wire.decode(engine.encode(full_job, engine.run([full_job])[0].result))
    assert np.allclose(arrays["gradients"], grads, atol=2e-3 * np.abs(grads).max())


def test_token_is_checked():
    check_token(None, None)  # no token configured: open
    check_token("s3cret", "Bearer s3cret")
    check_token("s3cret", "bearer  s3cret ")
    for bad in (None, "", "Bearer wrong", "Basic s3cret", "s3cret", "Bearer s3cre"):
        with pytest.raises(ApiError) as err:
            check_token("s3cret", bad)
        assert err.value.status == 401 and err.value.headers["WWW-Authenticate"] == "Bearer"


def test_admission_bounds_requests_and_says_when_to_retry():
    gate = Admission(limit=2, retry_after_s=3)
    with gate, gate:
        with pytest.raises(ApiError) as err, gate:
            pass
        assert err.value.status == 503 and err.value.headers["Retry-After"] == "3"
    assert gate.active == 0
    with gate:  # free again
        assert gate.active == 1


def test_required_token_comes_from_the_environment_or_the_replica_refuses(monkeypatch):
    monkeypatch.delenv("VITVIZ_TOKEN", raising=False)
    open_server = Settings()
    open_server.resolve_token()
    assert open_server.token is None
    with pytest.raises(RuntimeError, match="export VITVIZ_TOKEN"):
        Settings(require_token=True).resolve_token()
    monkeypatch.setenv("VITVIZ_TOKEN", "from-env")
    locked = Settings(require_token=True)
    locked.resolve_token()
    assert locked.token == "from-env"
    assert "from-env" not in repr(locked) and "token" not in str(locked.limits()).replace(
        "token_required", ""
    )


def test_model_info_names_the_weights_file_but_not_the_server_directories(engine):
    info = engine.info()
    assert info["weights"]["location"] == "vitviz-demo.safetensors"
    assert "/" not in info["weights"]["location"]


def test_pixel_limit_is_checked_before_decoding(engine, monkeypatch):
    from PIL import ImageFile

    def no_decoding(*a, **k):
        raise AssertionError("the pixels were decoded")

    body = png(Image.new("RGB", (1800, 1200)))  # 2.16 MP, over this engine's 2 MP
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ApiError) as err:
        engine.make_job(body)
    assert err.value.status == 413 and "2-megapixel limit" in err.value.message


def test_a_job_holds_the_model_input_not_the_upload(engine):
    upload = Image.new("P", (1800, 1000), 3)  # 1.8 MP, a few KB as PNG
    job = engine.make_job(png(upload))
    assert job.image.size == (224, 224) and job.image.mode == "RGB"
    # the same pixels the engine would make from the original
    want = engine.backend.explain([upload.convert("RGB")])[0].image
    assert np.array_equal(np.asarray(job.image), want)


def test_answers_over_the_size_limit_are_refused_before_any_work(monkeypatch):
    backend = LocalBackend.from_name("demo")
    engine = Engine(Settings(model="demo", max_answer_bytes=8 * 2**20), backend)
    ran = []
    monkeypatch.setattr(backend, "explain_classes", lambda *a, **k: ran.append(1))
    body = png(scene(3))
    eight = [str(c) for c in range(8)]
    with pytest.raises(ApiError) as err:
        engine.make_job(body, classes=eight, gradients="full", attention="full")
    assert err.value.status == 400 and err.value.code == "answer_too_large"
    assert "MiB" in err.value.message and "fewer classes" in err.value.message
    assert engine.make_job(body, classes=eight[:2])  # the relevance alone fits
    assert ran == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attention": "full"},
        {"attention": "readout", "dtype": "uint8"},
        {"classes": ["top", "3"], "attention": "full"},
        {"classes": ["1"], "gradients": "full", "dtype": "float32", "layers": [2, 4]},
    ],
)
def test_the_answer_size_estimate_covers_the_real_answer(engine, kwargs):
    job = engine.make_job(png(scene(8)), **kwargs)
    real = len(engine.encode(job, engine.run([job])[0].result))
    estimate = engine.answer_bytes(job)
    assert real <= estimate <= 1.25 * real + 80 * 1024


def test_class_batches_are_bounded_by_image_class_pairs(monkeypatch):
    from vitviz.server.service import _class_chunks

    jobs = [Job(Image.new("RGB", (224, 224)), classes=[None] * k) for k in (1, 1, 3, 1, 4, 4)]
    chunks = list(_class_chunks(jobs, budget=4))
    assert chunks == [[0, 1], [2], [3], [4], [5]]
    for chunk in chunks:  # padded to the longest list of the chunk
        assert len(chunk) * max(len(jobs[i].classes) for i in chunk) <= 4 or len(chunk) == 1
    assert list(_class_chunks(jobs[:2], budget=16)) == [[0, 1]]

    backend = LocalBackend.from_name("demo")
    engine = Engine(Settings(model="demo", max_batch_size=4), backend)
    calls = []
    original = backend.explain_classes

    def counting(images, classes, **kw):
        calls.append(len(images) * len(classes[0]))
        return original(images, classes, **kw)

    monkeypatch.setattr(backend, "explain_classes", counting)
    three = [engine.make_job(png(scene(s)), classes=["top", "1", "2"]) for s in (1, 2, 3)]
    outcomes = engine.run(three)
    assert all(o.error is None for o in outcomes) and max(calls) <= 4 and len(calls) == 3


def test_why_not_jobs_share_a_run_with_why_jobs_and_keep_their_sign(engine):
    why = engine.make_job(png(scene(6)), classes=["3"])
    why_not = engine.make_job(png(scene(7)), classes=["3"], negative=True)
    out = engine.run([why_not, why, engine.make_job(png(scene(8)), classes=["3"], negative=True)])
    assert [o.error for o in out] == [None, None, None]
    for job, o in zip((why_not, why), out[:2], strict=True):
        alone = engine.backend.explain_classes(
            [job.image], [[3]], seen=True, negative=job.options.negative
        )[0].relevance[0]
        got = o.result.relevance[0]
        assert got.negative == job.options.negative == alone.negative
        np.testing.assert_allclose(got.chefer, alone.chefer, rtol=1e-4, atol=1e-7)
    # the answer says which it is, and the client reads it back
    header, arrays = wire.decode(engine.encode(why_not, out[0].result))
    assert header["negative"] is True and wire.decode_relevance(header, arrays)[0].negative


def test_a_backbone_explains_its_class_free_target_only():
    backend = LocalBackend.from_name("dino-s16", random_weights=True)
    engine = Engine(Settings(model="dino-s16"), backend)
    job = engine.make_job(png(scene(1)), classes=["top"])
    (out,) = engine.run([job])
    assert out.error is None and out.result.classes == [-1]
    with pytest.raises(ApiError, match="no classifier"):
        engine.make_job(png(scene(1)), classes=["3"])


# -- capabilities: trust and text relevance through RemoteBackend, routed to an Engine -------
def engine_client(engine: Engine, monkeypatch):
    """A :class:`RemoteBackend` whose requests go to ``engine`` in this process (the routes'
    work without Ray: what ``vitviz.server.serve`` does with each path)."""
    import json

    import requests

    from vitviz.backends import remote
    from vitviz.server.options import TextRelevanceOptions, TrustOptions

    def respond(status: int, body: bytes, kind: str) -> requests.Response:
        r = requests.Response()
        r.status_code, r._content, r._content_consumed = status, body, True
        r.headers["content-type"] = kind
        r.headers["content-length"] = str(len(body))
        return r

    def route(self, method, path, *, timeout=None, params=None, data=None, **kw):
        try:
            if path == "/v1/model":
                out = engine.info()
            elif path == "/v1/trust":
                out = engine.trust_answer(data, TrustOptions.model_validate(params))
            elif path == "/v1/text-relevance":
                opts = TextRelevanceOptions.model_validate(params)
                out = engine.text_relevance_answer(data, opts)
            else:
                raise AssertionError(f"no route {path} here")
        except ApiError as err:
            r = respond(err.status, json.dumps(err.body()).encode(), "application/json")
            raise remote._error(self.url, r) from None
        return respond(200, json.dumps(out).encode(), "application/json")

    monkeypatch.setattr(remote.RemoteBackend, "_request", route)
    return remote.RemoteBackend("http://engine.test")


def _trust_request(backend):
    image = backend.geometry(scene(1))
    expl = backend.explain([image], seen=True)[0]
    maps = {
        name: methods.compute_map(name, expl.attention, expl.layout)
        for name in ("rollout", "attention")
    }
    return image, expl.predictions[0].index, maps


def test_the_server_lists_its_capabilities_and_the_client_offers_them(engine, monkeypatch):
    info = engine.info()
    assert info["api_version"] == wire.API_VERSION == 5
    assert "trust" in info["capabilities"] and "text_relevance" not in info["capabilities"]
    client = engine_client(engine, monkeypatch)
    assert client.offers("trust") and client.offers("explain") and client.offers("readout")
    assert not client.offers("text_relevance")  # not a CLIP model
    assert not client.offers("typed_labels") and not client.offers("live_maps")  # never served
    assert engine.backend.offers("live_maps") and not engine.backend.offers("typed_labels")
    with pytest.raises(ValueError, match="unknown capability"):
        client.offers("trsut")
    from vitviz.errors import OptionsError

    with pytest.raises(OptionsError, match="does not offer text relevance"):
        client.text_relevance(scene(1), "cat")


def test_trust_over_the_api_equals_the_local_one(engine, monkeypatch):
    client = engine_client(engine, monkeypatch)
    image, target, maps = _trust_request(engine.backend)
    kw = {"steps": 4, "seeds": 2, "seen": True}
    want = engine.backend.trust(image, target, maps, "rollout", **kw)
    got = client.trust(image, target, maps, "rollout", **kw)
    assert got.target == want.target and got.correlations == want.correlations
    for name in ("deletion", "insertion", "random_deletion", "random_insertion"):
        a, b = getattr(got, name), getattr(want, name)
        np.testing.assert_array_equal(a.fractions, b.fractions)
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(got.occlusion, want.occlusion)


def test_trust_requests_the_server_refuses(engine):
    from vitviz.server.options import TrustOptions

    image, _, maps = _trust_request(engine.backend)
    pixels = np.asarray(image)
    body = wire.encode_trust_request(pixels, maps)
    cases = [
        (b"not a message", {"class": 0, "main": "rollout"}, "cannot read"),
        (body, {"class": 999, "main": "rollout"}, "does not exist"),
        (body, {"class": 0, "main": "dino"}, "not one of the maps"),
        (wire.encode_trust_request(pixels, {"rollout": np.ones((3, 3))}), {"class": 0, "main": "rollout"}, "patch grid"),  # noqa: E501
        (wire.encode_trust_request(pixels[:20], maps), {"class": 0, "main": "rollout"}, "model's input"),  # noqa: E501
    ]  # fmt: skip
    for data, params, words in cases:
        with pytest.raises(ApiError) as err:
            engine.trust_answer(data, TrustOptions.model_validate(params))
        assert err.value.status == 400 and words in err.value.message, err.value.message
    with pytest.raises(ApiError, match="finite"):
        bad = {"rollout": np.full(maps["rollout"].shape, np.nan)}
        engine.trust_answer(
            wire.encode_trust_request(pixels, bad), TrustOptions(main="rollout", target=0)
        )


@pytest.fixture(scope="module")
def trust_reply(engine) -> tuple:
    """A trust request and the engine's JSON answer to it (computed once)."""
    from vitviz.server.options import TrustOptions

    image, target, maps = _trust_request(engine.backend)
    body = wire.encode_trust_request(np.asarray(image), maps)
    opts = TrustOptions(target=target, main="rollout", steps=4, seeds=1)
    return image, target, maps, engine.trust_answer(body, opts)


@pytest.mark.parametrize(
    ("how", "words"),
    [
        (lambda o: o["deletion"]["probabilities"].pop(), "not the 5 points"),
        (lambda o: o["insertion"]["fractions"].append(1.0), "not the 5 points"),
        (lambda o: o["random_deletion"]["probabilities"].__setitem__(2, float("nan")), "finite"),
        (lambda o: o["occlusion"].pop(), "patch grid"),
        (lambda o: o["occlusion"][0].__setitem__(0, float("inf")), "finite"),
        (lambda o: o["correlations"].pop("attention"), "name the maps"),
        (lambda o: o["correlations"].__setitem__("rollout", float("nan")), "finite"),
        (lambda o: o.pop("deletion"), "malformed"),
        (lambda o: o.__setitem__("class", 3), "class 3"),
    ],
)
def test_the_client_refuses_malformed_trust_answers(engine, monkeypatch, trust_reply, how, words):
    import copy

    from vitviz.errors import ServerError

    image, target, maps, reply = trust_reply

    def broken(self, body, options):
        out = copy.deepcopy(reply)
        how(out)
        return out

    monkeypatch.setattr(Engine, "trust_answer", broken)
    client = engine_client(engine, monkeypatch)
    if words == "class 3" and target == 3:
        pytest.skip("the top class is 3 already")
    with pytest.raises(ServerError, match=words) as err:
        client.trust(image, target, maps, "rollout", steps=4, seeds=1, seen=True)
    assert "engine.test" in str(err.value)


@pytest.mark.parametrize(
    ("tokens", "words"),
    [
        ([["cat", 0.5], ["dog", float("nan")]], "share of nan"),
        ([["cat", 0.5], ["dog", 0.2]], "sum to 0.7"),
        ([["cat", 1.5]], "not one in"),
        ([["cat"]], "not \\[token, share\\]"),
        ([], "no tokens"),
    ],
)
def test_the_client_refuses_malformed_text_relevance_answers(engine, monkeypatch, tokens, words):
    from vitviz.errors import ServerError

    client = engine_client(engine, monkeypatch)
    client._capabilities = client._capabilities | {"text_relevance"}  # as a CLIP server says
    monkeypatch.setattr(
        Engine,
        "text_relevance_answer",
        lambda self, body, options: {"label": options.label, "tokens": tokens},
    )
    with pytest.raises(ServerError, match=words):
        client.text_relevance(scene(1), "cat")


def test_the_client_refuses_a_server_of_another_api_version(engine, monkeypatch):
    from vitviz.errors import ServerError

    old = {**engine.info(), "api_version": 3}
    monkeypatch.setattr(Engine, "info", lambda self: old)
    with pytest.raises(ServerError, match="speaks API version 3, this client version 5"):
        engine_client(engine, monkeypatch)
