"""Export targets: one module per target, each declaring what it can do in one frozen spec, found by registry.

Registration flows one way: a target module imports this registry and registers itself with `register_target`;
the registry never names its members. `list_targets`/`get_target` load every module of this package (the
built-in targets, found with pkgutil) and every module named in the `edgeclip.targets` entry-point group (a
target in another installed package plugs in there, without editing edgeclip).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeclip._registry import add_once, import_submodules
from edgeclip.errors import UsageError
from edgeclip.export.target_options import NoOptions, TargetOptions, parse_options

if TYPE_CHECKING:
    from edgeclip.export.options import EncoderFiles, Encoders, ExportOptions

ENTRY_POINT_GROUP = "edgeclip.targets"
ExportFn = Callable[["Encoders", Path, "ExportOptions"], "EncoderFiles"]
# Checks that need more than the options (the platform, a file's contents) before any model is loaded; returns the
# options to export with (the same, or a copy whose parity floor suits the request). Raises UsageError.
ValidateFn = Callable[["ExportOptions"], "ExportOptions"]


@dataclass(frozen=True)
class TargetSpec:
    """What a target can do: the single source for validation, CLI flags, docs and test parametrization."""

    name: str
    description: str
    precisions: tuple[str, ...]
    file_suffix: str
    dynamic_batch: bool
    requires: str | None = None  # a platform or device the target needs, e.g. "macOS" or "an NVIDIA GPU"
    extra: str | None = None  # the pip extra that installs the target's converter
    default_precision: str | None = None  # None: the first of `precisions`
    platforms: tuple[str, ...] = ()  # where the exported files run; empty: wherever the runtime installs
    options_type: type[TargetOptions] = NoOptions  # the target's options, declared once (see target_options)

    def __post_init__(self) -> None:
        if self.default_precision is None:
            object.__setattr__(self, "default_precision", self.precisions[0])
        if self.default_precision not in self.precisions:
            raise ValueError(f"target {self.name!r}: default precision {self.default_precision!r} not in precisions")

    @property
    def options(self) -> tuple[str, ...]:
        """The option keys the target accepts."""
        return self.options_type.keys()

    def choices(self, key: str) -> tuple[str, ...]:
        """The values option `key` takes, or () where the target has no such choice option."""
        for info in self.options_type.infos():
            if info.key == key:
                return tuple(getattr(info.kind, "choices", ()))
        return ()

    # Names `edgeclip targets --json` has always listed (CoreML's choices), kept for its readers.
    @property
    def compressions(self) -> tuple[str, ...]:
        return self.choices("compress")

    @property
    def image_inputs(self) -> tuple[str, ...]:
        return self.choices("image_input")

    @property
    def deployment_targets(self) -> tuple[str, ...]:
        return self.choices("deployment_target")

    def to_dict(self) -> dict[str, Any]:
        """The spec as `edgeclip targets --json` lists it, options with their type, choices, default and help."""
        return {
            "name": self.name,
            "description": self.description,
            "precisions": list(self.precisions),
            "default_precision": self.default_precision,
            "file_suffix": self.file_suffix,
            "dynamic_batch": self.dynamic_batch,
            "requires": self.requires,
            "extra": self.extra,
            "platforms": list(self.platforms),
            "compressions": list(self.compressions),
            "image_inputs": list(self.image_inputs),
            "deployment_targets": list(self.deployment_targets),
            "options": [info.to_dict() for info in self.options_type.infos()],
        }


@dataclass(frozen=True)
class Target:
    """A registered target: its spec, its export function and its extra checks."""

    spec: TargetSpec
    export: ExportFn
    validate: ValidateFn | None = None

    def precision(self, requested: str | None) -> str:
        """The precision to export at: the requested one if the target has it, else its default; or a UsageError."""
        precision = requested or self.spec.default_precision or self.spec.precisions[0]
        if precision not in self.spec.precisions:
            choices = ", ".join(self.spec.precisions)
            raise UsageError(f"target {self.spec.name!r} does not support precision {precision!r}: expected {choices}")
        return precision

    def parse_options(self, raw: Mapping[str, Any] | TargetOptions | None, precision: str) -> TargetOptions:
        """The typed options from strings or values by key (CLI flags, bench `+key=value`, Python), checked."""
        return parse_options(self.spec.options_type, self.spec.name, raw, precision)

    def validate_options(self, options: ExportOptions) -> ExportOptions:
        """Refuse unknown or bad target options before any work; the options to export with (typed)."""
        options = replace(options, target_options=self.parse_options(options.target_options, options.precision))
        return self.validate(options) if self.validate is not None else options


_TARGETS: dict[str, Target] = {}
_loaded = False


def register_target(spec: TargetSpec, validate: ValidateFn | None = None) -> Callable[[ExportFn], ExportFn]:
    """Decorator adding a target's export function (and its extra checks) to the registry; no duplicate names."""

    def decorate(fn: ExportFn) -> ExportFn:
        add_once(_TARGETS, spec.name, Target(spec, fn, validate), "export target")
        return fn

    return decorate


def load_targets(refresh: bool = False) -> None:
    """Import the built-in target modules (this package) and the `edgeclip.targets` entry points, once.

    `refresh` looks at the entry points again (a package installed since, e.g. in a test); loaded ones stay.
    """
    global _loaded
    if _loaded and not refresh:
        return
    _loaded = True
    import_submodules(__name__, __path__)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as e:  # a broken plugin must not take the built-in targets down with it
            warnings.warn(f"export target plugin {entry.name!r} ({entry.value}) did not load: {e}", stacklevel=2)


def list_targets() -> list[TargetSpec]:
    """Specs of every registered target, by name."""
    load_targets()
    return [_TARGETS[name].spec for name in sorted(_TARGETS)]


def get_target(name: str) -> Target:
    """The registered target called `name`, or a UsageError that suggests the closest names."""
    load_targets()
    if name not in _TARGETS:
        close = difflib.get_close_matches(name, list(_TARGETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown export target {name!r}: expected one of {', '.join(sorted(_TARGETS))}{hint}")
    return _TARGETS[name]
