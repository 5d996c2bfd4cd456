"""Runtime backends: one class per runtime with the same small surface, found through a registry.

Registration flows one way: a backend module imports this registry and registers itself; `list_backends` and
`backend_for_target` load every module of this package (pkgutil) and never name them. The backend modules
import their runtime libraries lazily, so loading them all stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeclip._registry import add_once, import_submodules
from edgeclip.errors import UsageError
from edgeclip.runtimes.manifest import EncoderSpec


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a bundle on this device: execution providers and CPU threads (None: the runtime's)."""

    providers: tuple[str, ...] | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads is {self.threads}: expected a positive number")


class Backend(Protocol):
    """One loaded encoder file: named numpy arrays in, the encoder's outputs out."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


BackendFactory = Callable[[Path, EncoderSpec, RuntimeOptions], Backend]


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend: which bundle targets it runs and how to build it."""

    name: str
    targets: tuple[str, ...]
    factory: BackendFactory


_BACKENDS: dict[str, BackendInfo] = {}
_loaded = False


def load_backends() -> None:
    """Import every backend module of this package once (each registers itself)."""
    global _loaded
    if not _loaded:
        _loaded = True
        import_submodules(__name__, __path__)


def register_backend(name: str, *, targets: Sequence[str]) -> Callable[[BackendFactory], BackendFactory]:
    """Class decorator adding a backend to the registry; a second backend of the same name is refused."""

    def decorate(factory: BackendFactory) -> BackendFactory:
        add_once(_BACKENDS, name, BackendInfo(name, tuple(targets), factory), "backend")
        return factory

    return decorate


def list_backends() -> list[str]:
    """Names of the registered backends."""
    load_backends()
    return sorted(_BACKENDS)


def backend_for_target(target: str, name: str | None = None) -> BackendInfo:
    """The backend that runs bundles of `target` (or the named one, checked to run that target)."""
    load_backends()
    if name is not None:
        if name not in _BACKENDS:
            raise UsageError(f"unknown backend {name!r}: expected one of {', '.join(list_backends())}")
        info = _BACKENDS[name]
        if target not in info.targets:
            raise UsageError(f"backend {name!r} cannot run {target!r} bundles (it runs {', '.join(info.targets)})")
        return info
    for info in _BACKENDS.values():
        if target in info.targets:
            return info
    raise UsageError(f"no runtime backend for {target!r} bundles: this edgeclip has {', '.join(list_backends())}")
