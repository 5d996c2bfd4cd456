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

PRECISION_HINTS = ("auto", "f32", "bf16")
AUTO = "auto"  # the backend name that asks for the measured choice (edgeclip.runtimes.backends.auto)


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a bundle on this device: execution providers, CPU threads and precision hint (None: the runtime's).

    `precision_hint` is for runtimes that choose their own CPU arithmetic (OpenVINO): "f32" is exact, "bf16" asks
    for bfloat16 where the CPU has it, "auto" takes the runtime's (or the bundle's) default. Runtimes that run the
    file's own precision (ONNX Runtime) accept "f32" and "auto" and refuse "bf16".
    """

    providers: tuple[str, ...] | None = None
    threads: int | None = None
    precision_hint: str | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads is {self.threads}: expected a positive number")
        if self.precision_hint is not None and self.precision_hint not in PRECISION_HINTS:
            raise UsageError(f"precision hint {self.precision_hint!r}: expected one of {', '.join(PRECISION_HINTS)}")


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
    precision_hints: tuple[str, ...] = ("f32",)  # the hints it can run; ("f32",): the file's own precision only


_BACKENDS: dict[str, BackendInfo] = {}
_loaded = False


def load_backends() -> None:
    """Import every backend module of this package once (each registers itself)."""
    global _loaded
    if not _loaded:
        _loaded = True
        import_submodules(__name__, __path__)


def register_backend(
    name: str, *, targets: Sequence[str], precision_hints: Sequence[str] = ("f32",)
) -> Callable[[BackendFactory], BackendFactory]:
    """Class decorator adding a backend to the registry; a second backend of the same name is refused.

    `targets`: the bundle targets it runs, its own first. `precision_hints`: the CPU arithmetic it can be asked
    for besides the file's own (what `auto` may try).
    """

    def decorate(factory: BackendFactory) -> BackendFactory:
        add_once(_BACKENDS, name, BackendInfo(name, tuple(targets), factory, tuple(precision_hints)), "backend")
        return factory

    return decorate


def list_backends() -> list[str]:
    """Names of the registered backends."""
    load_backends()
    return sorted(_BACKENDS)


def backends_for_target(target: str) -> list[BackendInfo]:
    """Every registered backend able to run bundles of `target`, its own backend first."""
    load_backends()
    able = [info for info in _BACKENDS.values() if target in info.targets]
    return sorted(able, key=lambda info: (info.targets[0] != target, info.name))


def backend_for_target(target: str, name: str | None = None) -> BackendInfo:
    """The backend that runs bundles of `target`: the named one (checked), else the target's own.

    A target's own backend is the one that lists it first (ONNX Runtime for "onnx"; OpenVINO also runs ONNX files,
    but lists "openvino" first). "auto" is resolved by the bundle (edgeclip.runtimes.backends.auto), not here.
    """
    load_backends()
    if name == AUTO:
        raise UsageError("backend 'auto' is chosen per bundle: pass it to load_bundle(backend='auto')")
    if name is not None:
        if name not in _BACKENDS:
            raise UsageError(f"unknown backend {name!r}: expected one of auto, {', '.join(list_backends())}")
        info = _BACKENDS[name]
        if target not in info.targets:
            raise UsageError(f"backend {name!r} cannot run {target!r} bundles (it runs {', '.join(info.targets)})")
        return info
    able = backends_for_target(target)
    if able:
        return able[0]
    raise UsageError(f"no runtime backend for {target!r} bundles: this edgeclip has {', '.join(list_backends())}")
