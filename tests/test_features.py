"""The last layer's token features: the PCA picture and patch similarity against independent
computations (numpy's SVD, a hand-computed cosine), the engine against timm's own
``forward_features``, the server's encoding, and the page's Features view (AppTest)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS, png, tiny
from vitviz import methods, wire
from vitviz.backends.local import LocalBackend
from vitviz.errors import OptionsError
from vitviz.inputs.images import decode_image
from vitviz.methods import patch_similarity, pca_rgb
from vitviz.output.render import block_picture
from vitviz.server.service import ApiError, Engine, Settings
from vitviz.ui import canvas as vcanvas

# ------------------------------------------------------------------ the math


def minmax(v: np.ndarray) -> np.ndarray:
    return (v - v.min()) / (v.max() - v.min())


def minority_positive(score: np.ndarray) -> np.ndarray:
    """The documented fallback sign rule: fewer patches above 0 than below."""
    return score if (score > 0).sum() < (score < 0).sum() else -score


def test_pca_rgb_is_numpy_svd_scaled_to_rgb():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6 * 7, 10)) * np.linspace(3, 0.5, 10)  # distinct variances
    got = pca_rgb(x, (6, 7))
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ vt.T  # = u·s, computed another way
    np.testing.assert_allclose(got.variance, (s**2 / (s**2).sum())[:3], rtol=1e-5)
    assert got.rgb.shape == (6, 7, 3) and got.rgb.dtype == np.float32
    for c in range(3):
        channel = got.rgb[..., c].ravel()
        # each channel is one component's scores, min-max scaled, with the rule's sign
        np.testing.assert_allclose(channel, minmax(minority_positive(scores[:, c])), atol=1e-6)
        assert np.isclose(channel.min(), 0) and np.isclose(channel.max(), 1)
        # and it is that component up to sign, whatever the sign rule
        ok = [np.allclose(channel, minmax(sign * scores[:, c]), atol=1e-6) for sign in (1, -1)]
        assert any(ok)
    first = minority_positive(scores[:, 0])
    np.testing.assert_array_equal(got.foreground.ravel(), first > 0)
    assert got.foreground.sum() < x.shape[0] / 2  # the minority side
    # torch in, same picture
    np.testing.assert_allclose(pca_rgb(torch.from_numpy(x).float(), (6, 7)).rgb, got.rgb, atol=1e-5)


def clustered(n: int = 48, width: int = 16, inside: int = 12, seed: int = 0):
    """Patch features: background around one point, a foreground cluster of ``inside``
    patches around another (a known foreground)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.3, size=(n, width))
    fg = np.zeros(n, dtype=bool)
    fg[rng.choice(n, inside, replace=False)] = True
    x[fg] += 4.0 * rng.normal(size=width) / np.sqrt(width) * 3
    return x, fg


def test_the_picture_does_not_depend_on_the_features_sign_convention():
    x, fg = clustered()
    row = fg + np.random.default_rng(2).normal(scale=0.1, size=fg.size)  # looks at the object
    base = pca_rgb(x, (6, 8), orient=row)
    np.testing.assert_array_equal(base.foreground.ravel(), fg)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(16, 16)))
    for same in (-x, x @ q + 7.0, -(x @ q)):  # negated, rotated and shifted features
        other = pca_rgb(same, (6, 8), orient=row)
        np.testing.assert_allclose(other.rgb, base.rgb, atol=1e-5)
        np.testing.assert_array_equal(other.foreground, base.foreground)
    # the orientation row decides the first component's sign: the reversed row reverses red
    flipped = pca_rgb(x, (6, 8), orient=-row)
    np.testing.assert_allclose(flipped.rgb[..., 0], 1 - base.rgb[..., 0], atol=1e-6)
    np.testing.assert_array_equal(flipped.foreground.ravel(), ~fg)


def test_without_an_orientation_row_the_foreground_is_the_minority_side():
    x, fg = clustered(inside=12)
    np.testing.assert_array_equal(pca_rgb(x, (6, 8)).foreground.ravel(), fg)
    big, big_fg = clustered(inside=36, seed=4)  # the "object" fills three quarters
    np.testing.assert_array_equal(pca_rgb(big, (6, 8)).foreground.ravel(), ~big_fg)
    # an attention row on the object overrides the minority rule
    by_row = pca_rgb(big, (6, 8), orient=big_fg.astype(float))
    np.testing.assert_array_equal(by_row.foreground.ravel(), big_fg)
    # a constant row says nothing: the minority rule again
    flat = pca_rgb(big, (6, 8), orient=np.ones(48))
    np.testing.assert_array_equal(flat.foreground.ravel(), ~big_fg)


def test_drop_background_recovers_the_foreground_and_redoes_the_pca_on_it():
    rng = np.random.default_rng(5)
    n, width = 64, 12
    x = rng.normal(scale=0.2, size=(n, width))
    fg = np.zeros(n, dtype=bool)
    fg[20:36] = True  # the object: two parts, 8 patches each
    part_a = np.zeros(n, dtype=bool)
    part_a[20:28] = True
    x[fg] += 5.0 * np.eye(width)[0]
    x[part_a] += 2.0 * np.eye(width)[1]
    x[fg & ~part_a] -= 2.0 * np.eye(width)[1]
    got = pca_rgb(x, (8, 8), drop_background=True)
    assert got.background_removed
    np.testing.assert_array_equal(got.foreground.ravel(), fg)
    rgb = got.rgb.reshape(n, 3)
    assert (rgb[~fg] == 0).all()  # background painted black
    # the foreground's own PCA: its first component splits the object's two parts
    red = rgb[fg, 0]
    a, b = red[: part_a.sum()], red[part_a.sum() :]
    assert a.min() > b.max() or b.min() > a.max()
    centred = x[fg] - x[fg].mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    np.testing.assert_allclose(got.variance, (s**2 / (s**2).sum())[:3], rtol=1e-5)
    for c in range(3):
        assert np.isclose(rgb[fg, c].min(), 0) and np.isclose(rgb[fg, c].max(), 1)
    # the threshold, in standard deviations of the first component, keeps fewer patches
    loose = pca_rgb(x, (8, 8), drop_background=True, threshold=-3.0)
    strict = pca_rgb(x, (8, 8), drop_background=True, threshold=50.0)
    assert loose.foreground.all()
    assert not strict.foreground.any() and (strict.rgb == 0).all()
    assert (strict.variance == 0).all()


def test_pca_rgb_refuses_shapes_that_do_not_fit():
    with pytest.raises(OptionsError, match="grid"):
        pca_rgb(np.zeros((10, 4)), (3, 3))
    with pytest.raises(OptionsError, match="orient"):
        pca_rgb(np.eye(9), (3, 3), orient=np.ones(4))
    with pytest.raises(OptionsError, match="finite"):
        pca_rgb(np.full((9, 2), np.nan), (3, 3))
    flat = pca_rgb(np.ones((9, 4)), (3, 3))  # no variance: a black picture, no error
    assert (flat.rgb == 0).all() and (flat.variance == 0).all()


def test_patch_similarity_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0], [-3.0, 0.0]])
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(patch_similarity(x, 0), [1, 0, r, 0, -1], atol=1e-7)
    np.testing.assert_allclose(patch_similarity(x, 2), [r, r, 1, 0, -r], atol=1e-7)
    np.testing.assert_array_equal(patch_similarity(x, 3), np.zeros(5))  # a zero vector
    np.testing.assert_allclose(patch_similarity(x, -1), [-1, 0, -r, 0, 1], atol=1e-7)
    t = patch_similarity(torch.tensor(x, dtype=torch.float16), 2)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), [r, r, 1, 0, -r], atol=1e-3)
    with pytest.raises(OptionsError, match="out of range"):
        patch_similarity(x, 5)


# ------------------------------------------------------------------ the engine


@pytest.mark.parametrize(
    "name, kwargs, prefix, norm",
    [
        ("dino-s16", {"depth": 2}, 1, "LayerNorm"),
        ("vit_small_patch14_reg4_dinov2", {"img_size": 112, "depth": 2}, 5, "LayerNorm"),
        ("vit_tiny_patch16_224", {"global_pool": "avg", "class_token": False, "depth": 2}, 0, None),
    ],
)
def test_features_are_timms_forward_features(cat_image, name, kwargs, prefix, norm):
    backend = LocalBackend(tiny(name, model_kwargs=kwargs))
    seen = backend.geometry(cat_image)
    got = backend.features(seen)
    with torch.inference_mode():
        x = backend.loaded.to_tensor(seen)[None]
        want = backend.loaded.model.forward_features(x)[0].numpy()
    assert got.tokens.dtype == np.float32
    np.testing.assert_allclose(got.tokens, want, rtol=0, atol=1e-6)
    assert got.layout.num_prefix == prefix and got.layout.num_tokens == want.shape[0]
    assert got.norm == norm
    np.testing.assert_array_equal(got.patches, want[prefix:])
    with pytest.raises(OptionsError, match="not a resized and cropped input"):
        backend.features(cat_image)  # the original, not the model's input


def test_the_demo_models_features_and_their_server_encoding(demo, cat_image):
    seen = demo.geometry(cat_image)
    got = demo.features(seen)
    with torch.inference_mode():
        want = demo.loaded.model.forward_features(demo.loaded.to_tensor(seen)[None])[0]
    np.testing.assert_allclose(got.tokens, want.numpy(), rtol=0, atol=1e-6)
    assert got.layout == demo.explain([seen], seen=True)[0].layout and got.norm == "LayerNorm"
    # the server's answer (no Ray here): the layout, the norm, the tokens in float16
    engine = Engine(Settings(model="demo"), demo)
    header, arrays = wire.decode(engine.features_message(png(seen)))
    assert header["norm"] == "LayerNorm" and header["layout"]["grid"] == [14, 14]
    scale = np.abs(got.tokens).max(axis=1, keepdims=True)
    np.testing.assert_allclose(arrays["tokens"], got.tokens, rtol=0, atol=1e-3 * scale.max())
    with pytest.raises(ApiError) as err:
        engine.features_message(png(cat_image))
    assert err.value.status == 400 and "features need the model's input" in err.value.message


# ------------------------------------------------------------------ the page

APP = str(ASSETS.parent / "app.py")
IMAGE = "demo-scene-1.png"  # the page's first sample


@pytest.fixture
def media(monkeypatch):
    """The bytes of every image the page sends, by its URL (AppTest keeps only the URL)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    stored: dict[str, bytes] = {}

    class Keeping(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
            file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
            stored[self.get_url(file_id)] = bytes(self.get_file(file_id).content)
            return file_id

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Keeping)
    st.cache_resource.clear()
    yield stored
    st.cache_resource.clear()


def _shown_pca(at: AppTest, media: dict[str, bytes]) -> np.ndarray:
    urls = [el.proto.imgs[0].url for el in at.get("image") if el.proto.imgs]
    pictures = [u for u in urls if u.endswith(".png")]  # the PCA picture is sent as PNG
    assert len(pictures) == 1, urls
    return np.asarray(Image.open(io.BytesIO(media[pictures[0]])).convert("RGB"))


def _similarity(at: AppTest) -> tuple[dict, np.ndarray]:
    for el in at.get("bidi_component"):
        if el.proto.id.endswith("-features-canvas"):
            import json

            data = json.loads(el.proto.json)
            return data, vcanvas.decode(data)["maps"][0, 0]
    raise AssertionError("no features canvas")


def test_the_features_view_shows_the_pca_picture_and_patch_similarity(media, demo):
    image = decode_image((ASSETS / IMAGE).read_bytes(), IMAGE).image
    seen = demo.geometry(image)
    expl = demo.explain([seen], seen=True)[0]
    feats = demo.features(seen)
    layout = expl.layout
    orient = methods.raw_attention(expl.attention, layout, layer=-1)[layout.num_prefix :]

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["view"] = "Features"
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    captions = " ".join(c.value for c in at.caption)
    assert "self-supervised backbones" in captions and "192 numbers" in captions
    want = pca_rgb(feats.patches, layout.grid, orient=orient)
    np.testing.assert_array_equal(
        _shown_pca(at, media), block_picture(want.rgb, expl.image.shape[:2])
    )
    assert f"red {100 * want.variance[0]:.1f} %" in captions
    # the canvas shows the chosen patch's cosine similarity (the centre patch by default)
    centre = (layout.grid[0] // 2) * layout.grid[1] + layout.grid[1] // 2
    data, shown = _similarity(at)
    assert data["clickable"] and data["selected"] == centre
    sims = patch_similarity(feats.tokens, layout.num_prefix + centre)
    np.testing.assert_allclose(shown, sims[layout.num_prefix :], atol=1e-5)
    assert shown[centre] == pytest.approx(1.0)
    # choosing another reference patch (what a click on the grid stores) changes the map
    at.session_state["patch"] = 37
    at.run()
    data2, shown2 = _similarity(at)
    assert data2["selected"] == 37 and data2["id"] != data["id"]
    sims = patch_similarity(feats.tokens, layout.num_prefix + 37)
    np.testing.assert_allclose(shown2, sims[layout.num_prefix :], atol=1e-5)
    assert not np.allclose(shown2, shown)
    # remove the background: the foreground's own PCA, the background black
    at.toggle(key="features_drop").set_value(True).run()
    assert not at.exception, at.exception
    dropped = pca_rgb(feats.patches, layout.grid, drop_background=True, orient=orient)
    pixels = _shown_pca(at, media)
    np.testing.assert_array_equal(pixels, block_picture(dropped.rgb, expl.image.shape[:2]))
    fg = int(dropped.foreground.sum())
    assert 0 < fg < layout.num_patches
    assert f"Foreground: {fg} of {layout.num_patches} patches" in " ".join(
        c.value for c in at.caption
    )
    at.slider(key="features_threshold").set_value(0.5).run()
    stricter = pca_rgb(
        feats.patches, layout.grid, drop_background=True, threshold=0.5, orient=orient
    )
    assert stricter.foreground.sum() < fg
    np.testing.assert_array_equal(
        _shown_pca(at, media), block_picture(stricter.rgb, expl.image.shape[:2])
    )
