"""Registries that are folders: every module of a package that declares a given name.

A command (:mod:`vitviz.cli`) or a view (:mod:`vitviz.ui.views`) is one module that declares
its name (``NAME``, ``ID``) and, optionally, ``ORDER`` (its place in lists; lower first, then
by module name). Adding one is adding the file: nothing else lists it.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

__all__ = ["modules_declaring"]

DEFAULT_ORDER = 1000


def modules_declaring(package: str, name: str) -> list[ModuleType]:
    """The modules directly inside ``package`` (a dotted name) that define ``name``, imported
    and sorted by their ``ORDER`` (default last) and then module name; ``_private`` modules
    and subpackages are skipped."""
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        if hasattr(module, name):
            found.append(module)
    return sorted(found, key=lambda m: (getattr(m, "ORDER", DEFAULT_ORDER), m.__name__))
