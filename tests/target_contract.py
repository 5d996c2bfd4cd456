"""The export-target contract, as reusable checks: every registered target is held to them (test_target_contract.py),
and so is a target a test registers itself (test_toy_target.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgeclip.bench.run import parse_targets
from edgeclip.calibration import CalibrationSet
from edgeclip.cli import cli
from edgeclip.cli.export import export as export_command
from edgeclip.cli.export import target_option_params, target_options_from_flags
from edgeclip.errors import RuntimeUnavailable, UsageError
from edgeclip.export import export_bundle
from edgeclip.export.target_options import (
    Choice,
    File,
    Files,
    Flag,
    Float,
    Int,
    Ints,
    OptionInfo,
    TargetOptions,
)
from edgeclip.export.targets import get_target
from edgeclip.runtimes.manifest import MANIFEST_NAME, BundleManifest
from edgeclip.runtimes.preprocess import PreprocessSpec
from tests.conftest import TINY


def precision_for(name: str, info: OptionInfo) -> str:
    """A precision of the target the option applies to."""
    spec = get_target(name).spec
    fits = [p for p in spec.precisions if not info.precisions or p in info.precisions]
    return spec.default_precision if spec.default_precision in fits else fits[0]


def _calibration_file(path: Path) -> Path:
    """A real (tiny) calibration set: a target may read its file options before exporting, as executorch does."""
    spec = PreprocessSpec((64, 64), "shortest", "bicubic", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    pixels = np.zeros((2, 3, 64, 64), np.float32)
    return CalibrationSet(pixels, spec, ("a.png", "b.png"), ("a photo",), "random", 0).save(path)


def sample(info: OptionInfo, tmp: Path) -> tuple[list[str], str] | None:
    """A valid, non-default value of the option as CLI arguments and as a bench `+key[=value]` part."""
    kind, flag, key = info.kind, info.cli_flag, info.key
    if isinstance(kind, Flag):
        return [flag], f"+{key}"
    if isinstance(kind, Choice):
        value = next(c for c in (*kind.choices[1:], kind.choices[0]) if c != info.default)
    elif isinstance(kind, Int):
        value = str(min(kind.low + 1, kind.high))
    elif isinstance(kind, Float):
        value = str((kind.low + kind.high) / 2)
    elif isinstance(kind, (File, Files)):
        value = str(_calibration_file(tmp / f"{key}.npz"))
    elif isinstance(kind, Ints):
        value = str(kind.low + 1)
    else:
        return None  # a kind this contract does not know how to write: add it here
    return [flag, value], f"+{key}={value}"


def from_cli(name: str, precision: str, args: list[str]) -> TargetOptions:
    """The typed options `edgeclip export` builds from its (generated) flags, without exporting."""
    argv = ["-m", TINY, "--random-init", "-o", "unused", "-t", name, "--precision", precision, *args]
    ctx = export_command.make_context("export", argv)
    generated = {p.name for p in target_option_params()}
    return target_options_from_flags(name, precision, {k: v for k, v in ctx.params.items() if k in generated})


def from_bench(name: str, precision: str, part: str) -> TargetOptions:
    """The typed options `edgeclip bench --targets NAME:PRECISION+key=value` exports with."""
    (cand,) = parse_targets([f"{name}:{precision}{part}"])
    assert cand.target == name and cand.precision == precision and cand.target_options is not None
    return cand.target_options


def check_options_round_trip(name: str, tmp: Path) -> int:
    """Each option, alone, gives the same typed object from CLI flags and from a bench item (or the same refusal)."""
    checked = 0
    for info in get_target(name).spec.options_type.infos():
        written = sample(info, tmp)
        assert written is not None, f"{name} option {info.key}: the contract has no sample for {type(info.kind)}"
        args, part = written
        precision = precision_for(name, info)
        try:
            via_cli = from_cli(name, precision, args)
        except UsageError as e:  # refused alone (e.g. needs another option): the bench says the same, in one line
            with pytest.raises(UsageError) as err:
                from_bench(name, precision, part)
            assert str(e) in str(err.value) and "\n" not in str(err.value)
            continue
        via_bench = from_bench(name, precision, part)
        assert via_cli == via_bench, (info.key, via_cli, via_bench)
        assert getattr(via_cli, info.key) != info.default or isinstance(info.kind, Flag)
        assert type(via_cli) is get_target(name).spec.options_type
        checked += 1
    return checked


def check_bad_values(name: str) -> None:
    """An unknown key, and a bad value of each option, are one line with what was expected (and a suggestion)."""
    spec = get_target(name).spec
    for info in spec.options_type.infos():
        precision = precision_for(name, info)
        with pytest.raises(UsageError) as err:
            parse_targets([f"{name}:{precision}+{info.key}x"])
        assert f"did you mean {info.key!r}" in str(err.value) and "\n" not in str(err.value)
        kind = info.kind
        bad = {
            Choice: lambda k: k.choices[0][:-1] or "x",
            Int: lambda k: str(k.high + 1),
            Float: lambda k: str(k.high + 1),
            Flag: lambda k: "maybe",
            Ints: lambda k: "1.5",
        }.get(type(kind))
        if bad is None:
            continue
        value = bad(kind)
        with pytest.raises(UsageError) as err:
            parse_targets([f"{name}:{precision}+{info.key}={value}"])
        message = str(err.value)
        assert f"{info.key} {value!r}" in message and "expected" in message and "\n" not in message, message
        if isinstance(kind, Choice):
            assert "did you mean '" in message, message
        if isinstance(kind, Flag):
            continue  # a CLI flag takes no value
        result = CliRunner().invoke(cli, ["export", "-m", TINY, "--random-init", "-o", "unused", "-t", name,
                                          "--precision", precision, info.cli_flag, value])  # fmt: skip
        assert result.exit_code == 2, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
        assert info.cli_flag in line and "expected" in line, line
        if isinstance(kind, Choice):
            assert "did you mean '" in line, line


def export_or_refuse(name: str, out: Path, options: Mapping[str, Any] | None = None) -> Path | None:
    """Export the tiny model; or, where this machine lacks what the target needs, a refusal before any work."""
    spec = get_target(name).spec
    steps: list[str] = []
    try:
        export_bundle(TINY, output=out, target=name, random_init=True, target_options=options, on_step=steps.append)
    except RuntimeUnavailable as e:
        assert spec.requires, f"{name} refused ({e}) but declares no `requires`"
        assert steps == [] and not out.exists() and "\n" not in str(e)
        return None
    return out


def check_bundle(name: str, bundle: Path, options: Mapping[str, Any] | None = None) -> None:
    """The bundle passes `edgeclip info --verify`, carries golden files, and its manifest records the options used."""
    result = CliRunner().invoke(cli, ["info", str(bundle), "--verify"])
    assert result.exit_code == 0 and "verified" in result.output, result.output
    assert "golden     3 images" in result.output, result.output  # every target's bundle carries the golden set
    manifest = BundleManifest.from_json((bundle / MANIFEST_NAME).read_text(encoding="utf-8"), str(bundle))
    target = get_target(name)
    assert manifest.target == name and manifest.precision == target.spec.default_precision
    used = target.parse_options(options or {}, manifest.precision)
    assert manifest.target_info.get("options", {}) == used.to_dict()


def check_bench_row(name: str) -> None:
    """`edgeclip bench --targets NAME` gives a row to export (or an ❌ row saying why not, here)."""
    (cand,) = parse_targets([name])
    spec = get_target(name).spec
    assert (cand.name, cand.target, cand.precision, cand.export) == (
        f"{name}:{spec.default_precision}",
        name,
        spec.default_precision,
        True,
    )
    assert cand.invalid is None or spec.requires, cand.invalid


def check_listed(name: str) -> None:
    """`edgeclip targets --json` lists the target with every option's type, default and help."""
    import json

    result = CliRunner().invoke(cli, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    (listed,) = [t for t in json.loads(result.output) if t["name"] == name]
    keys = [o["name"] for o in listed["options"]]
    assert keys == list(get_target(name).spec.options)
    assert all({"type", "default", "help", "flag"} <= set(o) and o["help"] for o in listed["options"])
    help_text = CliRunner().invoke(cli, ["export", "--help"]).output
    assert all(o["flag"] in help_text for o in listed["options"])
