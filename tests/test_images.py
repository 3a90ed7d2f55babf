"""Tests of vitviz.inputs.images: decoding, conversions to RGB and the one-line errors.

Every input is generated in memory with Pillow, numpy or by hand (PNG chunks); nothing is read
from the repository.
"""

from __future__ import annotations

import io
import random
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import vitviz.inputs.images as images
from tests.conftest import STATE_TIMEOUT_S, never_waits_on, wait_until
from vitviz.errors import ImageError, VitvizError
from vitviz.inputs.images import NOTES, DecodedImage, Note, decode_image, load_image_file

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# --- helpers -------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode ``image`` in memory."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a valid CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG built by hand from an IHDR and one IDAT chunk (``idat`` is already compressed)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def huge_blank_png(side: int) -> bytes:
    """A valid 1-bit ``side``×``side`` all-black PNG, compressed row by row (a few tens of KiB)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte 0 + packed bits
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    return raw_png(side, side, 1, 0, b"".join(parts))


def rgb_at(decoded: DecodedImage, xy: tuple[int, int]) -> tuple[int, int, int]:
    """The RGB value of one pixel of a decoded image."""
    value = decoded.image.getpixel(xy)
    assert isinstance(value, tuple)
    return value[0], value[1], value[2]


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    """Whether every channel is within ``tolerance`` of the expected value."""
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def assert_plain_rgb(decoded: DecodedImage) -> None:
    """The contract every successful decode keeps."""
    assert decoded.image.mode == "RGB"
    assert decoded.original_size == decoded.image.size
    # An independent, loaded image: not a lazily decoded file object tied to the source bytes.
    assert not isinstance(decoded.image, ImageFile.ImageFile)
    np.asarray(decoded.image)  # pixels are accessible


def noise_jpeg(size: int = 256) -> bytes:
    """A JPEG of random noise: its entropy-coded data fills most of the file."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


# --- plain images --------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG"), name="noise.png")
    assert_plain_rgb(decoded)
    assert decoded.name == "noise.png"
    assert decoded.original_size == (5, 7)
    np.testing.assert_array_equal(np.asarray(decoded.image), pixels)
    assert decoded.notes == ()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP", "GIF", "JPEG"])
def test_each_supported_format_decodes(fmt: str) -> None:
    params: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    if fmt == "JPEG":
        params = {"quality": 95}
    decoded = decode_image(encode(Image.new("RGB", (16, 8), BLUE), fmt, **params), name="x")
    assert_plain_rgb(decoded)
    assert decoded.original_size == (16, 8)
    assert close_to(rgb_at(decoded, (8, 4)), BLUE, 8)


def test_grayscale_l_gives_equal_channels() -> None:
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    decoded = decode_image(encode(Image.fromarray(gray), "PNG"), name="gray.png")
    assert_plain_rgb(decoded)
    rgb = np.asarray(decoded.image)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_bilevel_1_gives_black_and_white() -> None:
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    decoded = decode_image(encode(image, "PNG"), name="bits.png")
    assert_plain_rgb(decoded)
    assert rgb_at(decoded, (0, 0)) == (0, 0, 0)
    assert rgb_at(decoded, (1, 0)) == WHITE


# --- high bit depth and float --------------------------------------------------------------------


def test_16_bit_gray_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535, 128, 129]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    decoded = decode_image(data, name="depth.png")
    assert_plain_rgb(decoded)
    # v / 257 rounded: 32896 is exactly 128 * 257; Pillow's own convert("RGB") would clip to 255.
    expected = [0, 1, 128, 255, 0, 1]
    assert [rgb_at(decoded, (x, 0)) for x in range(6)] == [(v, v, v) for v in expected]
    assert Note("sixteen_bit") in decoded.notes


def test_16_bit_big_endian_and_32_bit_int_tiff_are_scaled() -> None:
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    big_endian = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    as_int32 = Image.fromarray(values.astype(np.int32))
    assert as_int32.mode == "I"
    for image in (big_endian, as_int32):
        decoded = decode_image(encode(image, "TIFF"), name="depth.tif")
        assert_plain_rgb(decoded)
        assert [rgb_at(decoded, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_16_bit_rgb_png_becomes_correct_8_bit() -> None:
    # Pillow reads 16-bit-per-channel PNGs as 8-bit RGB (high byte); check the values and note.
    samples = struct.pack(">6H", 65535, 0, 0, 32896, 32896, 32896)
    data = raw_png(2, 1, 16, 2, zlib.compress(b"\x00" + samples))
    decoded = decode_image(data, name="deep-rgb.png")
    assert_plain_rgb(decoded)
    assert rgb_at(decoded, (0, 0)) == RED
    assert rgb_at(decoded, (1, 0)) == (128, 128, 128)
    assert Note("sixteen_bit") in decoded.notes


def test_float_image_in_unit_range_is_scaled_by_255() -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    decoded = decode_image(encode(Image.fromarray(values), "TIFF"), name="unit.tif")
    assert_plain_rgb(decoded)
    assert [rgb_at(decoded, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_image_beyond_unit_range_is_clipped() -> None:
    values = np.array([[-5.0, 100.0, 300.0]], dtype=np.float32)
    decoded = decode_image(encode(Image.fromarray(values), "TIFF"), name="wide.tif")
    assert_plain_rgb(decoded)
    assert [rgb_at(decoded, (x, 0))[0] for x in range(3)] == [0, 100, 255]


# --- colour spaces and transparency --------------------------------------------------------------


def test_cmyk_jpeg_of_pure_cyan_is_cyan_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data, name="cyan.jpg")
    assert_plain_rgb(decoded)
    assert close_to(rgb_at(decoded, (8, 8)), (0, 255, 255), 10)
    assert Note("cmyk") in decoded.notes


def test_rgba_transparency_is_composited_over_white() -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    image.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid gray
    image.putpixel((2, 0), (255, 0, 0, 255))  # opaque red stays red
    decoded = decode_image(encode(image, "PNG"), name="alpha.png")
    assert_plain_rgb(decoded)
    assert rgb_at(decoded, (0, 0)) == WHITE
    assert all(120 <= c <= 135 for c in rgb_at(decoded, (1, 0)))
    assert rgb_at(decoded, (2, 0)) == RED
    assert Note("transparency") in decoded.notes


def test_opaque_rgba_has_no_transparency_note() -> None:
    decoded = decode_image(encode(Image.new("RGBA", (2, 2), (0, 0, 255, 255)), "PNG"), name="o")
    assert rgb_at(decoded, (1, 1)) == BLUE
    assert decoded.notes == ()


def test_la_transparency_is_composited_over_white() -> None:
    image = Image.new("LA", (2, 1), (0, 0))
    image.putpixel((1, 0), (40, 255))
    decoded = decode_image(encode(image, "PNG"), name="la.png")
    assert rgb_at(decoded, (0, 0)) == WHITE
    assert rgb_at(decoded, (1, 0)) == (40, 40, 40)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_over_white(fmt: str) -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    # Index 0 (red) is transparent: it must come back white, never red or black.
    decoded = decode_image(encode(image, fmt, transparency=0), name=f"palette.{fmt.lower()}")
    assert_plain_rgb(decoded)
    assert rgb_at(decoded, (0, 0)) == WHITE
    assert rgb_at(decoded, (1, 0)) == BLUE
    assert Note("transparency") in decoded.notes


def test_16_bit_gray_with_transparent_value_is_white() -> None:
    values = np.array([[7, 65535, 0]], dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(values), "PNG", transparency=7), name="t.png")
    assert [rgb_at(decoded, (x, 0))[0] for x in range(3)] == [255, 255, 0]
    assert Note("transparency") in decoded.notes


# --- EXIF orientation ----------------------------------------------------------------------------


def test_exif_orientation_6_is_rotated_upright() -> None:
    # Stored pixels: 40 wide × 20 high, left half red, right half blue.
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data, name="phone.jpg")
    assert_plain_rgb(decoded)
    # EXIF orientation 6 = "row 0 is the visual right side, column 0 the visual top": the stored
    # picture must be rotated 90° clockwise to be upright (ImageOps.exif_transpose uses
    # Transpose.ROTATE_270, i.e. 270° counter-clockwise = 90° clockwise). Rotating clockwise moves
    # the stored left edge to the top, so the result is 20 wide × 40 high with red on TOP.
    assert decoded.original_size == (20, 40)
    assert close_to(rgb_at(decoded, (10, 5)), RED, 40)
    assert close_to(rgb_at(decoded, (10, 34)), BLUE, 40)
    assert decoded.notes == (Note("exif_rotated", {"orientation": 6}),)
    assert str(decoded.notes[0]) == "rotated upright from EXIF orientation 6"
    # The orientation must not be applied a second time by anyone reading the returned image.
    assert decoded.image.getexif().get(0x0112, 1) == 1


def test_exif_orientation_1_changes_nothing() -> None:
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 1
    decoded = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()), name="a.jpg")
    assert decoded.original_size == (40, 20)
    assert close_to(rgb_at(decoded, (5, 10)), RED, 40)
    assert decoded.notes == ()


# --- animations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})],
    ids=["gif", "webp", "apng"],
)
def test_animation_uses_first_frame(fmt: str, params: dict[str, object]) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params
    )
    decoded = decode_image(data, name=f"anim.{fmt.lower()}")
    assert_plain_rgb(decoded)
    assert close_to(rgb_at(decoded, (4, 4)), RED, 4)
    assert any(note.fields.get("frames") == 3 for note in decoded.notes), decoded.notes
    assert any("1 of 3" in str(note) for note in decoded.notes), decoded.notes


def test_animated_gif_note_wording() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    notes = decode_image(data, name="a.gif").notes
    assert notes == (Note("animated", {"format": "GIF", "frames": 3}),)
    assert [str(note) for note in notes] == ["animated GIF: used frame 1 of 3"]


# --- notes: a code and fields, English only through str() --------------------------------------


def test_float_notes_carry_their_codes() -> None:
    unit = encode(Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32)), "TIFF")
    wide = encode(Image.fromarray(np.array([[0.0, 300.0]], dtype=np.float32)), "TIFF")
    assert decode_image(unit, name="u.tif").notes == (Note("float_scaled"),)
    assert decode_image(wide, name="w.tif").notes == (Note("float_clipped"),)


def test_multi_page_tiff_note_counts_its_pages() -> None:
    pages = [Image.new("RGB", (4, 4), colour) for colour in (RED, GREEN)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    notes = decode_image(data, name="scan.tif").notes
    assert notes == (Note("tiff_pages", {"frames": 2}),)
    assert str(notes[0]) == "multi-page TIFF: used page 1 of 2"


def test_a_note_said_twice_is_kept_once() -> None:
    # 16-bit gray with a transparent value: the 16-bit note comes from the header and from the
    # conversion, and is kept once; notes compare and hash by code and fields
    values = np.array([[7, 65535]], dtype=np.uint16)
    notes = decode_image(encode(Image.fromarray(values), "PNG", transparency=7), name="t").notes
    assert notes == (Note("sixteen_bit"), Note("transparency"))
    assert len({Note("animated", {"format": "GIF", "frames": 3}), notes[0], notes[0]}) == 2


def test_notes_print_todays_english() -> None:
    """The CLI, the JSON records and logs print str(note): the same sentences as before codes."""
    said = {
        Note("sixteen_bit"): "16-bit image scaled to 8 bits",
        Note("cmyk"): "CMYK converted to RGB",
        Note("transparency"): "transparency composited over white",
        Note("exif_unreadable"): "EXIF data unreadable: orientation ignored",
        Note("exif_rotated", {"orientation": 3}): "rotated upright from EXIF orientation 3",
        Note("exif_mirrored", {"orientation": 2}): "mirrored upright from EXIF orientation 2",
        Note("exif_rotated_mirrored", {"orientation": 5}): (
            "rotated and mirrored upright from EXIF orientation 5"
        ),
        Note("float_scaled"): "floating-point image scaled from 0..1 to 8 bits",
        Note("float_clipped"): "floating-point image clipped to 0..255",
        Note("tiff_pages", {"frames": 4}): "multi-page TIFF: used page 1 of 4",
        Note("tiff_pages_uncounted"): "multi-page TIFF: used page 1",
        Note("mpo_pictures", {"frames": 2}): "multi-picture JPEG: used picture 1 of 2",
        Note("mpo_pictures_uncounted"): "multi-picture JPEG: used picture 1",
        Note("animated", {"format": "WebP", "frames": 5}): "animated WebP: used frame 1 of 5",
        Note("animated_uncounted", {"format": "GIF"}): "animated GIF: used frame 1",
    }
    assert {note.code for note in said} == set(NOTES)
    assert {str(note): text for note, text in said.items()} == {t: t for t in said.values()}
    assert images._frames_note("PNG", None) == Note("animated_uncounted", {"format": "PNG"})
    assert images._frames_note("MPO", 2) == Note("mpo_pictures", {"frames": 2})
    with pytest.raises(ValueError, match="unknown note code"):
        Note("CMYK converted to RGB")


def test_notes_survive_pickling() -> None:
    """Decoded images may be cached across processes (the page's caches)."""
    import pickle

    note = Note("animated", {"format": "GIF", "frames": 3})
    again = pickle.loads(pickle.dumps(note))
    assert again == note and str(again) == str(note) and hash(again) == hash(note)


# --- failures ------------------------------------------------------------------------------------


def decode_error(data: bytes, name: str) -> str:
    """Decode ``data`` expecting an ImageError; return its message after the common checks."""
    with pytest.raises(ImageError) as info:
        decode_image(data, name=name)
    message = str(info.value)
    assert message.startswith(f"{name}: "), message
    assert "\n" not in message and "\r" not in message
    return message


def test_empty_bytes() -> None:
    assert "file is empty" in decode_error(b"", "cat.jpg")


def test_random_bytes_are_not_an_image() -> None:
    data = random.Random(0).randbytes(4096)
    message = decode_error(data, "noise.bin")
    assert "not an image" in message
    assert images.SUPPORTED in message


def test_text_file_is_not_an_image() -> None:
    assert "not an image" in decode_error(b"hello, world\n" * 20, "notes.txt")


def test_unsupported_format_is_refused() -> None:
    # PPM is a real image format Pillow reads, but not one vitviz accepts.
    message = decode_error(encode(Image.new("RGB", (4, 4)), "PPM"), "old.ppm")
    assert images.SUPPORTED in message


def test_truncated_jpeg() -> None:
    data = noise_jpeg()
    decode_image(data, name="whole.jpg")  # the complete file is fine
    message = decode_error(data[: len(data) // 2], "half.jpg")
    assert "truncated or corrupt" in message


def test_truncated_png() -> None:
    rng = np.random.default_rng(2)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    assert "truncated or corrupt" in decode_error(data[: len(data) // 2], "half.png")


def test_truncation_setting_is_left_alone() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _peak_rss_mib() -> float | None:
    """Peak resident memory of this process in MiB, where the platform tells it."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def test_decompression_bomb_fails_fast_without_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = huge_blank_png(20000)  # 400 megapixels, one byte each once decoded: 400 MB
    assert len(data) < 200_000
    loads: list[tuple[int, int]] = []  # the sizes of the images whose pixels were decoded
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda im: loads.append(im.size) or real_load(im)
    )
    peak_before = _peak_rss_mib()
    message = decode_error(data, "bomb.png")
    assert loads == [], "the pixels were decoded"  # fast: refused from the header alone
    decode_image(encode(Image.new("RGB", (50, 50)), "PNG"))
    assert (50, 50) in loads  # (what a decode looks like to this check)
    assert "20000×20000" in message
    assert "400.0 megapixels" in message
    assert "40-megapixel limit" in message
    assert "downscale it" in message
    peak_after = _peak_rss_mib()
    if peak_before is not None and peak_after is not None:
        assert peak_after - peak_before < 100, "the full image was allocated"


def test_image_over_limit_but_under_pillow_limit_is_refused_before_decoding() -> None:
    # 48 MP is above vitviz's 40 MP limit but below Pillow's own bomb limit (about 89 MP), so only
    # vitviz's header check can refuse it. The IDAT is garbage: decoding it would report a
    # corrupt file instead, so the size message proves nothing was decoded.
    message = decode_error(raw_png(8000, 6000, 8, 0, b"garbage"), "wide.png")
    assert "8000×6000" in message
    assert "48.0 megapixels" in message
    assert "downscale it" in message


def test_image_at_the_limit_passes_the_size_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 12)
    assert decode_image(encode(Image.new("RGB", (4, 3)), "PNG"), name="ok").original_size == (4, 3)
    assert "downscale it" in decode_error(encode(Image.new("RGB", (13, 1)), "PNG"), "big.png")


def test_file_over_max_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    monkeypatch.setattr(images, "MAX_BYTES", len(data) - 1)
    message = decode_error(data, "large.png")
    assert f"{len(data)} bytes" in message
    assert f"{len(data) - 1} bytes" in message
    assert "limit" in message


def test_unexpected_pillow_failure_becomes_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> Image.Image:
        raise RuntimeError("decoder exploded\nwith detail")

    monkeypatch.setattr(images.Image, "open", explode)
    message = decode_error(b"\x89PNG\r\n\x1a\n", "odd.png")
    assert "could not decode the image" in message
    assert "decoder exploded" in message


def test_memory_error_becomes_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args: object, **kwargs: object) -> Image.Image:
        raise MemoryError

    monkeypatch.setattr(images.Image, "open", no_memory)
    assert "could not decode the image" in decode_error(b"GIF89a", "odd.gif")


def test_image_error_is_a_vitviz_error() -> None:
    with pytest.raises(VitvizError):
        decode_image(b"", name="x")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        random.Random(3).randbytes(100),
        noise_jpeg()[:1000],
        raw_png(20000, 20000, 8, 0, b"x"),
    ],
    ids=["empty", "text", "random", "truncated", "too-large"],
)
def test_every_error_message_is_one_line_even_for_a_multiline_name(data: bytes) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data, name="evil\nname\r.png")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("evil name .png: ")


# --- load_image_file -----------------------------------------------------------------------------


def test_load_image_file_reads_and_names_by_path(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(encode(Image.new("RGB", (6, 4), GREEN), "PNG"))
    decoded = load_image_file(path)
    assert decoded.name == str(path)
    assert decoded.original_size == (6, 4)
    assert rgb_at(decoded, (0, 0)) == GREEN
    assert load_image_file(str(path)).name == str(path)


def test_load_image_file_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.jpg"
    with pytest.raises(ImageError) as info:
        load_image_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "no such file" in message


def test_load_image_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as info:
        load_image_file(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: ")
    assert "folder" in str(info.value)


def test_load_image_file_errors_name_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="file is empty") as info:
        load_image_file(empty)
    assert str(info.value).startswith(f"{empty}: ")


def test_load_image_file_refuses_large_file_before_reading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("RGB", (8, 8)), "PNG"))
    monkeypatch.setattr(images, "MAX_BYTES", 10)
    with pytest.raises(ImageError, match="limit") as info:
        load_image_file(path)
    assert str(info.value).startswith(f"{path}: ")


def test_extreme_aspect_ratio_is_refused_before_decoding():
    strip = Image.new("L", (4200, 200))
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    with pytest.raises(ImageError, match=r"strip.png: the image is 4200×200 pixels, more than 20"):
        decode_image(buf.getvalue(), "strip.png")
    ok = Image.new("L", (4000, 200))
    buf = io.BytesIO()
    ok.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "ok.png").image.size == (4000, 200)


def test_reduce_keeps_only_the_reduced_image_and_reports_the_original_size():
    data = encode(Image.new("P", (3000, 2000), 0), "PNG")
    seen = []

    def to_model_input(image: Image.Image) -> Image.Image:
        seen.append(image.size)
        return image.resize((224, 224))

    decoded = decode_image(data, "big.png", reduce=to_model_input)
    assert seen == [(3000, 2000)]  # once, on the upright RGB image
    assert decoded.image.size == (224, 224) and decoded.image.mode == "RGB"
    assert decoded.original_size == (3000, 2000)


def test_large_images_decode_a_bounded_number_at_a_time(monkeypatch):
    import threading

    monkeypatch.setattr(images, "LARGE_PIXELS", 100 * 100)
    monkeypatch.setattr(images, "DECODE_SLOTS", threading.BoundedSemaphore(2))
    inside, most = [0], [0]
    lock = threading.Lock()
    gate = threading.Event()

    def slow_reduce(image: Image.Image) -> Image.Image:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        gate.wait(STATE_TIMEOUT_S)  # the full-size pixels are held until the test lets go
        with lock:
            inside[0] -= 1
        return image.resize((8, 8))

    big, small = (
        encode(Image.new("RGB", (200, 200)), "PNG"),
        encode(Image.new("RGB", (50, 50)), "PNG"),
    )
    threads = [
        threading.Thread(target=decode_image, args=(big,), kwargs={"reduce": slow_reduce})
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: inside[0] == 2, what="two large images to hold both slots")
        # a small image is not held up by the large ones: it decodes while they hold every slot
        small_done: list[Image.Image] = []
        small_thread = threading.Thread(
            target=lambda: small_done.append(decode_image(small, reduce=lambda im: im))
        )
        small_thread.start()
        small_thread.join(STATE_TIMEOUT_S)
        assert small_done, "the small image waited for a slot"
        assert inside[0] == 2  # the large ones were still holding both slots meanwhile
    finally:
        gate.set()
    for t in threads:
        t.join()
    assert most[0] == 2


def test_load_image_file_refuses_a_fifo_without_waiting(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with never_waits_on(fifo), pytest.raises(ImageError, match="not a regular file"):
        load_image_file(fifo)
