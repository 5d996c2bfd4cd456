"""Export targets: one module per target, each declaring what it can do in one frozen spec, found by registry."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeclip.errors import UsageError

if TYPE_CHECKING:
    from edgeclip.export.options import EncoderFiles, Encoders, ExportOptions

ExportFn = Callable[["Encoders", Path, "ExportOptions"], "EncoderFiles"]


@dataclass(frozen=True)
class TargetSpec:
    """What a target can do: the single source for validation, CLI choices, docs and test parametrization."""

    name: str
    description: str
    precisions: tuple[str, ...]
    file_suffix: str
    dynamic_batch: bool
    requires: str | None = None  # a platform or device the target needs, e.g. "macOS" or "an NVIDIA GPU"
    extra: str | None = None  # the pip extra that installs the target's converter


@dataclass(frozen=True)
class Target:
    """A registered target: its spec and its export function."""

    spec: TargetSpec
    export: ExportFn


_TARGETS: dict[str, Target] = {}


def register_target(spec: TargetSpec) -> Callable[[ExportFn], ExportFn]:
    """Decorator adding a target's export function to the registry; duplicate names are refused."""

    def decorate(fn: ExportFn) -> ExportFn:
        if spec.name in _TARGETS:
            raise ValueError(f"export target {spec.name!r} is registered twice")
        _TARGETS[spec.name] = Target(spec, fn)
        return fn

    return decorate


def _load_builtin_targets() -> None:
    # Importing a target module registers it; each imports its converter lazily.
    from edgeclip.export import onnx  # noqa: F401


def list_targets() -> list[TargetSpec]:
    """Specs of every registered target, by name."""
    _load_builtin_targets()
    return [_TARGETS[name].spec for name in sorted(_TARGETS)]


def get_target(name: str) -> Target:
    """The registered target called `name`, or a UsageError that suggests the closest names."""
    _load_builtin_targets()
    if name not in _TARGETS:
        close = difflib.get_close_matches(name, list(_TARGETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown export target {name!r}: expected one of {', '.join(sorted(_TARGETS))}{hint}")
    return _TARGETS[name]
