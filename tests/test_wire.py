"""The binary message format of the HTTP API (vitviz.server.wire)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from vitviz.server import wire


def test_round_trip_keeps_header_shapes_and_exact_dtypes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    logits = rng.normal(size=7).astype(np.float32)
    msg = wire.encode({"model": "m", "n": [1, 2]}, {"image": image, "logits": logits})
    header, arrays = wire.decode(msg)
    assert header["model"] == "m" and header["n"] == [1, 2]
    assert arrays["image"].dtype == np.uint8 and np.array_equal(arrays["image"], image)
    assert np.array_equal(arrays["logits"], logits)
    # the layout is what the README documents: magic, uint32 length, JSON, raw arrays
    assert msg[:8] == b"VITVIZ1\n"
    (size,) = struct.unpack("<I", msg[8:12])
    table = json.loads(msg[12 : 12 + size])["arrays"]
    body = msg[12 + size :]
    entry = table["logits"]
    raw = np.frombuffer(body[entry["offset"] : entry["offset"] + entry["nbytes"]], "<f4")
    assert np.array_equal(raw, logits)


def test_float16_attention_within_half_precision():
    rng = np.random.default_rng(1)
    a = rng.random((2, 3, 6, 6)).astype(np.float32)
    a /= a.sum(-1, keepdims=True)
    _, out = wire.decode(wire.encode({}, wire.pack_array("attention", a, "float16")))
    assert out["attention"].dtype == np.float16
    assert np.allclose(out["attention"], a, rtol=2**-10, atol=0)


def test_uint8_is_scaled_per_row_with_the_documented_error_bound():
    rng = np.random.default_rng(2)
    a = rng.random((3, 5, 8)).astype(np.float32) * rng.random((3, 5, 1)).astype(np.float32)
    packed = wire.pack_array("readout", a, "uint8")
    assert packed["readout"].dtype == np.uint8 and packed["readout_scale"].shape == (3, 5, 1)
    _, out = wire.decode(wire.encode({}, packed))
    err = np.abs(out["readout"] - a)
    assert np.all(err <= a.max(-1, keepdims=True) / 510 + 1e-7)
    # each row's maximum survives exactly (up to float32 rounding)
    assert np.allclose(out["readout"].max(-1), a.max(-1), rtol=1e-6)


def test_scaled_float16_keeps_tiny_gradients_that_plain_float16_loses():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(2, 3, 4, 4)).astype(np.float32) * 1e-9  # below float16's range
    g[1] *= 1e12  # and another class far above it: scales are per leading index
    assert not np.any(g[0].astype(np.float16))  # plain float16 flushes all of it to zero
    _, out = wire.decode(wire.encode({}, wire.pack_array("g", g, "float16-scaled", 2)))
    rel = np.abs(out["g"] - g).max(axis=(2, 3)) / np.abs(g).max(axis=(2, 3))
    assert np.all(rel < 1e-3)


def test_bad_messages_are_refused_with_a_reason():
    with pytest.raises(wire.WireError, match="magic"):
        wire.decode(b"<html>not found</html>")
    msg = wire.encode({}, {"x": np.arange(100, dtype=np.float32)})
    with pytest.raises(wire.WireError, match="truncated"):
        wire.decode(msg[:-8])
    with pytest.raises(ValueError, match="float64"):
        wire.encode({}, {"x": np.zeros(3)})


def test_malformed_headers_are_wire_errors_not_crashes():
    good = wire.encode({}, {"x": np.arange(4, dtype=np.float32)})
    (size,) = struct.unpack("<I", good[8:12])
    header = json.loads(good[12 : 12 + size])
    for broken in (
        {"arrays": {"x": {"dtype": "float32"}}},  # no shape or offset
        {"arrays": {"x": {**header["arrays"]["x"], "shape": [3]}}},  # shape ≠ bytes
        {"arrays": []},
    ):
        head = json.dumps(broken).encode()
        msg = good[:8] + struct.pack("<I", len(head)) + head + good[12 + size :]
        with pytest.raises(wire.WireError):
            wire.decode(msg)


def test_a_class_answer_without_its_relevance_is_a_wire_error():
    import pytest

    from vitviz.results import ClassRelevance

    rel = ClassRelevance(
        index=3,
        label="three",
        layers=(0, 1),
        chefer=np.arange(50, dtype=np.float32).reshape(2, 5, 5),
        fused=np.ones((3, 2, 5, 5), np.float32),
        negative=True,
        heads=np.ones((2, 4, 5), np.float32),
        fused_rows=np.ones((3, 2, 5), np.float32),
    )
    header = {"classes": [3], "class_labels": ["three"], "gradient_layers": [0, 1]}
    _, arrays = wire.decode(wire.encode(header, wire.encode_relevance([rel], "float16")))
    (back,) = wire.decode_relevance(header | {"negative": True}, arrays)
    assert back.index == 3 and back.layers == (0, 1) and back.negative
    assert not wire.decode_relevance(header, arrays)[0].negative
    np.testing.assert_allclose(back.fused, rel.fused, rtol=1e-3)
    np.testing.assert_allclose(back.chefer, rel.chefer, rtol=1e-3)
    for missing in ("relevance_chefer", "relevance_fused", "relevance_heads"):
        broken = {k: v for k, v in arrays.items() if k != missing}
        with pytest.raises(wire.WireError):
            wire.decode_relevance(header, broken)
