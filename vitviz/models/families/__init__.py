"""Model families: the libraries that build a model (timm, Hugging Face transformers,
open_clip), one registration each.

A family is one :class:`Family` object registered with :func:`register` in its own module
(``families/timm.py``, ``families/hf.py``, ``families/clip.py``), in the manner of timm's
``@register_model``. :func:`lookup` finds a model name's family: a curated key's, a
``<prefix>:<reference>`` name's (``hf:…``, ``clip:…``), else the default family (no prefix:
timm). Callers ask the family's flags (:attr:`Family.typed_labels`, :attr:`Family.weights_file`
…) and call its functions; none branches on a family's name.

The families are discovered on the first lookup: every module of this package is imported
then (this package itself imports no model library). A new family is one module here that
registers itself; a program or test may also :func:`register` one of its own.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vitviz.results import WeightsInfo

Progress = Callable[[int, "int | None"], None]
"""``progress(bytes_done, bytes_total)``, called as a download arrives."""


@dataclass
class Weights:
    """Weights :func:`vitviz.models.load_model` resolved before the family builds: random
    weights, or a local file's tensors (read once, within the size limit). None in
    :attr:`Request.weights` means the family's own pretrained weights (cache, hub, bundled)."""

    info: WeightsInfo
    state_dict: dict[str, torch.Tensor] | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def random(self) -> bool:
        """Whether these are random weights (no tensors)."""
        return self.info.source == "random"


@dataclass
class Request:
    """What :func:`~vitviz.models.load_model` asks a family to build.

    Attributes:
        name: the model name as given (a curated key, ``prefix:ref`` or a timm name).
        ref: the family's reference, from :attr:`Family.parse`.
        key: the curated key the name is, if any.
        weights: random weights or a file's tensors; None for the family's pretrained ones.
        device: where the model will run (a family may need it while building: CLIP's text
            features).
        keep_aspect: non-square input (families with :attr:`Family.creation_args`).
        model_kwargs: creation arguments (families with :attr:`Family.creation_args`).
        max_params: the parameter limit (already checked on the count; a family checks the
            files it reads itself).
    """

    name: str
    ref: str
    key: str | None
    weights: Weights | None
    device: torch.device
    keep_aspect: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    max_params: int | None = None


@dataclass
class Built:
    """A family's model, ready for :class:`~vitviz.models.LoadedModel` (which
    :func:`~vitviz.models.load_model` makes, the same way for every family).

    Attributes:
        name: the name the model is known by (a curated key, or a name without server paths).
        title: the title shown when the name is no curated key.
        model: the timm-like module (``blocks``, ``patch_embed`` …), on any device.
        data_config: timm's preprocessing config of the model.
        labels: class names (None for a backbone).
        weights: where its weights came from.
        hook: the module of each block whose output is the attention probabilities.
    """

    name: str
    title: str
    model: nn.Module
    data_config: dict[str, Any]
    labels: list[str] | None
    weights: WeightsInfo
    hook: str = "attn.attn_drop"


def _no_check(ref: str) -> None:
    """Nothing to check before the model is loaded."""


def _whole_name(name: str, ref: str) -> str:
    """The name as given."""
    return name


@dataclass(frozen=True)
class Family:
    """One library that builds models: a frozen record of functions and flags.

    A record rather than a Protocol or a base class: a family is data (one object per library,
    registered once), its functions are the library's own module-level functions, and a test
    builds a toy family in a few lines without a subclass.

    Functions (``ref`` is the reference :meth:`parse` gives: the name without ``prefix:``;
    the default family keeps the whole name, its curated keys included):
        check: refuses a bad reference without downloading anything (``serve`` calls it
            before Ray starts).
        count: ``(ref, model_kwargs) → parameters and buffers``, before anything is built,
            read or downloaded (the meta device, or a config).
        plan: ``ref →`` one line saying where the weights would come from now (no network).
        download: ``(ref, progress) →`` the cached weights file (or folder), None when they
            are not on the hub.
        build: ``Request → Built``: the model with its weights.
        shown: ``(name, ref) →`` the name in messages (a folder by its name, never its path).

    Flags (what callers ask instead of the family's name):
        typed_labels: the user types the classes (CLIP): ``--labels``/``--template`` and the
            page's class box.
        weights_file: ``--weights FILE`` can hold its weights (a state dict the family loads).
        local_folder: a name may name a folder on this machine (``hf:./folder``).
        creation_args: ``keep_aspect`` and creation arguments (``model_kwargs``) apply.
        library: the Python library that builds it, as ``vitviz models`` names it (default:
            the family's name).

    ``no_weights_file`` is why ``--weights FILE`` is refused, for families without
    ``weights_file``. Derived flags: :attr:`typed_on_page`, :attr:`page_weights_file`.
    """

    name: str
    prefix: str | None
    build: Callable[[Request], Built]
    count: Callable[[str, dict[str, Any] | None], int]
    plan: Callable[[str], str]
    download: Callable[[str, Progress | None], Path | None]
    check: Callable[[str], None] = _no_check
    shown: Callable[[str, str], str] = _whole_name
    typed_labels: bool = False
    weights_file: bool = False
    local_folder: bool = False
    creation_args: bool = False
    no_weights_file: str = "this model's weights do not come from a file"
    library: str = ""

    def __post_init__(self) -> None:
        if not self.library:  # the Python library that builds it, as `vitviz models` names it
            object.__setattr__(self, "library", self.name)

    def parse(self, name: str) -> str:
        """The reference of a name of this family (the name without ``prefix:``)."""
        if self.prefix is not None and name.startswith(f"{self.prefix}:"):
            return name[len(self.prefix) + 1 :]
        return name

    @property
    def typed_on_page(self) -> bool:
        """Whether a name typed into the page may name it: it reads no folder of the machine
        running the page and needs no typed classes (the page's free name box)."""
        return not self.local_folder and not self.typed_labels

    @property
    def page_weights_file(self) -> bool:
        """Whether the page's weights-file choice may name it (a typed name and a file)."""
        return self.weights_file and self.typed_on_page


_REGISTRY: dict[str, Family] = {}
_DEFAULT: list[Family] = []  # the family without a prefix
_LOCK = threading.Lock()
_DISCOVERED: list[bool] = []
_DISCOVERING = threading.RLock()  # page sessions look up from several threads


def register(family: Family) -> Family:
    """Add ``family`` (by its name and prefix); returns it. A second family of the same name,
    prefix or (no prefix) default is an error."""
    with _LOCK:
        if family.name in _REGISTRY:
            raise ValueError(f"a model family named {family.name!r} is registered already")
        if family.prefix is None and _DEFAULT:
            raise ValueError(f"{_DEFAULT[0].name!r} is the default family already")
        if family.prefix is not None and any(f.prefix == family.prefix for f in _REGISTRY.values()):
            raise ValueError(f"the prefix {family.prefix!r} is taken")
        _REGISTRY[family.name] = family
        if family.prefix is None:
            _DEFAULT.append(family)
    return family


def unregister(family: Family | str) -> None:
    """Remove a family (by object or name); nothing when it is not registered."""
    name = family if isinstance(family, str) else family.name
    with _LOCK:
        gone = _REGISTRY.pop(name, None)
        if gone is not None and gone in _DEFAULT:
            _DEFAULT.remove(gone)


def built_in() -> list[str]:
    """The modules of this package: each registers one family (imported on the first
    lookup)."""
    return [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.ispkg]


def _discover() -> None:
    if _DISCOVERED:
        return
    with _DISCOVERING:
        if not _DISCOVERED:
            for module in built_in():
                importlib.import_module(module)
            _DISCOVERED.append(True)


def registered() -> dict[str, Family]:
    """Every registered family, by name."""
    _discover()
    return dict(_REGISTRY)


def lookup(name: str) -> tuple[Family, str]:
    """``(family, reference)`` of a model name: a curated key's family, a ``prefix:…`` name's,
    or the default family (timm) for anything else, whose reference is the whole name."""
    from vitviz.models.registry import CURATED

    _discover()
    spec = CURATED.get(name)
    text = spec.timm_name if spec is not None else name
    head, sep, _ = text.partition(":")
    if sep:
        for family in list(_REGISTRY.values()):
            if family.prefix == head:
                return family, family.parse(text)
    return _DEFAULT[0], name


def model_family(name: str) -> tuple[str, str]:
    """``(family name, reference)`` of a model name: a curated key's family, ``hf:…`` and
    ``clip:…`` names, or timm for anything else (the reference is then the name, a curated
    key's timm name)."""
    from vitviz.models.registry import CURATED

    family, ref = lookup(name)
    if family.prefix is None:
        spec = CURATED.get(name)
        return family.name, spec.timm_name if spec is not None else name
    return family.name, ref
