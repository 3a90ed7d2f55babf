"""User-facing errors.

Every error vitviz raises on purpose is a :class:`VitvizError` whose message is one line that
says what was wrong and what to do. The CLI and the server print the message, never a
traceback. Each error also carries a stable machine ``code`` (its class's, unless the raise
names a more specific one) and the values its words need as ``fields``: the page picks its
catalog entry by the code and fills in the fields (:func:`vitviz.ui.i18n.error_text`), never by
reading the English message.
"""

from __future__ import annotations

from typing import Any


class VitvizError(Exception):
    """Base class of the errors vitviz reports to users as one clear line.

    Attributes:
        code: a stable machine name of what went wrong (``image``, ``memory_refused`` …); the
            class's ``code`` unless the raise passes ``code=``.
        fields: the numbers and names the message's translations need, by name.
    """

    code: str = "other"

    def __init__(self, message: str = "", *, code: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.fields: dict[str, Any] = fields


class ImageError(VitvizError):
    """An image could not be decoded or is outside the accepted limits."""

    code = "image"


class ImageTooLarge(ImageError):
    """An image file or its pixel count is over a limit."""

    code = "image_too_large"


class ModelError(VitvizError):
    """A model name, architecture or weights source cannot be used."""

    code = "model"


class WeightsError(ModelError):
    """A weights file or download cannot be used (missing, unsafe, unreachable, mismatched)."""

    code = "weights"


class WeightsFileError(WeightsError):
    """A weights file cannot be read: missing, not a regular file, unsafe or not weights."""


class OptionsError(VitvizError):
    """An explanation option (layer, head, patch, method …) is out of range or unknown."""

    code = "options"


class ServerError(VitvizError):
    """A vitviz server cannot be reached, refuses the request or fails."""

    code = "server"


class MemoryRefused(VitvizError):
    """Work that could never fit in the memory budget, refused before it starts.

    Attributes:
        what: the kind of work (``explanation``, ``class maps``, ``model`` …).
        needed: bytes the work would hold at its peak.
        available: bytes it could ever have (the budget's capacity less what must stay).
        total: the whole budget.
    """

    code = "memory_refused"

    def __init__(
        self, message: str, what: str = "", needed: int = 0, available: int = 0, total: int = 0
    ) -> None:
        super().__init__(message, what=what, needed=needed, available=available, total=total)
        self.what, self.needed, self.available, self.total = what, needed, available, total


class MemoryBusy(VitvizError):
    """Work that fits the budget waited longer than its limit for others to finish.

    Attributes:
        needed: bytes it waited for.
        waited: seconds it waited.
    """

    code = "memory_busy"

    def __init__(self, message: str, needed: int = 0, waited: float = 0.0) -> None:
        super().__init__(message, needed=needed, waited=waited)
        self.needed, self.waited = needed, waited
