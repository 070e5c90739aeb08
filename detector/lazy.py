"""Lazy exports for the rooms' packages: a name loads with its module on first access."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) that imports each of its ``exports`` (name ->
    (module, attribute)) on first access, so that the modules of a room that need no torch (the
    configuration's checks, ``--help``) import without it."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = exports[name]
        return getattr(importlib.import_module(module), attribute)

    return __getattr__
