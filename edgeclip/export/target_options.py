"""Typed target options: a target declares its options once, as a frozen dataclass of `option(...)` fields.

From that one declaration come the `edgeclip export` flags, bench's `+key=value` strings, `edgeclip targets
--json`, the options the manifest records, and the one-line errors (with a did-you-mean) for unknown keys and bad
values. Strings are parsed once, at the boundary (`parse_options`); export code receives the typed object.
Nothing here imports torch or a converter.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from edgeclip.errors import UsageError

if TYPE_CHECKING:
    from edgeclip.export.options import ExportOptions

T = TypeVar("T", bound="TargetOptions")
META = "edgeclip.option"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class BadValue(ValueError):
    """A value an option kind cannot take; the message is the tail of the one-line error (what was expected)."""


def _did_you_mean(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- kinds: how one option's value is read from a string (or taken as given), checked and written to JSON ----------


@dataclass(frozen=True)
class Kind:
    """How an option's value is parsed; `parse` takes a string (CLI, bench) or an already typed value (Python)."""

    name: ClassVar[str] = "str"
    metavar: ClassVar[str] = "TEXT"  # how CLI help shows the value
    multiple: ClassVar[bool] = False  # the CLI flag may be repeated

    def parse(self, value: Any) -> Any:
        return str(value)

    def finish(self, key: str, value: Any) -> Any:
        """Checks that touch the filesystem, run after the cross-field checks (so those errors come first)."""
        return value

    def to_json(self, value: Any) -> Any:
        return value

    def describe(self) -> dict[str, Any]:
        return {"type": self.name}


@dataclass(frozen=True)
class Flag(Kind):
    """On or off: `--dynamic` on the CLI, `+dynamic` (or `+dynamic=false`) in bench items."""

    name: ClassVar[str] = "flag"

    def parse(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in _TRUE:
            return True
        if str(value).strip().lower() in _FALSE:
            return False
        raise BadValue("expected true or false")


@dataclass(frozen=True)
class Int(Kind):
    """A whole number in [low, high]."""

    name: ClassVar[str] = "int"
    metavar: ClassVar[str] = "INT"
    low: int = 1
    high: int = 1 << 20

    def parse(self, value: Any) -> int:
        whole = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.strip().isdigit()
        )
        if not whole or not self.low <= int(value) <= self.high:
            raise BadValue(f"expected a whole number from {self.low} to {self.high}")
        return int(value)

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "min": self.low, "max": self.high}


@dataclass(frozen=True)
class Float(Kind):
    """A number in [low, high]."""

    name: ClassVar[str] = "float"
    metavar: ClassVar[str] = "NUMBER"
    low: float = 0.0
    high: float = 1.0

    def parse(self, value: Any) -> float:
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not self.low <= number <= self.high:
            raise BadValue(f"expected a number from {self.low:g} to {self.high:g}")
        return number

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "min": self.low, "max": self.high}


@dataclass(frozen=True)
class Choice(Kind):
    """One of a fixed set of names."""

    name: ClassVar[str] = "choice"
    choices: tuple[str, ...] = ()
    none: str | None = None  # a word that asks for no value (None), e.g. --compress none

    def parse(self, value: Any) -> str | None:
        if self.none is not None and value == self.none:
            return None
        if not isinstance(value, str) or value not in self.choices:
            raise BadValue(f"expected one of {', '.join(self.choices)}{_did_you_mean(str(value), self.choices)}")
        return value

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "choices": list(self.choices)}


@dataclass(frozen=True)
class File(Kind):
    """One path (a one-item list is taken too, as a repeatable CLI flag gives it); it must exist."""

    name: ClassVar[str] = "path"
    metavar: ClassVar[str] = "PATH"
    expect: str = "a file"

    def parse(self, value: Any) -> Path:
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise BadValue(f"expected one path ({self.expect}), got {len(value)}")
            value = value[0]
        if not isinstance(value, (str, PurePath)) or not str(value):
            raise BadValue(f"expected a path ({self.expect})")
        return Path(value)

    def finish(self, key: str, value: Any) -> Any:
        if value is not None and not Path(value).exists():
            raise UsageError(f"{key} {value} does not exist: expected {self.expect}")
        return value

    def to_json(self, value: Any) -> Any:
        return None if value is None else Path(value).name  # a file is recorded by name: bundles travel

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "expect": self.expect}


@dataclass(frozen=True)
class OutputFile(File):
    """A path the target writes (it need not exist yet)."""

    def finish(self, key: str, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class Files(Kind):
    """One or more paths (a repeatable flag); `check` resolves them (existence, expansion) after other checks."""

    name: ClassVar[str] = "paths"
    metavar: ClassVar[str] = "PATH"
    multiple: ClassVar[bool] = True
    expect: str = "files"
    check: Callable[[tuple[Path, ...]], tuple[Path, ...]] | None = None

    def parse(self, value: Any) -> tuple[Path, ...]:
        items = [value] if isinstance(value, (str, PurePath)) else list(value)
        if not items or not all(isinstance(v, (str, PurePath)) and str(v) for v in items):
            raise BadValue(f"expected paths ({self.expect})")
        return tuple(Path(v) for v in items)

    def finish(self, key: str, value: Any) -> Any:
        return self.check(value) if self.check is not None and value else value

    def to_json(self, value: Any) -> Any:
        return [Path(v).name for v in value]

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "expect": self.expect}


@dataclass(frozen=True)
class Ints(Int):
    """Whole numbers in [low, high], e.g. `1,8,32`: sorted, without repeats."""

    name: ClassVar[str] = "ints"
    metavar: ClassVar[str] = "LIST"

    def parse(self, value: Any) -> tuple[int, ...]:  # type: ignore[override]
        items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
        try:
            sizes = tuple(sorted({super(Ints, self).parse(v) for v in items}))
        except BadValue:
            sizes = ()
        if not sizes:
            raise BadValue(f"expected whole numbers between {self.low} and {self.high}, e.g. 1,8,32")
        return sizes

    def to_json(self, value: Any) -> Any:
        return list(value)


# --- declaring options -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionInfo:
    """One declared option: its key (the dataclass field), kind, default, help and where it applies."""

    key: str
    kind: Kind
    default: Any
    help: str
    precisions: tuple[str, ...] = ()  # empty: every precision of the target
    platforms: tuple[str, ...] = ()  # where the option has an effect; empty: everywhere
    flag: str = ""  # the `edgeclip export` flag; empty: --KEY with dashes
    metavar: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")

    def to_dict(self) -> dict[str, Any]:
        """What `edgeclip targets --json` lists for the option."""
        default = self.default if self.default is None else self.kind.to_json(self.default)
        return {
            "name": self.key,
            **self.kind.describe(),
            "default": default,
            "help": self.help,
            "flag": self.cli_flag,
            "precisions": list(self.precisions),
            "platforms": list(self.platforms),
        }


def option(
    kind: Kind,
    default: Any = None,
    *,
    help: str,
    precisions: Sequence[str] = (),
    platforms: Sequence[str] = (),
    flag: str = "",
    metavar: str | None = None,
) -> Any:
    """A field of a target's options dataclass, with what the CLI, bench, docs and errors need to know of it."""
    info = {"kind": kind, "help": help, "precisions": tuple(precisions), "platforms": tuple(platforms)}
    info.update(flag=flag, metavar=metavar)
    return dataclasses.field(default=default, metadata={META: info})


@dataclass(frozen=True)
class TargetOptions:
    """Base of every target's options dataclass (frozen, each field declared with `option`)."""

    def check(self: T, precision: str) -> T:
        """Cross-field checks (one-line UsageError) and derived defaults; the options to export with."""
        return self

    @classmethod
    def infos(cls) -> tuple[OptionInfo, ...]:
        """The declared options, in declaration order."""
        return tuple(
            OptionInfo(key=f.name, default=f.default, **f.metadata[META])
            for f in dataclasses.fields(cls)
            if META in f.metadata
        )

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(info.key for info in cls.infos())

    def to_dict(self) -> dict[str, Any]:
        """The options as used, for the manifest: JSON values, files by name."""
        out = {}
        for info in self.infos():
            value = getattr(self, info.key)
            out[info.key] = None if value is None else info.kind.to_json(value)
        return out

    def given(self) -> dict[str, Any]:
        """The options that differ from their defaults (what a user asked for)."""
        return {i.key: getattr(self, i.key) for i in self.infos() if getattr(self, i.key) != i.default}


@dataclass(frozen=True)
class NoOptions(TargetOptions):
    """A target that takes no options."""


def _fail(target: str, key: str, value: Any, tail: str) -> UsageError:
    return UsageError(f"{target} option {key} {value!r}: {tail}")


def unknown_option(target: str, key: str, accepted: Sequence[str]) -> UsageError:
    """The error for a key the target does not take, with the closest key it does."""
    names = ", ".join(accepted) or "none"
    return UsageError(f"target {target!r} has no option {key!r}: it accepts {names}{_did_you_mean(key, accepted)}")


def parse_value(target: str, info: OptionInfo, value: Any) -> Any:
    """One option's typed value from a string or a Python value, or a one-line UsageError naming it."""
    try:
        return info.kind.parse(value)
    except BadValue as e:
        raise _fail(target, info.key, value, str(e)) from None


def parse_options(cls: type[T], target: str, raw: Mapping[str, Any] | TargetOptions | None, precision: str) -> T:
    """The typed options of `target` from strings or values by key (or a typed object), checked for `precision`.

    Order of the checks: unknown keys, each value's syntax, options given for a precision they do not apply to,
    the target's cross-field checks, then files (so a typo'd flag is reported before a missing file).
    """
    infos = {info.key: info for info in cls.infos()}
    if raw is None:
        raw = {}
    if isinstance(raw, TargetOptions):
        if not isinstance(raw, cls):
            raise UsageError(f"target {target!r} takes {cls.__name__}, not {type(raw).__name__}")
        values = {key: getattr(raw, key) for key in infos}
        given = set(raw.given())
    else:
        raw = {str(k).replace("-", "_"): v for k, v in raw.items()}  # `text-int8`, the flag's spelling, is text_int8
        for key in raw:
            if key not in infos:
                raise unknown_option(target, key, list(infos))
        values = {k: parse_value(target, infos[k], v) for k, v in raw.items() if v is not None and v != ()}
        given = {key for key, value in values.items() if value != infos[key].default}
    for key in infos:
        info = infos[key]
        if key in given and info.precisions and precision not in info.precisions:
            only = "/".join(info.precisions)
            raise UsageError(f"option {key!r} only applies to --precision {only} (got --precision {precision})")
    options = cls(**values).check(precision)
    finished = {key: infos[key].kind.finish(key, getattr(options, key)) for key in given if key in infos}
    return dataclasses.replace(options, **finished) if finished else options


def options_of(options: ExportOptions, cls: type[T]) -> T:
    """An export's typed options: as `Target.validate_options` left them, or parsed here for a direct caller."""
    value = options.target_options
    if isinstance(value, cls):
        return value
    return parse_options(cls, options.target, value, options.precision)
