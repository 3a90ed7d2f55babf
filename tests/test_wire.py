"""The binary message format of the HTTP API (vitviz.wire)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from vitviz import wire


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


def _table(msg: bytes) -> tuple[int, dict]:
    (size,) = struct.unpack("<I", msg[8:12])
    return 12 + size, json.loads(msg[12 : 12 + size])["arrays"]


def test_float32_travels_exactly_and_every_array_starts_aligned():
    rng = np.random.default_rng(4)
    attn = rng.random((2, 3, 7, 7)).astype(np.float32)
    arrays = {
        "image": rng.integers(0, 256, (5, 5, 3), dtype=np.uint8),  # 75 bytes: odd
        "logits": rng.normal(size=3).astype(np.float32),
        "half": rng.random(5).astype(np.float16),  # 10 bytes
        **wire.pack_array("attention", attn, "float32"),
        **wire.pack_array("rows", attn[:, :, 0], "float16-scaled"),
    }
    msg = wire.encode({"model": "m" * 13}, arrays)
    body, table = _table(msg)
    for entry in table.values():  # a typed-array view needs no copy in any language
        assert (body + entry["offset"]) % wire.ALIGN == 0
    header, out = wire.decode(bytearray(msg))  # a writable buffer: arrays view it in place
    assert header["model"] == "m" * 13
    assert out["attention"].dtype == np.float32 and np.array_equal(out["attention"], attn)
    assert out["attention"].flags.writeable and out["attention"].flags.aligned
    assert not out["attention"].flags.owndata  # a view of the message, not a copy
    assert np.array_equal(out["image"], arrays["image"]) and np.array_equal(
        out["half"], arrays["half"]
    )
    assert not wire.decode(msg)[1]["attention"].flags.writeable  # bytes stay read-only
    assert np.shares_memory(wire.pack_array("a", attn, "float32")["a"], attn)  # no copy


def test_messages_of_writers_that_do_not_align_still_decode():
    """An older server packed arrays back to back after the header: still read, and an
    unaligned array is copied so that it can be used as any other."""
    image = np.arange(75, dtype=np.uint8).reshape(5, 5, 3)
    attn = np.linspace(0, 1, 36, dtype=np.float32).reshape(1, 1, 6, 6)
    head = json.dumps(
        {
            "arrays": {
                "image": {"dtype": "uint8", "shape": [5, 5, 3], "offset": 0, "nbytes": 75},
                "attention": {
                    "dtype": "float32",
                    "shape": [1, 1, 6, 6],
                    "offset": 75,
                    "nbytes": 144,
                },
            }
        }
    ).encode()
    msg = wire.MAGIC + struct.pack("<I", len(head)) + head + image.tobytes() + attn.tobytes()
    _, out = wire.decode(bytearray(msg))
    assert np.array_equal(out["image"], image) and np.array_equal(out["attention"], attn)
    assert out["attention"].flags.aligned


def test_encoding_says_how_each_array_travelled():
    x = np.random.default_rng(5).random((2, 4, 6)).astype(np.float32)
    packed = {}
    for enc in wire.DTYPES:
        packed |= wire.pack_array(enc.replace("-", "_"), x, enc)
    header, _ = wire.decode(wire.encode({}, packed))
    for enc in wire.DTYPES:
        assert wire.encoding(header, enc.replace("-", "_")) == enc
    assert wire.encoding(header, "missing") is None


def test_float32_relevance_is_exact_and_copied_out_of_the_message():
    from vitviz.results import ClassRelevance

    rng = np.random.default_rng(6)
    rels = [
        ClassRelevance(
            index=c,
            label=str(c),
            layers=(0, 1),
            chefer=rng.random((2, 5, 5)).astype(np.float32) * 1e-7,
            fused=rng.random((3, 2, 5, 5)).astype(np.float32),
            heads=rng.random((2, 4, 5)).astype(np.float32),
            fused_rows=rng.random((3, 2, 5)).astype(np.float32),
        )
        for c in (1, 2)
    ]
    header = {"classes": [1, 2], "class_labels": ["1", "2"], "gradient_layers": [0, 1]}
    arrays = wire.encode_relevance(rels, "float32")
    decoded_header, decoded = wire.decode(bytearray(wire.encode(header, arrays)))
    assert wire.encoding(decoded_header, "relevance_fused") == "float32"
    assert wire.encoding(decoded_header, "relevance_chefer") == "float32"
    for back, rel in zip(wire.decode_relevance(header, decoded), rels, strict=True):
        for name in ("chefer", "fused", "heads", "fused_rows"):
            assert np.array_equal(getattr(back, name), getattr(rel, name)), name
            assert getattr(back, name).flags.owndata  # keeping it never keeps the message
