"""User-facing errors.

Every error vitviz raises on purpose is a :class:`VitvizError` whose message is one line that
says what was wrong and what to do. The CLI and the app print the message, never a traceback.
"""

from __future__ import annotations


class VitvizError(Exception):
    """Base class of the errors vitviz reports to users as one clear line."""


class ImageError(VitvizError):
    """An image could not be decoded or is outside the accepted limits."""


class ImageTooLarge(ImageError):
    """An image file or its pixel count is over a limit."""


class ModelError(VitvizError):
    """A model name, architecture or weights source cannot be used."""


class WeightsError(ModelError):
    """A weights file or download cannot be used (missing, unsafe, unreachable, mismatched)."""


class WeightsFileError(WeightsError):
    """A weights file cannot be read: missing, not a regular file, unsafe or not weights."""


class OptionsError(VitvizError):
    """An explanation option (layer, head, patch, method …) is out of range or unknown."""


class ServerError(VitvizError):
    """A vitviz server cannot be reached, refuses the request or fails."""
