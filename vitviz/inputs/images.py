"""Decoding and validation of user images (uploads and files).

:func:`decode_image` turns untrusted bytes into an upright, fully loaded 8-bit RGB
:class:`PIL.Image.Image` and a few notes on what was converted (:class:`Note`: a code and fields,
worded by the page in its language, printed in English by the CLI). It refuses, with a one-line
:class:`~vitviz.errors.ImageError`, anything that is empty, too large, not an image in a supported
format, a decompression bomb, or truncated. The pixel-count limit is checked from the header, before
any pixel is decoded, so a huge image fails fast and allocates nothing.

Nothing is written to disk and no image content is logged.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from vitviz.engine.runtime import release_memory
from vitviz.errors import ImageError, ImageTooLarge

MAX_BYTES: int = 50 * 1024 * 1024
"""Largest accepted encoded file, in bytes (50 MiB)."""

MAX_PIXELS: int = 40_000_000
"""Largest accepted image, in pixels (width × height, 40 megapixels)."""

# Longest side over shortest: a 40000×1 strip would become gigapixels once the short side is
# resized to the model's input size.
MAX_ASPECT: int = 20

LARGE_PIXELS: int = 4_000_000
"""Images with more pixels than this decode one slot at a time (see :data:`DECODE_SLOTS`)."""

DECODE_SLOTS = threading.BoundedSemaphore(2)
"""How many large images a process decodes at once: the full-size pixels of a 40-megapixel
image take ~120 MB until :func:`decode_image` has reduced them (its ``reduce``), so concurrent
uploads wait for a slot instead of adding up."""

SUPPORTED = "JPEG, PNG, WebP, BMP, GIF, TIFF"
"""The formats vitviz reads, as said to users."""

# Pillow format names tried by Image.open (camera MPO files open through the JPEG plugin).
_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_ORIENTATION_TAG = 0x0112
_WHITE = (255, 255, 255)

NOTES: dict[str, str] = {
    "sixteen_bit": "16-bit image scaled to 8 bits",
    "cmyk": "CMYK converted to RGB",
    "transparency": "transparency composited over white",
    "exif_unreadable": "EXIF data unreadable: orientation ignored",
    "exif_rotated": "rotated upright from EXIF orientation {orientation}",
    "exif_mirrored": "mirrored upright from EXIF orientation {orientation}",
    "exif_rotated_mirrored": "rotated and mirrored upright from EXIF orientation {orientation}",
    "float_scaled": "floating-point image scaled from 0..1 to 8 bits",
    "float_clipped": "floating-point image clipped to 0..255",
    "tiff_pages": "multi-page TIFF: used page 1 of {frames}",
    "tiff_pages_uncounted": "multi-page TIFF: used page 1",
    "mpo_pictures": "multi-picture JPEG: used picture 1 of {frames}",
    "mpo_pictures_uncounted": "multi-picture JPEG: used picture 1",
    "animated": "animated {format}: used frame 1 of {frames}",
    "animated_uncounted": "animated {format}: used frame 1",
}
"""Every decoding note's code → its English (a :meth:`str.format` template of its fields).

The page words a note by its code (catalog key ``note.<code>``); this English is what the CLI,
the JSON records and logs print."""


@dataclass(frozen=True)
class Note:
    """A note on how an image was converted: a code from :data:`NOTES` and its fields.

    ``str(note)`` is the English sentence (``"CMYK converted to RGB"``); a page in another
    language words it from ``code`` and ``fields``, never from the English.
    """

    code: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in NOTES:
            raise ValueError(f"unknown note code {self.code!r}")
        object.__setattr__(self, "fields", dict(self.fields))

    def __str__(self) -> str:
        return NOTES[self.code].format(**self.fields)

    def __hash__(self) -> int:
        return hash((self.code, tuple(sorted(self.fields.items()))))


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the model, with notes on how it was converted.

    Attributes:
        name: The display name given (usually the file name).
        image: Mode "RGB", upright (EXIF orientation applied), fully loaded and independent of
            the source bytes.
        original_size: ``(width, height)`` after the EXIF transpose.
        notes: Notes on conversions, e.g. ``Note("cmyk")`` (``str()`` gives the English,
            ``"CMYK converted to RGB"``).
    """

    name: str
    image: Image.Image
    original_size: tuple[int, int]
    notes: tuple[Note, ...]


def decode_image(
    data: bytes,
    name: str = "image",
    *,
    max_pixels: int = MAX_PIXELS,
    reduce: Callable[[Image.Image], Image.Image] | None = None,
) -> DecodedImage:
    """Decode and validate untrusted image bytes.

    Args:
        data: The encoded file (bytes, bytearray or memoryview).
        name: Display name used in notes and error messages.
        max_pixels: refuse images with more pixels (checked from the header, before decoding;
            at most :data:`MAX_PIXELS`).
        reduce: applied to the upright RGB image at once (e.g. a model's resize and crop);
            the returned image is then the reduced one and the full-size pixels are freed
            before this returns, so what a caller keeps is bounded by what ``reduce`` makes,
            not by the upload. Large images are decoded and reduced one
            :data:`DECODE_SLOTS` slot at a time.

    Returns:
        The decoded image, converted to upright 8-bit RGB.

    Raises:
        ImageTooLarge: The file or the image is over a limit.
        ImageError: The bytes are empty, not a supported image, a decompression bomb,
            truncated or otherwise undecodable. The message is one line starting with ``name``.
    """
    label = _label(name)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(
            f"{label}: expected the file's bytes, got {type(data).__name__}; pass the file content"
        )
    size = memoryview(data).nbytes
    max_pixels = min(max_pixels, MAX_PIXELS)
    if size == 0:
        raise ImageError(f"{label}: the file is empty (0 bytes); choose an image file")
    if size > MAX_BYTES:
        raise ImageTooLarge(
            f"{label}: the file is {_format_bytes(size)}, over the {_format_bytes(MAX_BYTES)} "
            "limit; use a smaller or more compressed image file"
        )
    data = bytes(data)
    try:
        image, notes, size = _decode(data, label, max_pixels, reduce)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(_bomb_message(label, data, exc)) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{label}: this is not an image in a format vitviz reads; use one of {SUPPORTED}"
        ) from None
    except OSError as exc:
        raise ImageError(
            f"{label}: the file is truncated or corrupt ({_reason(exc)}); "
            "re-export or download the image again"
        ) from None
    except Exception as exc:  # untrusted input: every failure becomes one line
        raise ImageError(
            f"{label}: could not decode the image ({_reason(exc)}); "
            "try saving it again as PNG or JPEG"
        ) from None
    return DecodedImage(name=name, image=image, original_size=size, notes=tuple(notes))


def load_image_file(
    path: str | os.PathLike[str],
    *,
    reduce: Callable[[Image.Image], Image.Image] | None = None,
) -> DecodedImage:
    """Read an image file and decode it with :func:`decode_image`.

    Args:
        path: Path of the image file; ``str(path)`` becomes the display name. Only regular
            files are read (a FIFO or device is refused at once, never waited on).
        reduce: see :func:`decode_image`.

    Returns:
        The decoded image.

    Raises:
        ImageError: The file is missing, a directory, unreadable, too large or not a valid image.
    """
    name = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    label = _label(name)
    try:
        # O_NONBLOCK: opening a FIFO or a device must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(
                    f"{label}: not a regular file (a pipe, device or socket); give an image file"
                )
            if info.st_size > MAX_BYTES:
                raise ImageTooLarge(
                    f"{label}: the file is {_format_bytes(info.st_size)}, over the "
                    f"{_format_bytes(MAX_BYTES)} limit; use a smaller or more compressed image file"
                )
            data = file.read(MAX_BYTES + 1)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file; check the path") from None
    except IsADirectoryError:
        raise ImageError(
            f"{label}: this is a folder, not an image file; give an image file"
        ) from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied; check the file's permissions") from None
    except (OSError, TypeError, ValueError) as exc:
        raise ImageError(
            f"{label}: could not read the file ({_reason(exc)}); check the path"
        ) from None
    return decode_image(data, name=name, reduce=reduce)


def _decode(
    data: bytes,
    label: str,
    max_pixels: int,
    reduce: Callable[[Image.Image], Image.Image] | None = None,
) -> tuple[Image.Image, list[Note], tuple[int, int]]:
    """Open, check, load, convert and reduce ``data``; Pillow's exceptions pass through.

    Returns the image, the notes and the upright size before ``reduce``.
    """
    notes: list[Note] = []
    with Image.open(io.BytesIO(data), formats=_FORMATS) as source:
        width, height = source.size
        if width * height > max_pixels:
            raise ImageTooLarge(_too_large_message(label, (width, height), max_pixels))
        if max(width, height) > MAX_ASPECT * min(width, height):
            raise ImageError(
                f"{label}: the image is {width}×{height} pixels, more than {MAX_ASPECT}:1; "
                "crop it to a less extreme shape and try again"
            )
        large = width * height > LARGE_PIXELS
        if large:
            DECODE_SLOTS.acquire()
        try:
            frames = _frame_count(source)
            if frames != 1:
                notes.append(_frames_note(source.format, frames))
            if _has_16_bit_samples(source):
                notes.append(Note("sixteen_bit"))
            source.load()
            upright = _exif_upright(source, notes)
            rgb = _to_rgb(upright, notes)
            size = rgb.size
            if reduce is not None:
                rgb = reduce(rgb)
            del upright
            if rgb is source or isinstance(rgb, ImageFile.ImageFile):
                rgb = rgb.copy()
            rgb.load()
        finally:
            if large:
                DECODE_SLOTS.release()
    if large:
        del source
        release_memory()  # the full-size pixels are free: return them to the kernel
    return rgb, list(dict.fromkeys(notes)), size


def _frame_count(image: Image.Image) -> int | None:
    """Return the number of frames and rewind to the first; None if it cannot be counted."""
    try:
        count = int(getattr(image, "n_frames", 1))
    except Exception:  # a broken later frame must not hide frame 1
        count = None
    if count != 1:
        image.seek(0)
    return count


def _frames_note(fmt: str | None, frames: int | None) -> Note:
    """The note saying that only the first frame, page or picture of a file was used."""
    counted = {} if frames is None else {"frames": frames}
    end = "" if frames is not None else "_uncounted"
    if fmt == "TIFF":
        return Note("tiff_pages" + end, counted)
    if fmt == "MPO":
        return Note("mpo_pictures" + end, counted)
    kind = {"PNG": "PNG", "WEBP": "WebP", "GIF": "GIF"}.get(fmt or "", fmt or "image")
    return Note("animated" + end, {"format": kind, **counted})


def _has_16_bit_samples(image: Image.Image) -> bool:
    """Whether the undecoded tiles hold 16-bit samples (Pillow reduces 16-bit RGB to 8 bits)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return True
    for tile in getattr(image, "tile", None) or ():
        args = tile[3]
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and rawmode.endswith((";16B", ";16L", ";16N")):
            return True
    return False


def _exif_upright(image: Image.Image, notes: list[Note]) -> Image.Image:
    """Apply the EXIF orientation, noting it; unreadable EXIF data is ignored."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        if orientation not in range(2, 9):
            return image
        upright = ImageOps.exif_transpose(image)
    except Exception:  # corrupt EXIF must not make a good image unusable
        notes.append(Note("exif_unreadable"))
        return image
    if upright is None:
        return image
    action = {3: "rotated", 6: "rotated", 8: "rotated", 2: "mirrored", 4: "mirrored"}
    code = f"exif_{action.get(orientation, 'rotated_mirrored')}"
    notes.append(Note(code, {"orientation": orientation}))
    return upright


def _to_rgb(image: Image.Image, notes: list[Note]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency over white."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image, notes)
    if mode == "F":
        return _float_to_rgb(image, notes)
    if mode == "CMYK":
        notes.append(Note("cmyk"))
    if mode in _ALPHA_MODES or image.has_transparency_data:
        if mode == "La":
            image = image.convert("LA")
        return _over_white(image.convert("RGBA"), notes)
    if mode == "RGB":
        return image
    return image.convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image, notes: list[Note]) -> Image.Image:
    """Scale 16-bit (or 32-bit integer) gray to 8 bits: 0..65535 -> 0..255, rounded."""
    notes.append(Note("sixteen_bit"))
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    gray = ((values + 128) // 257).astype(np.uint8)  # == round(v / 257); there are no ties
    rgb = Image.fromarray(gray).convert("RGB")
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and not isinstance(transparent, bool):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        return _over_white(rgba, notes)
    return rgb


def _float_to_rgb(image: Image.Image, notes: list[Note]) -> Image.Image:
    """Map a float image to 8 bits: values in 0..1 are scaled by 255, others clipped to 0..255."""
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    if not finite.any() or values.max() <= 1.0:
        values = values * 255.0
        notes.append(Note("float_scaled"))
    else:
        notes.append(Note("float_clipped"))
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _over_white(rgba: Image.Image, notes: list[Note]) -> Image.Image:
    """Composite an RGBA image over white; note it only when some pixel is not opaque."""
    low, _ = rgba.getchannel("A").getextrema()
    if low == 255:
        return rgba.convert("RGB")
    notes.append(Note("transparency"))
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _too_large_message(label: str, size: tuple[int, int], limit: int = MAX_PIXELS) -> str:
    """The one-line error for an image with more than ``limit`` pixels."""
    width, height = size
    return (
        f"{label}: the image is {width}×{height} pixels ({width * height / 1e6:.1f} megapixels), "
        f"over the {limit / 1e6:g}-megapixel limit; downscale it and try again"
    )


def _bomb_message(label: str, data: bytes, exc: Exception) -> str:
    """The one-line error for Pillow's DecompressionBombError, with W×H when the header tells."""
    size = _header_size(data)
    if size is not None:
        return _too_large_message(label, size)
    return (
        f"{label}: the image is too large to decode safely ({_reason(exc)}), over the "
        f"{MAX_PIXELS / 1e6:g}-megapixel limit; downscale it and try again"
    )


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Read (width, height) from the header without Pillow's size check; None if unknown.

    Only used after Pillow refused the image as a decompression bomb: the format plugins parse
    the header lazily, so no pixel is decoded.
    """
    try:
        Image.init()
        prefix = data[:16]
        for fmt in _FORMATS:
            factory, accept = Image.OPEN[fmt]
            if accept is None or accept(prefix) is True:
                header = factory(io.BytesIO(data), "")
                width, height = header.size
                return int(width), int(height)
    except Exception:  # best effort; the caller has a fallback message
        return None
    return None


def _label(name: str) -> str:
    """The name as it appears in messages: one line, never empty."""
    text = "".join(char if char.isprintable() else " " for char in str(name))
    return text if text.strip() else "image"


def _reason(exc: BaseException) -> str:
    """A short, one-line reason for an exception."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _format_bytes(size: int) -> str:
    """A human file size: bytes, KiB or MiB."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"
