"""The two pieces every registry here shares (targets, backends, bench subjects, ...): torch-free on purpose."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TypeVar

from edgeclip.errors import UsageError

V = TypeVar("V")


def add_once(table: MutableMapping[str, V], name: str, value: V, what: str) -> None:
    """Put VALUE in a registry under NAME; a second entry of the same name is a programming error, so refused."""
    if name in table:
        raise ValueError(f"{what} {name!r} is registered twice")
    table[name] = value


def lookup(table: Mapping[str, V], name: str, what: str, known: Iterable[str] | None = None) -> V:
    """The registry entry under NAME, or a one-line UsageError naming it and listing the KNOWN names (default: all)."""
    if name not in table:
        raise UsageError(f"unknown {what} {name!r}: expected one of {', '.join(table if known is None else known)}")
    return table[name]


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of a package (given its `__name__` and `__path__`): each registers what it provides."""
    for module in pkgutil.iter_modules(path, prefix=f"{package}."):
        importlib.import_module(module.name)
