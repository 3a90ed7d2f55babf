"""Pictures encoded once.

``st.image`` given an array converts, range-checks and encodes it on every script run (JPEG at
quality 100 for RGB, PNG with alpha), and every visitor's click reruns the script: with a class
on one page the same input image, gallery and lesson pictures were encoded again and again under
the interpreter lock. Here a picture is encoded once, the way ``st.image`` would, and the bytes
are kept with the explanation they come from (bounded in bytes with the rest of its derived
values); :func:`show` hands them to ``st.image`` with their format named, so Streamlit serves
them as they are instead of decoding and encoding them again.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from vitviz.ui.context import ViewContext

Picture = np.ndarray | Image.Image
JPEG_MAGIC = b"\xff\xd8\xff"


def encode(picture: Picture) -> bytes:
    """What ``st.image`` makes of ``picture``: JPEG (quality 100) without alpha, PNG with it.
    Arrays are ``uint8``, or floats in [0, 1] (Streamlit's convention, scaled by 255)."""
    if isinstance(picture, Image.Image):
        image = picture
    else:
        image = Image.fromarray(_uint8(np.asarray(picture)))
    out = io.BytesIO()
    if image.mode in ("RGBA", "LA", "P"):
        image.save(out, format="PNG")
    else:
        image.convert("RGB" if image.mode != "L" else "L").save(out, format="JPEG", quality=100)
    return out.getvalue()


def _uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and float(np.nanmax(array, initial=0)) <= 1.0:
        array = array * 255.0
    return np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)


def image_format(data: bytes) -> str:
    """``JPEG`` or ``PNG``, from the bytes' signature."""
    return "JPEG" if data[:3] == JPEG_MAGIC else "PNG"


def cached(ctx: ViewContext, key: Hashable, make: Callable[[], Picture]) -> bytes:
    """``make()``'s picture encoded, made once per explanation and ``key``."""
    return ctx.entry.get(("picture", key), lambda: encode(make()))


def show(where: Any, data: bytes, **kwargs: Any) -> None:
    """``where.image(data, ...)`` with the bytes' own format, so Streamlit does not re-encode
    them (it does unless ``output_format`` matches, or the picture is wider than shown)."""
    where.image(data, output_format=image_format(data), **kwargs)
