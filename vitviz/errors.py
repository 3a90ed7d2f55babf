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


class MemoryRefused(VitvizError):
    """Work that could never fit in the memory budget, refused before it starts.

    Attributes:
        what: the kind of work (``explanation``, ``class maps``, ``model`` …).
        needed: bytes the work would hold at its peak.
        available: bytes it could ever have (the budget's capacity less what must stay).
        total: the whole budget.
    """

    def __init__(
        self, message: str, what: str = "", needed: int = 0, available: int = 0, total: int = 0
    ) -> None:
        super().__init__(message)
        self.what, self.needed, self.available, self.total = what, needed, available, total


class MemoryBusy(VitvizError):
    """Work that fits the budget waited longer than its limit for others to finish.

    Attributes:
        needed: bytes it waited for.
        waited: seconds it waited.
    """

    def __init__(self, message: str, needed: int = 0, waited: float = 0.0) -> None:
        super().__init__(message)
        self.needed, self.waited = needed, waited
