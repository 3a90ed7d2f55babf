"""The page's building blocks without Streamlit: anatomy, figures, caches, downloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import in_threads, tiny
from vitviz import models
from vitviz.engine import anatomy
from vitviz.errors import WeightsError
from vitviz.layout import TokenLayout
from vitviz.memory.cache import nbytes
from vitviz.results import ImageExplanation
from vitviz.ui import diagram, downloads, figures
from vitviz.ui.state import ExplanationCache, digest

LAYOUT = TokenLayout(("cls", "reg", "reg"), (4, 5), (16, 16), "cls")


def test_patch_filters_are_the_principal_components_of_the_embedding(vit_tiny):
    filt, var = anatomy.patch_filters(vit_tiny.model, count=6)
    assert filt.shape == (6, 16, 16, 3) and filt.dtype == np.uint8
    # independent computation: numpy SVD of the centred [D, 3·16·16] weights
    w = vit_tiny.model.patch_embed.proj.weight.detach().numpy().reshape(192, -1)
    w = w - w.mean(axis=0)
    _, s, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(var, (s**2 / (s**2).sum())[:6], rtol=1e-4)
    for k in range(6):
        comp = vt[k].reshape(3, 16, 16).transpose(1, 2, 0).ravel()
        got = filt[k].astype(float).ravel()
        # same direction up to sign and the [0, 255] scaling
        assert abs(np.corrcoef(comp, got)[0, 1]) > 0.999
        assert got.min() == 0 and got.max() == 255


def test_position_similarity_is_the_cosine_of_patch_position_embeddings(vit_tiny):
    sim, grid = anatomy.position_similarity(vit_tiny.model)
    assert grid == (14, 14) and sim.shape == (196, 14, 14)
    pos = vit_tiny.model.pos_embed.detach()[0, 1:]  # the class token's row comes first
    i, j = 17, 150
    expected = torch.nn.functional.cosine_similarity(pos[i], pos[j], dim=0).item()
    assert sim[i].ravel()[j] == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(np.diagonal(sim.reshape(196, 196)), 1.0, atol=1e-5)


def test_hybrid_models_have_no_patch_filters():
    loaded = tiny("vit_tiny_r_s16_p8_224", model_kwargs={"depth": 1})
    assert anatomy.patch_filters(loaded.model) is None


def test_pipeline_diagram_names_the_real_numbers(vit_tiny):
    info = vit_tiny.describe()
    dot = diagram.pipeline_dot(info, vit_tiny.layout((224, 224)), 192, 'a "quoted" cat (80%)')
    assert "14×14 = 196 patches" in dot and "12 blocks × 3 attention heads" in dot
    assert '\\"quoted\\"' in dot  # quotes cannot break the graphviz source
    # nor can a backslash before a quote (it would end the label early), and a line break in
    # a label stays one
    dot = diagram.pipeline_dot(info, vit_tiny.layout((224, 224)), 192, 'x\\"];evil["')
    label = next(line for line in dot.splitlines() if line.startswith("n7 "))
    assert label == 'n7 [label="Prediction\\nx\\\\\\"];evil[\\""];'


def test_mosaic_places_tiles_in_rows():
    tiles = [np.full((3, 2, 3), i, np.uint8) for i in range(5)]
    m = figures.mosaic(tiles, cols=3, gap=1, fill=255)
    assert m.shape == (3 * 2 + 1, 2 * 3 + 2, 3)
    assert m[0, 0, 0] == 0 and m[0, 3, 0] == 1 and m[4, 0, 0] == 3 and m[4, 3, 0] == 4
    assert m[4, 6, 0] == 255  # the empty sixth cell


def test_token_labels_name_every_prefix_token():
    assert figures.token_labels(LAYOUT) == ["CLS", "REG1", "REG2"]


def test_token_sequence_starts_with_the_prefix_tokens():
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    seq = figures.token_sequence(image, LAYOUT, per_row=10, tile=16, gap=2)
    assert seq.shape == (3 * 16 + 2 * 2, 10 * 16 + 9 * 2, 3)  # 23 tokens in rows of 10
    # the 4th tile is patch 0 (the image's top-left 16×16), resized to 16 px: unchanged
    np.testing.assert_array_equal(seq[:16, 3 * 18 : 3 * 18 + 16], image[:16, :16])


def _expl(seed: int) -> ImageExplanation:
    return ImageExplanation(
        np.zeros((4, 4, 3), np.uint8), LAYOUT, np.full((1, 1, 23, 23), seed), None
    )


def test_explanation_cache_computes_once_and_evicts_the_oldest():
    cache = ExplanationCache(max_bytes=int(2.5 * nbytes(_expl(0))))  # room for two
    calls = []

    def compute(i):
        return lambda: calls.append(i) or _expl(i)

    a = cache.get("m", "a", compute(1))
    assert cache.get("m", "a", compute(99)).explanation is a.explanation and calls == [1]
    cache.get("m", "b", compute(2))
    cache.get("other-model", "a", compute(3))  # same image, another model: computed
    assert calls == [1, 2, 3] and cache.model_calls == 3 and len(cache) == 2
    assert cache.nbytes <= 2.5 * nbytes(_expl(0))
    cache.get("m", "a", compute(4))  # "a" was evicted (least recently used)
    assert calls == [1, 2, 3, 4]
    entry = cache.get("m", "a", compute(5))
    assert entry.get("x", lambda: 42) == 42 and entry.get("x", lambda: 0) == 42


def test_pictures_are_encoded_once_per_explanation_as_st_image_would():
    import io
    from types import SimpleNamespace

    from PIL import Image
    from streamlit.elements.lib.image_utils import _np_array_to_bytes

    from vitviz.ui import encoded

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    data = encoded.encode(rgb)
    # the bytes st.image itself makes of the array (so the page looks as before), served as is
    assert data == _np_array_to_bytes(rgb, "auto") and encoded.image_format(data) == "JPEG"
    assert encoded.encode(Image.fromarray(rgb)) == data
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(encoded.encode(rgba))))
    assert encoded.image_format(encoded.encode(rgba)) == "PNG" and np.array_equal(back, rgba)

    shown = []
    encoded.show(SimpleNamespace(image=lambda d, **kw: shown.append(kw)), data, width=9)
    assert shown == [{"output_format": "JPEG", "width": 9}]  # Streamlit keeps JPEG bytes as is

    cache = ExplanationCache()
    made = []
    ctx_a = SimpleNamespace(entry=cache.get("m", "a", lambda: _expl(1)))
    ctx_b = SimpleNamespace(entry=cache.get("m", "b", lambda: _expl(2)))

    def make(value):
        return lambda: made.append(value) or np.full((4, 4, 3), value, np.uint8)

    first = encoded.cached(ctx_a, "input", make(10))
    again = encoded.cached(
        SimpleNamespace(entry=cache.get("m", "a", lambda: _expl(3))), "input", make(99)
    )
    assert first == again and made == [10]  # another session's rerun: not encoded again
    other = encoded.cached(ctx_b, "input", make(20))  # another image: its own picture
    assert made == [10, 20] and other != first
    assert abs(int(np.asarray(Image.open(io.BytesIO(other)))[0, 0, 0]) - 20) <= 1


def test_digest_depends_on_content_only():
    assert digest(b"abc") == digest(b"abc") != digest(b"abd")


def test_downloads(vit_tiny, cat_image):
    import io
    import json

    from vitviz.backends.local import LocalBackend

    expl = LocalBackend(vit_tiny).explain([cat_image])[0]
    info = vit_tiny.describe()
    data = np.load(io.BytesIO(downloads.attention_npz(expl, info, "cat.png")))
    np.testing.assert_array_equal(data["attention"], expl.attention)
    np.testing.assert_array_equal(data["image"], expl.image)
    assert json.loads(str(data["model"]))["layers"] == 12
    assert str(data["image_name"]) == "cat.png"
    assert downloads.safe_stem("../../etc/pass wd.png") == "etc-pass-wd"
    assert downloads.safe_stem("....") == "image"


def test_weights_file_depth_is_read_from_the_file(tmp_path):
    from safetensors.torch import save_file

    small = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 2, "num_classes": 3})
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in small.model.state_dict().items()}, str(path))
    loaded = models.load_model("vit_tiny_patch16_224", weights=path, device="cpu")
    assert loaded.num_layers == 2 and loaded.model.num_classes == 3
    torch.testing.assert_close(
        loaded.model.blocks[1].attn.qkv.weight, small.model.blocks[1].attn.qkv.weight
    )


def test_download_weights_reports_progress(monkeypatch, tmp_path):
    import huggingface_hub

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"x")

    def fake_download(repo, filename, tqdm_class=None, **kw):
        assert repo == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
        bar = tqdm_class(total=1000, disable=True)
        for _ in range(4):
            bar.update(250)
        bar.close()
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    seen = []
    path = models.download_weights("vit-b16", lambda done, total: seen.append((done, total)))
    assert path == target
    assert seen == [(250, 1000), (500, 1000), (750, 1000), (1000, 1000)]


def test_download_failure_is_one_clear_error(monkeypatch):
    import huggingface_hub

    def failing(repo, filename, **kw):
        raise OSError(f"cannot reach the hub for {filename}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    with pytest.raises(WeightsError, match="could not download the weights"):
        models.download_weights("vit-b16")


def test_sessions_opening_the_same_new_image_run_the_model_once():
    import threading
    import time

    cache = ExplanationCache(max_bytes=10**7)
    calls = []
    barrier = threading.Barrier(4)
    entries = []

    def compute():
        calls.append(1)
        time.sleep(0.1)  # the model runs while the other sessions arrive
        return _expl(1)

    def session(_):
        barrier.wait()
        entries.append(cache.get("model", "new-image", compute))

    in_threads(session, 4)
    assert len(calls) == 1 and cache.model_calls == 1
    assert len({id(e.explanation) for e in entries}) == 1


def test_derived_values_under_concurrent_sessions_never_fail_or_overflow():
    """The old per-entry dict raised KeyError and passed its bound under this load."""
    import random
    import sys

    cache = ExplanationCache(max_bytes=10**7, derived_bytes=50 * 8 * 64)
    entry = cache.get("m", "a", lambda: _expl(0))
    failures, peak = [], [0]
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def session(seed):
            rng = random.Random(seed)
            for _ in range(400):
                key = ("view", rng.randrange(120))
                try:
                    got = entry.get(key, lambda k=key: np.full(64, k[1], np.float64))
                    assert got[0] == key[1]
                except Exception as err:
                    failures.append(repr(err))
                peak[0] = max(peak[0], cache.derived.nbytes)

        in_threads(session, 6)
    finally:
        sys.setswitchinterval(before)
    assert failures == [] and peak[0] <= cache.derived.max_bytes
