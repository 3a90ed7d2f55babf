"""Tests of vitviz.output.render: maps to images, with exact expectations where they are
knowable."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vitviz.output import render
from vitviz.output.render import (
    COLORMAPS,
    colorize,
    draw_patch_grid,
    normalize_map,
    outline_patch,
    overlay,
    stamp_banner,
    to_png,
    upsample,
)


def _image(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A random RGB uint8 test image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- module hygiene


def test_module_imports_no_torch_ui_or_http():
    source = Path(render.__file__).read_text(encoding="utf-8")
    for banned in ("torch", "streamlit", "requests", "urllib", "http"):
        assert f"import {banned}" not in source
        assert f"from {banned}" not in source


def test_colormaps_are_the_expected_opencv_ids():
    assert set(COLORMAPS) == {
        "inferno",
        "viridis",
        "magma",
        "plasma",
        "turbo",
        "jet",
        "hot",
        "cividis",
    }
    assert COLORMAPS["jet"] == cv2.COLORMAP_JET
    assert COLORMAPS["inferno"] == cv2.COLORMAP_INFERNO


# ------------------------------------------------------------------------------ normalize_map


def test_normalize_map_known_values():
    out = normalize_map(np.array([[1, 3], [2, 5]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.5], [0.25, 1.0]], rtol=0, atol=1e-7)


def test_normalize_map_constant_gives_zeros():
    out = normalize_map(np.full((3, 4), 7.5))
    assert out.shape == (3, 4)
    assert out.dtype == np.float32
    assert not out.any()


def test_normalize_map_does_not_modify_input():
    values = np.array([[1.0, 3.0], [2.0, 5.0]])
    normalize_map(values)
    np.testing.assert_array_equal(values, [[1.0, 3.0], [2.0, 5.0]])


def test_normalize_map_huge_range_stays_finite():
    out = normalize_map(np.array([[-1e308, 0.0], [1e308, 1e308]]))
    np.testing.assert_allclose(out, [[0.0, 0.5], [1.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[1.0, np.nan]]),
        np.array([[1.0, np.inf]]),
        np.array([[-np.inf, 0.0]]),
        np.zeros(4),
        np.zeros((2, 2, 1)),
        np.zeros((0, 3)),
        np.array([["a", "b"]]),
        np.zeros((2, 2), dtype=complex),
    ],
)
def test_normalize_map_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        normalize_map(bad)


# ----------------------------------------------------------------------------------- colorize


def test_colorize_jet_is_rgb_not_bgr():
    out = colorize(np.array([[0.0, 1.0]]), "jet")
    assert out.shape == (1, 2, 3)
    assert out.dtype == np.uint8
    low_r, low_g, low_b = (int(c) for c in out[0, 0])
    high_r, high_g, high_b = (int(c) for c in out[0, 1])
    # jet runs from dark blue (0) to dark red (1). In RGB order blue is channel 2, red is 0.
    assert low_b >= 100 and low_r <= 30 and low_g <= 30, out[0, 0]
    assert high_r >= 100 and high_b <= 30 and high_g <= 30, out[0, 1]
    # Exact OpenCV values, converted from BGR (128, 0, 0) / (0, 0, 128).
    assert (low_r, low_g, low_b) == (0, 0, 128)
    assert (high_r, high_g, high_b) == (128, 0, 0)


def test_colorize_matches_opencv_with_channels_reversed():
    values = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    for name, cmap_id in COLORMAPS.items():
        expected = cv2.applyColorMap(np.rint(values * 255).astype(np.uint8), cmap_id)[..., ::-1]
        np.testing.assert_array_equal(colorize(values, name), expected, err_msg=name)


def test_colorize_default_is_inferno():
    values = np.array([[0.0, 0.3, 1.0]])
    np.testing.assert_array_equal(colorize(values), colorize(values, "inferno"))


def test_colorize_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="viridis"):
        colorize(np.zeros((2, 2)), "rainbow-unicorn")


@pytest.mark.parametrize(
    "bad",
    [np.array([[-0.1, 0.5]]), np.array([[0.5, 1.1]]), np.array([[np.nan, 0.5]]), np.zeros(3)],
)
def test_colorize_rejects_bad_maps(bad):
    with pytest.raises(ValueError):
        colorize(bad)


# ----------------------------------------------------------------------------------- upsample


def test_upsample_blocky_exact_blocks():
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    out = upsample(values, (32, 32))
    assert out.shape == (32, 32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:16, :16], np.full((16, 16), 1.0))
    np.testing.assert_array_equal(out[:16, 16:], np.full((16, 16), 2.0))
    np.testing.assert_array_equal(out[16:, :16], np.full((16, 16), 3.0))
    np.testing.assert_array_equal(out[16:, 16:], np.full((16, 16), 4.0))


def test_upsample_size_is_height_width():
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = upsample(values, (4, 9))
    assert out.shape == (4, 9)
    np.testing.assert_array_equal(out, np.kron(values, np.ones((2, 3))))


def test_upsample_smooth_stays_within_input_range():
    values = np.array([[0.0, 10.0, 0.0], [10.0, -5.0, 10.0], [0.0, 10.0, 0.0]])
    out = upsample(values, (97, 61), smooth=True)
    assert out.shape == (97, 61)
    assert out.min() >= -5.0
    assert out.max() <= 10.0
    # Smooth really interpolates: values strictly between the patch values appear.
    assert len(np.unique(out)) > 9


def test_upsample_smooth_constant_stays_constant():
    out = upsample(np.full((3, 3), 0.25), (20, 20), smooth=True)
    np.testing.assert_array_equal(out, np.full((20, 20), 0.25, dtype=np.float32))


@pytest.mark.parametrize("size", [(0, 4), (4, -1), (4,), (4.0, 4), "44", (True, 4)])
def test_upsample_rejects_bad_size(size):
    with pytest.raises(ValueError):
        upsample(np.zeros((2, 2)), size)


def test_upsample_rejects_non_2d():
    with pytest.raises(ValueError):
        upsample(np.zeros((2, 2, 2)), (4, 4))


# ------------------------------------------------------------------------------------ overlay


def test_overlay_alpha_zero_is_image():
    image = _image()
    values = np.random.default_rng(1).random((4, 4))
    out = overlay(image, values, alpha=0.0)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("smooth", [False, True])
def test_overlay_alpha_one_is_heatmap(smooth):
    image = _image(48, 80)
    values = np.random.default_rng(2).random((3, 5)) * 40 - 7
    out = overlay(image, values, alpha=1.0, colormap="viridis", smooth=smooth)
    heat = colorize(upsample(normalize_map(values), (48, 80), smooth=smooth), "viridis")
    np.testing.assert_array_equal(out, heat)


def test_overlay_alpha_one_blocky_equals_normalize_of_upsample():
    # With nearest-neighbour upsampling the order of normalise and upsample does not matter.
    image = _image(32, 32)
    values = np.array([[1.0, 3.0], [2.0, 5.0]])
    out = overlay(image, values, alpha=1.0)
    np.testing.assert_array_equal(out, colorize(normalize_map(upsample(values, (32, 32)))))


def test_overlay_blends_with_add_weighted():
    image = _image()
    values = np.random.default_rng(3).random((4, 4))
    heat = colorize(upsample(normalize_map(values), (64, 64)), "inferno")
    expected = cv2.addWeighted(image, 0.4, heat, 0.6, 0)
    np.testing.assert_array_equal(overlay(image, values), expected)


def test_overlay_does_not_modify_image():
    image = _image()
    before = image.copy()
    overlay(image, np.random.default_rng(4).random((4, 4)), alpha=0.5)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("alpha", [-0.01, 1.01, float("nan"), "0.5", None])
def test_overlay_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        overlay(_image(), np.zeros((2, 2)), alpha=alpha)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((8, 8), dtype=np.uint8),
        np.zeros((8, 8, 4), dtype=np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_overlay_rejects_bad_image(image):
    with pytest.raises(ValueError, match="image"):
        overlay(image, np.zeros((2, 2)))


def test_overlay_rejects_bad_map_and_colormap():
    with pytest.raises(ValueError):
        overlay(_image(), np.zeros(4))
    with pytest.raises(ValueError):
        overlay(_image(), np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="colormap"):
        overlay(_image(), np.zeros((2, 2)), colormap="nope")


# ---------------------------------------------------------------------------- draw_patch_grid


def test_draw_patch_grid_changes_exactly_the_boundary_lines():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    out = draw_patch_grid(image, (4, 4), color=(255, 0, 0))
    assert out is not image
    assert not image.any()  # input untouched
    # Boundary pixel: first row of the second patch row, and first column of a patch column.
    assert tuple(out[16, 5]) == (255, 0, 0)
    assert tuple(out[40, 32]) == (255, 0, 0)
    # Interior pixel: unchanged.
    assert tuple(out[8, 8]) == (0, 0, 0)
    # Exactly rows/columns 16, 32, 48 are painted and nothing else.
    changed = out.any(axis=2)
    expected = np.zeros((64, 64), dtype=bool)
    expected[[16, 32, 48], :] = True
    expected[:, [16, 32, 48]] = True
    np.testing.assert_array_equal(changed, expected)


def test_draw_patch_grid_thickness_and_rectangular_grid():
    image = np.zeros((30, 60, 3), dtype=np.uint8)
    out = draw_patch_grid(image, (2, 3), thickness=2)
    changed = out.any(axis=2)
    expected = np.zeros((30, 60), dtype=bool)
    expected[14:16, :] = True  # boundary at row 15, thickness 2 -> rows 14, 15
    expected[:, 19:21] = True  # boundary at column 20
    expected[:, 39:41] = True  # boundary at column 40
    np.testing.assert_array_equal(changed, expected)
    assert tuple(out[15, 0]) == (255, 255, 255)


def test_draw_patch_grid_lines_match_blocky_upsample_edges():
    # Size not a multiple of the grid: lines must sit where the blocky heatmap changes.
    height, width, grid = 50, 37, (7, 5)
    blocks = upsample(np.arange(35, dtype=np.float32).reshape(grid), (height, width))
    row_changes = {y for y in range(1, height) if blocks[y, 0] != blocks[y - 1, 0]}
    col_changes = {x for x in range(1, width) if blocks[0, x] != blocks[0, x - 1]}
    out = draw_patch_grid(np.zeros((height, width, 3), dtype=np.uint8), grid)
    changed = out.any(axis=2)
    assert {y for y in range(height) if changed[y].all()} == row_changes
    assert {x for x in range(width) if changed[:, x].all()} == col_changes


@pytest.mark.parametrize(
    ("grid", "kwargs"),
    [
        ((0, 4), {}),
        ((4,), {}),
        ((65, 4), {}),
        ((4, 4), {"thickness": 0}),
        ((4, 4), {"color": (256, 0, 0)}),
        ((4, 4), {"color": (0, 0)}),
    ],
)
def test_draw_patch_grid_rejects_bad_arguments(grid, kwargs):
    with pytest.raises(ValueError):
        draw_patch_grid(_image(), grid, **kwargs)


# ------------------------------------------------------------------------------ outline_patch


def test_outline_patch_index_5_on_4x4_is_row_1_col_1():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    out = outline_patch(image, (4, 4), 5, color=(0, 255, 0), thickness=2)
    assert not image.any()
    changed = out.any(axis=2)
    expected = np.zeros((64, 64), dtype=bool)
    expected[16:32, 16:32] = True
    expected[18:30, 18:30] = False  # hollow: only a 2-px frame inside patch (1, 1)
    np.testing.assert_array_equal(changed, expected)
    assert tuple(out[16, 16]) == (0, 255, 0)
    assert tuple(out[31, 24]) == (0, 255, 0)
    assert tuple(out[24, 24]) == (0, 0, 0)  # patch interior
    assert tuple(out[15, 16]) == (0, 0, 0)  # neighbouring patch above


def test_outline_patch_row_major_on_rectangular_grid():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    out = outline_patch(image, (2, 3), 5, thickness=1)  # last patch: row 1, col 2
    changed = out.any(axis=2)
    rows, cols = np.nonzero(changed)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 19, 20, 29)


@pytest.mark.parametrize("index", [-1, 16, 2.0, True])
def test_outline_patch_rejects_bad_index(index):
    with pytest.raises(ValueError, match="index"):
        outline_patch(_image(), (4, 4), index)


# ------------------------------------------------------------------------------- stamp_banner


def test_stamp_banner_changes_top_band_only():
    image = np.full((200, 300, 3), 40, dtype=np.uint8)
    out = stamp_banner(image, "RANDOM WEIGHTS - NOT A TRAINED MODEL")
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 40).all()  # input untouched
    np.testing.assert_array_equal(out[100:], image[100:])
    top = out[:10]
    assert (top != image[:10]).any()
    # The band is red, in RGB order.
    r, g, b = (int(c) for c in out[1, 1])
    assert r >= 150 and g <= 50 and b <= 50
    # There is (white) text in the band.
    assert (out[:100].min(axis=2) >= 200).any()


def test_stamp_banner_long_text_fits_width():
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    out = stamp_banner(image, "RANDOM WEIGHTS - NOT A TRAINED MODEL")
    np.testing.assert_array_equal(out[50:], image[50:])
    white = np.nonzero(out.min(axis=2) >= 200)
    assert white[1].size > 0
    assert white[1].min() > 0 and white[1].max() < 119  # not clipped at the edges


@pytest.mark.parametrize("text", ["", "   ", None])
def test_stamp_banner_rejects_empty_text(text):
    with pytest.raises(ValueError):
        stamp_banner(_image(), text)


# ------------------------------------------------------------------------------------- to_png


def test_to_png_round_trip_and_signature():
    image = _image(17, 23)
    data = to_png(image)
    assert isinstance(data, bytes)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), image)


def test_to_png_keeps_red_red():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red in RGB
    decoded = cv2.imdecode(np.frombuffer(to_png(image), dtype=np.uint8), cv2.IMREAD_COLOR)
    assert tuple(decoded[0, 0]) == (0, 0, 255)  # OpenCV reads BGR: red is the last channel


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 4, 3), dtype=np.uint16),
        np.zeros((4, 4), dtype=np.uint8),
        np.zeros((0, 4, 3), dtype=np.uint8),
    ],
)
def test_to_png_rejects_bad_image(image):
    with pytest.raises(ValueError):
        to_png(image)


def test_with_legend_adds_the_exact_colour_scale_below_an_unchanged_image():
    from vitviz.output.render import colorize, with_legend

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    out = with_legend(image, 0.01, 0.25, "viridis", "rollout fusion=mean | demo", "rollout")
    assert out.shape[0] > 120 and out.shape[1] == 200
    np.testing.assert_array_equal(out[:120], image)
    band = out[120:]
    # the bar: the row whose pixels are exactly colorize() of an even 0..1 ramp
    margin = max(4, 200 // 40)
    ramp = colorize(np.linspace(0, 1, 200 - 2 * margin)[None, :], "viridis")[0]
    rows = [r for r in range(band.shape[0]) if (band[r, margin : 200 - margin] == ramp).all()]
    assert len(rows) >= 6  # the bar's height
    below = band[rows[-1] + 1 :]
    assert (below < 128).any()  # the labels and the caption are written
    with pytest.raises(ValueError):
        with_legend(image, 0, 1, "rainbow")
