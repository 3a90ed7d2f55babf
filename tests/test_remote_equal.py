"""A server's maps equal the page's own: every method × option, over a real ``vitviz serve``.

One server runs for this module (Ray on loopback): a seeded random-weight vit_tiny_patch16_224
whose queries and keys are scaled up so that its attention is peaked like a trained model's
(a random ViT's attention is nearly uniform), loaded from the same weights file as the
in-process engine it is compared with. For each method of the registry, each option value
alone and each pair of option values are tried; the map computed from ``RemoteBackend``'s
answer must be within 1e-3 of the in-process map (max |diff| / max |local map|) and masks
must keep the same patches.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from tests.conftest import ASSETS, SERVER_START_S, start_serve, stop, tiny, wait_healthy
from vitviz import methods, wire
from vitviz.backends.local import LocalBackend
from vitviz.backends.remote import RemoteBackend
from vitviz.errors import OptionsError, ServerError
from vitviz.models import load_model
from vitviz.results import ClassRelevance

pytest.importorskip("ray.serve", reason="the server needs Ray Serve (requirements-serve.txt)")

ROOT = Path(__file__).resolve().parent.parent
MODEL = "vit_tiny_patch16_224"
BOUND = 1e-3  # max |remote - local| / max |local|, for every map
PEAK = 6.0  # queries and keys × 6: logits × 36, attention rows peak like a trained model's
CLASS = 7  # a second class, besides the top prediction
WORST: dict[str, float] = {}  # method → worst relative difference seen (printed at the end)


def _weights(path: Path) -> Path:
    """A seeded vit_tiny with peaked attention, saved as safetensors."""
    from safetensors.torch import save_file

    model = tiny(MODEL, seed=3).model
    with torch.no_grad():
        for block in model.blocks:
            dim = block.attn.qkv.weight.shape[1]
            block.attn.qkv.weight[: 2 * dim] *= PEAK
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return _weights(tmp_path_factory.mktemp("peaked") / "peaked.safetensors")


@pytest.fixture(scope="module")
def server(weights) -> Iterator[str]:
    """``python -m vitviz serve`` with those weights, on loopback (one per module)."""
    proc, url, log = start_serve(
        ["--model", MODEL, "--weights", str(weights), "--batch-wait-ms", "5"],
        {"VITVIZ_TOKEN": ""},
        name="serve-equal",
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
def local(weights) -> LocalBackend:
    return LocalBackend(load_model(MODEL, weights=str(weights), device="cpu"))


@pytest.fixture(scope="module")
def images(local) -> list[Image.Image]:
    """Two photos as the model's input (what the page sends with ``seen``)."""
    return [
        local.geometry(Image.open(ASSETS / n).convert("RGB")) for n in ("chelsea.png", "coffee.png")
    ]


@pytest.fixture(scope="module")
def answers(server, local, images) -> dict[str, Any]:
    """Both engines' explanations and class relevance ("why" and "why not") of the images."""
    remote = RemoteBackend(server)
    out: dict[str, Any] = {"remote": remote.explain(images, seen=True)}
    out["local"] = local.explain(images, seen=True)
    for negative in (False, True):
        for name, backend in (("remote", remote), ("local", local)):
            res = [
                backend.explain_classes([im], [[None, CLASS]], seen=True, negative=negative)[0]
                for im in images
            ]
            out[name, negative] = [r.relevance for r in res]
    out["url"] = server
    return out


def relative(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (0 when equal; inf when only ``got`` is non-zero)."""
    diff = float(np.abs(np.asarray(got, np.float64) - want).max())
    if diff == 0:
        return 0.0
    peak = float(np.abs(want).max())
    return diff / peak if peak > 0 else float("inf")


def option_values(option: methods.Option, layers: int, heads: int, patches: int) -> list[Any]:
    """The values each option is tried with (a new kind of option must be added here)."""
    if option.name == "discard":
        return [0.0, 0.5, 0.9]
    if option.kind == "layer":
        return [0, layers // 2, -1]
    if option.kind == "head":
        return [None, 0, heads - 1]
    if option.kind == "patch":
        return [0, patches // 2 + 3, patches - 1]
    if option.kind == "flag":
        return [False, True]
    if option.kind == "choice":
        return list(option.choices)
    if option.kind == "number":
        return sorted({option.low, option.default, 0.9, option.high})
    raise AssertionError(f"no test values for option {option.name} of kind {option.kind}")


def combinations(
    method: methods.Method, layers: int, heads: int, patches: int, pairs: bool = True
) -> list[dict]:
    """The defaults, every option value alone and (``pairs``) every pair of two options'
    values."""
    values = {o.name: option_values(o, layers, heads, patches) for o in method.options}
    out: list[dict] = [{}]
    for name, vals in values.items():
        out += [{name: v} for v in vals]
    if pairs:
        for a, b in itertools.combinations(values, 2):
            out += [{a: va, b: vb} for va in values[a] for vb in values[b]]
    return out


def _map(method: str, expl, grads: Any, options: dict) -> np.ndarray | str:
    """The map, or the error's message when the options are refused (e.g. end < start)."""
    try:
        return methods.compute_map(method, expl.attention, expl.layout, grads=grads, **options)
    except OptionsError as err:
        return str(err)


def _relevance(answers: dict, side: str, options: dict, i: int, k: int) -> ClassRelevance:
    return answers[side, bool(options.get("negative", False))][i][k]


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_every_option_of_every_method_gives_the_in_process_map(answers, method):
    """Every pair of option values on the first image (and its top class); every value alone
    on the second image and the other class (to keep the test's time bounded)."""
    spec = methods.METHODS[method]
    expl = answers["local"][0]
    shape = (*expl.attention.shape[:2], expl.layout.num_patches)
    failures, worst, tried, refused = [], 0.0, 0, 0
    for i, (r, lo) in enumerate(zip(answers["remote"], answers["local"], strict=True)):
        assert r.layout == lo.layout and np.array_equal(r.image, lo.image)
        for k in range(2 if spec.needs_gradients else 1):
            for options in combinations(spec, *shape, pairs=i == k == 0):
                tried += 1
                rg = _relevance(answers, "remote", options, i, k) if spec.needs_gradients else None
                lg = _relevance(answers, "local", options, i, k) if spec.needs_gradients else None
                got, want = _map(method, r, rg, options), _map(method, lo, lg, options)
                if isinstance(want, str):  # refused in-process: refused alike from the server
                    refused += 1
                    assert got == want, options
                    continue
                if method == "mask":
                    assert set(np.unique(want)) <= {0.0, 1.0}
                    if not np.array_equal(got, want):
                        failures.append((i, k, options, f"{int((got != want).sum())} patches"))
                    continue
                d = relative(got, want)
                worst = max(worst, d)
                if d > BOUND:
                    failures.append((i, k, options, f"{d:.2e}"))
    WORST[method] = worst
    assert refused < tried / 2  # most combinations are valid
    assert not failures, f"{len(failures)} of {tried} maps differ, e.g. {failures[:5]}"


def test_layer_strips_heads_and_statistics_equal_the_in_process_ones(answers):
    worst = 0.0
    for i, (r, lo) in enumerate(zip(answers["remote"], answers["local"], strict=True)):
        for method, options in (
            ("rollout", {"fusion": "min", "discard": 0.9}),
            ("rollout", {"fusion": "max", "discard": 0.5, "start_layer": 2}),
            ("grad-rollout", {"fusion": "min", "discard": 0.9}),
            ("chefer", {"start_layer": 3, "negative": True}),
        ):
            grads = {}
            if methods.METHODS[method].needs_gradients:
                grads = {
                    "rg": _relevance(answers, "remote", options, i, 0),
                    "lg": _relevance(answers, "local", options, i, 0),
                }
            got = methods.compute_strip(
                method, r.attention, r.layout, grads=grads.get("rg"), **options
            )
            want = methods.compute_strip(
                method, lo.attention, lo.layout, grads=grads.get("lg"), **options
            )
            assert got[0] == want[0]
            worst = max(worst, relative(got[1], want[1]))
        for patch in (None, 0, 100):  # the Heads view's every layer × head × fusion
            got = methods.head_rows(r.attention, r.layout, patch=patch)
            worst = max(
                worst, relative(got, methods.head_rows(lo.attention, lo.layout, patch=patch))
            )
        for fn in methods.STATISTICS.values():
            worst = max(worst, relative(fn(r.attention, r.layout), fn(lo.attention, lo.layout)))
        for negative in (False, True):
            for k in range(2):
                got = methods.class_head_rows(answers["remote", negative][i][k])
                want = methods.class_head_rows(answers["local", negative][i][k])
                worst = max(worst, relative(got, want))
    WORST["strips, heads, statistics"] = worst
    assert worst <= BOUND


def test_the_class_answer_of_some_layers_gives_their_maps(answers, local, images):
    """The CLI asks only for the layers a method reads: their maps are the in-process ones."""
    remote = RemoteBackend(answers["url"])
    got = remote.explain_classes(images[:1], [[CLASS]], layers=[3, 4, 5], seen=True)[0]
    want = local.explain_classes(images[:1], [[CLASS]], layers=[3, 4, 5], seen=True)[0]
    assert got.relevance[0].layers == want.relevance[0].layers == (3, 4, 5)
    r, lo = got.explanation, want.explanation
    for method, options in (
        ("chefer", {"start_layer": 3, "end_layer": 5}),
        ("grad-rollout", {"start_layer": 3, "end_layer": 5, "fusion": "min", "discard": 0.9}),
        ("attn-grad", {"layer": 4, "head": 2}),
    ):
        a = methods.compute_map(method, r.attention, r.layout, grads=got.relevance[0], **options)
        b = methods.compute_map(method, lo.attention, lo.layout, grads=want.relevance[0], **options)
        assert relative(a, b) <= BOUND, (method, options)


def test_the_readout_answer_keeps_working_in_both_precisions(answers, images):
    """``attention=readout`` (the live view's light answer): float32 rows equal the engine's,
    float16 rows are within 2⁻¹¹ of each entry, so raw attention maps stay within 1e-3."""
    lo = answers["local"][0]
    want = lo.attention[:, :, lo.layout.readout_tokens[0], :]
    for dtype, bound in (("float32", 1e-6), ("float16", 2**-11)):
        remote = RemoteBackend(answers["url"], dtype=dtype)
        predictions, layout, rows = remote.readout(images[0], top_k=3, seen=True)
        assert layout == lo.layout and rows.dtype == np.float32 and rows.flags.writeable
        assert [p.index for p in predictions] == [p.index for p in lo.predictions[:3]]
        assert np.all(np.abs(rows - want) <= bound * want + 2**-25), dtype  # subnormals
        for layer, head in ((0, None), (-1, 1)):
            row = rows[layer].mean(0) if head is None else rows[layer][head]
            got = methods.to_grid(row, layout)
            ref = methods.compute_map("attention", lo.attention, lo.layout, layer=layer, head=head)
            assert relative(got, ref) <= BOUND


def test_trust_and_readout_over_the_server_equal_the_local_ones(answers, local, images):
    """``POST /v1/trust`` over a real server gives the in-process report, number for number,
    and the server lists what it offers (a classifier: trust, no text tower)."""
    remote = RemoteBackend(answers["url"])
    assert remote.offers("trust") and remote.offers("readout") and remote.offers("features")
    assert not remote.offers("text_relevance") and not remote.offers("live_maps")
    lo = answers["local"][0]
    maps = {n: methods.compute_map(n, lo.attention, lo.layout) for n in ("rollout", "attention")}
    target = lo.predictions[0].index
    kw = {"steps": 4, "seeds": 1, "seen": True}
    want = local.trust(images[0], target, maps, "rollout", **kw)
    got = remote.trust(images[0], target, maps, "rollout", **kw)
    assert got.target == want.target and got.correlations == want.correlations
    for name in ("deletion", "insertion", "random_deletion", "random_insertion"):
        np.testing.assert_array_equal(
            getattr(got, name).probabilities, getattr(want, name).probabilities
        )
    np.testing.assert_array_equal(got.occlusion, want.occlusion)
    with pytest.raises(OptionsError, match="not one of the maps"):  # the server's 400
        remote._need("trust")
        remote._json(
            "/v1/trust",
            wire.encode_trust_request(np.asarray(images[0]), maps),
            {"class": target, "main": "nothing"},
        )
    # the local readout is the server's light answer
    predictions, layout, rows = local.readout(images[0], top_k=3, seen=True)
    r_predictions, r_layout, r_rows = remote.readout(images[0], top_k=3, seen=True)
    assert layout == r_layout and [p.index for p in predictions] == [p.index for p in r_predictions]
    np.testing.assert_allclose(rows, r_rows, rtol=1e-6, atol=1e-9)


def test_answers_are_float32_checked_and_held_once(answers, images, monkeypatch):
    """The page's client asks for float32, checks that it got it, and keeps the attention
    in the answer's own buffer (writable, aligned, no second copy)."""
    remote = RemoteBackend(answers["url"])
    assert remote.dtype == "float32"
    expl = remote.explain(images[:1], seen=True)[0]
    assert expl.attention.dtype == np.float32 and expl.attention.flags.writeable
    assert expl.attention.flags.aligned and not expl.attention.flags.owndata
    base = expl.attention.base
    while not isinstance(base, (bytearray, memoryview)) and getattr(base, "base", None) is not None:
        base = base.base
    size = len(base.obj if isinstance(base, memoryview) else base)
    assert size < expl.attention.nbytes + 512 * 1024  # the answer is the attention, mostly
    cls = remote.explain_classes(images[:1], [[None]], seen=True)[0]
    assert cls.explanation.attention.flags.owndata  # class answers are copied out
    assert cls.relevance[0].chefer.flags.owndata
    # a server answering in float16 although float32 was asked is refused, never used
    monkeypatch.setattr(
        remote,
        "_full",
        lambda top_k: {"attention": "full", "dtype": "float16", "seen": "true", "top_k": top_k},
    )
    with pytest.raises(ServerError, match="float16, not the float32 asked for"):
        remote.explain(images[:1], seen=True)
    with pytest.raises(OptionsError, match="float32 or float16"):
        RemoteBackend(answers["url"], dtype="uint8")  # type: ignore[arg-type]


def test_float16_on_the_wire_would_not_do(answers):
    """Why the page's client asks for float32: the same answer rounded to float16 gives a
    rollout with discard off by far more than 1e-3, on these weights."""
    lo = answers["local"][0]
    msg = wire.encode({}, wire.pack_array("attention", lo.attention, "float16"))
    rounded = wire.decode(msg)[1]["attention"].astype(np.float32)
    options = {"fusion": "min", "discard": 0.9}
    want = methods.compute_map("rollout", lo.attention, lo.layout, **options)
    got = methods.compute_map("rollout", rounded, lo.layout, **options)
    assert relative(got, want) > 10 * BOUND


class _Answer:
    """A stand-in for a streamed ``requests.Response``."""

    def __init__(self, chunks: list[bytes], headers: dict[str, str], fail: bool = False) -> None:
        self.chunks, self.headers, self.fail, self.closed = chunks, headers, fail, False

    def iter_content(self, size: int) -> Iterator[bytes]:
        yield from self.chunks
        if self.fail:
            raise requests.ConnectionError("reset")

    def close(self) -> None:
        self.closed = True


def test_the_client_reads_an_answer_into_one_buffer_within_the_servers_limit(monkeypatch):
    """No server needed: the body reader fills one buffer, refuses answers past the server's
    declared limit and says when an answer broke off."""
    from vitviz.backends import remote as module

    monkeypatch.setattr(module, "_SLACK", 0)
    client = object.__new__(RemoteBackend)
    client.url, client._info = "http://x", {"limits": {"max_answer_bytes": 10}}
    ok = _Answer([b"abcd", b"efg"], {"content-length": "7"})
    buf = client._body(ok)
    assert isinstance(buf, bytearray) and buf == b"abcdefg" and ok.closed
    assert client._body(_Answer([b"ab", b"c"], {})) == b"abc"  # no length: grown as it comes
    for answer, words in (
        (_Answer([b"x"], {"content-length": "11"}), "longer than its own limit"),
        (_Answer([b"x" * 6, b"x" * 6], {}), "longer than its own limit"),
        (_Answer([b"abc"], {"content-length": "2"}), "more than the 2 B it announced"),
        (_Answer([b"abc"], {"content-length": "5"}), "broke off"),
        (_Answer([b"abc"], {"content-length": "5"}, fail=True), "broke off"),
    ):
        with pytest.raises(ServerError, match=words):
            client._body(answer)
        assert answer.closed


def test_zz_report_the_worst_difference_per_method(answers):
    """Prints the worst relative difference seen per method (run with -s to see it)."""
    for name, worst in WORST.items():
        print(f"{name:28s} worst relative difference {worst:.3g}")
    assert all(w <= BOUND for w in WORST.values())
