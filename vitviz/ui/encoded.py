"""Pictures encoded once.

``st.image`` given an array converts, range-checks and PNG-encodes it on every script run, and
every visitor's click reruns the script: with a class on one page the same input image, gallery
and lesson pictures were encoded again and again under the interpreter lock. Here a picture is
PNG-encoded once (fast, lossless) and the bytes are kept with the explanation they come from
(bounded in bytes with the rest of its derived values), so a rerun only hands Streamlit bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from vitviz.ui.context import ViewContext

Picture = np.ndarray | Image.Image


def png(picture: Picture) -> bytes:
    """Lossless PNG bytes of an RGB(A) or grey ``uint8`` array or a PIL image (zlib level 1:
    a few times faster than the default for a slightly larger file, on loopback or a LAN)."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(_uint8(picture))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and float(np.nanmax(array, initial=0)) <= 1.0:
        array = array * 255.0  # Streamlit's convention for float pictures in [0, 1]
    return np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)


def cached(ctx: ViewContext, key: Hashable, make: Callable[[], Picture]) -> bytes:
    """``make()``'s picture as PNG bytes, made once per explanation and ``key``."""
    return ctx.entry.get(("png", key), lambda: png(make()))
