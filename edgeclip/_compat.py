"""Old public names that still resolve, with a DeprecationWarning, after a rename (torch-free)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


def renamed(module: str, old: str, new: str, value: Any) -> Callable[[str], Any]:
    """A module `__getattr__` under which `old`, the former name of `new`, still gives `value` (and warns)."""

    def __getattr__(name: str) -> Any:
        if name == old:
            warnings.warn(f"{module}.{old} is now {module}.{new}", DeprecationWarning, stacklevel=2)
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
