"""The `edgeclip` command line: parse, call one library function, format the result.

One module per command group; each registers its commands on `cli` when imported below.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from edgeclip import errors
from edgeclip._version import __version__


class EdgeclipGroup(click.Group):
    """Translates library errors and warnings at one place: usage errors exit 2, other edgeclip errors exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings(), _signals_raise(top=ctx.parent is None):
            warnings.showwarning = _echo_warning
            # torch 2.13's own export internals trip its pytree deprecation; nothing a user can act on.
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)
            try:
                return super().invoke(ctx)
            except click.exceptions.Exit:
                raise
            except BaseException as e:
                # A signal can surface as another error (an import it interrupted fails with ImportError, say):
                # once one arrived, the command was interrupted, whatever the exception.
                signum = _RECEIVED[0] if _RECEIVED else (signal.SIGINT if isinstance(e, KeyboardInterrupt) else None)
                if signum is not None:
                    name = signal.Signals(signum).name
                    click.echo(
                        f"Error: interrupted by {name}: stopped; partial files removed, earlier outputs kept",
                        err=True,
                    )
                    ctx.exit(128 + signum)
                if isinstance(e, errors.UsageError):
                    raise click.UsageError(str(e)) from None
                if isinstance(e, errors.EdgeclipError):
                    raise click.ClickException(str(e)) from None
                raise


_RECEIVED: list[int] = []  # the signal that stopped this command, if one did


def _on_signal(signum: int, _frame: object) -> None:
    """Stop the command through an exception, so every `finally` and `except BaseException` cleanup runs.

    Repeats of the signal are ignored from here on, so a second Ctrl-C cannot cut the cleanup short.
    """
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    _RECEIVED.append(signum)
    raise errors.Interrupted(signum)


@contextlib.contextmanager
def _signals_raise(top: bool) -> Iterator[None]:
    """While the top-level command runs (in the main thread), SIGINT and SIGTERM raise errors.Interrupted."""
    import threading

    if not top or threading.current_thread() is not threading.main_thread():
        yield
        return
    _RECEIVED.clear()
    before = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _echo_warning(message: Warning | str, *_args: object, **_kwargs: object) -> None:
    """Warnings as one `warning: ...` line on stderr, as `calibrate` prints them, not Python's file:line echo."""
    click.echo(f"warning: {message}", err=True)


# --- parameter types: validate at the parameter, so bad values fail before any work -----------------


class CommaList(click.ParamType):
    """`a,b,c` or `@file` (one item per line) as a list of non-empty strings."""

    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                lines = read_text_file(path).splitlines()
            except errors.EdgeclipError as e:
                self.fail(str(e), param, ctx)
            return [line.strip() for line in lines if line.strip()]
        return [item.strip() for item in value.split(",")]


def read_text_file(path: Path) -> str:
    """A text file as UTF-8 (a BOM is dropped), or UTF-16 when it starts with a UTF-16 BOM (Windows Notepad)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise errors.UsageError(f"cannot read {path}: {e.strerror or e}") from None
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise errors.UsageError(
            f"{path} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r}): expected UTF-8 or UTF-16 "
            "with a BOM"
        ) from None


class FloatTriple(click.ParamType):
    """`0.5,0.5,0.5` (or one number for all three channels)."""

    name = "R,G,B"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(float(v) for v in value.split(","))
        except ValueError:
            self.fail(f"{value!r} is not a number or three comma-separated numbers", param, ctx)
        if len(numbers) == 1:
            numbers *= 3
        if len(numbers) != 3:
            self.fail(f"{value!r} has {len(numbers)} numbers: expected 1 or 3", param, ctx)
        return numbers


class ImageSize(click.ParamType):
    """`256` or `256x192` (height x width)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            parts = tuple(int(v) for v in value.lower().split("x"))
        except ValueError:
            self.fail(f"{value!r} is not a size: expected 256 or 256x192", param, ctx)
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or min(parts) < 1:
            self.fail(f"{value!r} is not a size: expected 256 or 256x192", param, ctx)
        return parts


def verify_option(fn: Callable) -> Callable:
    """`--no-verify`: skip the sha256 check of each bundle file as it is read (for a bundle verified once)."""
    return click.option(
        "--no-verify",
        "no_verify",
        is_flag=True,
        help="Do not check bundle files against the manifest's sha256 as they are read (default: checked).",
    )(fn)


def max_pixels_option(fn: Callable) -> Callable:
    """`--max-pixels`: decode images larger than the decompression-bomb limit (e.g. 108 MP phone photos)."""
    return click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        help="Largest image (width x height) to decode; default 89,478,485 (Pillow's), at most twice that.",
    )(fn)


def report_unreadable(bad: int, total: int, quiet: bool) -> None:
    """Say how many inputs were skipped; when none could be read, that is a failure (exit 1), not a result."""
    if bad and bad == total:
        raise click.ClickException(f"none of the {total} images could be read (each is reported above)")
    if bad and not quiet:
        click.echo(f"{bad} of {total} images could not be read and were skipped", err=True)


def quiet_option(fn: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar or step messages.")(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")(fn)


def runtime_options(fn: Callable) -> Callable:
    fn = click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the runtime.")(fn)
    fn = click.option(
        "--provider",
        "providers",
        multiple=True,
        help="ONNX Runtime execution provider, best first (repeatable); default CPUExecutionProvider.",
    )(fn)
    return fn


def backend_options(fn: Callable) -> Callable:
    """--backend and --precision-hint: which runtime runs the bundle, and the CPU arithmetic asked of it."""
    fn = click.option(
        "--precision-hint",
        type=click.Choice(["auto", "f32", "bf16"]),
        help="CPU arithmetic for runtimes that choose it (OpenVINO): f32 is exact; bf16 needs AVX512_BF16/AMX "
        "(elsewhere it warns and runs f32); auto: the bundle's or the runtime's default.",
    )(fn)
    fn = click.option(
        "--backend",
        metavar="NAME",
        help="Runtime backend: auto (the fastest installed one, by a probe cached per bundle and machine), "
        "onnxruntime, openvino, ... (default: the bundle target's own; classify: auto).",
    )(fn)
    return fn


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group(cls=EdgeclipGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgeclip")
def cli() -> None:
    """Take CLIP-class models to phones and edge devices, and prove the deployed model is still the model.

    \b
    Example:
      edgeclip export --model MobileCLIP2-S0 --random-init --output mc2s0.edgeclip
      edgeclip info mc2s0.edgeclip
    """


# Importing a command module registers its commands on `cli`.
from edgeclip.cli import bench as _bench  # noqa: E402, F401
from edgeclip.cli import bundle as _bundle  # noqa: E402, F401
from edgeclip.cli import calibrate as _calibrate  # noqa: E402, F401
from edgeclip.cli import distill as _distill  # noqa: E402, F401
from edgeclip.cli import export as _export  # noqa: E402, F401
from edgeclip.cli import port as _port  # noqa: E402, F401
from edgeclip.cli import search as _search  # noqa: E402, F401
from edgeclip.cli import tasks as _tasks  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="edgeclip")
