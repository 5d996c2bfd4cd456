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
# Checks a request's target options before any model is loaded; returns the options to export with (the same,
# or a copy whose parity floor suits the requested compression). Raises UsageError on a bad value.
ValidateFn = Callable[["ExportOptions"], "ExportOptions"]


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
    default_precision: str | None = None  # None: the first of `precisions`
    compressions: tuple[str, ...] = ()  # weight/activation compressions (target option "compress")
    image_inputs: tuple[str, ...] = ()  # kinds of image encoder input (target option "image_input"); first is default
    deployment_targets: tuple[str, ...] = ()  # OS versions the files can require (option "deployment_target")
    platforms: tuple[str, ...] = ()  # where the exported files run; empty: wherever the runtime installs
    options: tuple[str, ...] = ()  # the target_options keys the target accepts

    def __post_init__(self) -> None:
        if self.default_precision is None:
            object.__setattr__(self, "default_precision", self.precisions[0])
        if self.default_precision not in self.precisions:
            raise ValueError(f"target {self.name!r}: default precision {self.default_precision!r} not in precisions")


@dataclass(frozen=True)
class Target:
    """A registered target: its spec and its export function."""

    spec: TargetSpec
    export: ExportFn
    validate: ValidateFn | None = None

    def validate_options(self, options: ExportOptions) -> ExportOptions:
        """Refuse unknown or bad target options before any work; the options to export with."""
        unknown = sorted(set(options.target_options) - set(self.spec.options))
        if unknown:
            accepted = ", ".join(self.spec.options) or "none"
            close = difflib.get_close_matches(unknown[0], self.spec.options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"target {self.spec.name!r} has no option {unknown[0]!r}: it accepts {accepted}{hint}")
        return self.validate(options) if self.validate is not None else options


_TARGETS: dict[str, Target] = {}


def register_target(spec: TargetSpec, validate: ValidateFn | None = None) -> Callable[[ExportFn], ExportFn]:
    """Decorator adding a target's export function (and its option check) to the registry; no duplicate names."""

    def decorate(fn: ExportFn) -> ExportFn:
        if spec.name in _TARGETS:
            raise ValueError(f"export target {spec.name!r} is registered twice")
        _TARGETS[spec.name] = Target(spec, fn, validate)
        return fn

    return decorate


def _load_builtin_targets() -> None:
    # Importing a target module registers it; each imports its converter lazily.
    from edgeclip.export import coreml, onnx, tensorrt  # noqa: F401


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
