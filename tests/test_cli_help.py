"""Every command's `--help`, walked recursively from the `edgeclip` group: it exits 0 and shows an example."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from edgeclip.cli import cli


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under `group` (subgroups included, and the groups themselves)."""
    found = [path]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        elif command is not None:
            found.append((*path, name))
    return found


COMMANDS = _commands(cli)


def test_the_walk_reaches_the_subgroups() -> None:
    assert {("heads",), ("bench",), ("eval",), ("export",)} <= set(COMMANDS) and len(COMMANDS) > 20


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "edgeclip")
def test_help_exits_0_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output or "Examples:" in result.output, (
        f"`edgeclip {' '.join(path)} --help` has no example"
    )
    assert "edgeclip " in result.output.split("Example")[1], "the example shows an edgeclip command line"
