"""`edgeclip check-port`: an app port's dumped stages against a bundle's golden files."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.cli import cli, emit_json, json_option, verify_option


@cli.command("check-port")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("dump_dir", type=click.Path(path_type=Path))
@verify_option
@json_option
def check_port(bundle: Path, dump_dir: Path, no_verify: bool, as_json: bool) -> None:
    """Compare a port's dumped outputs (decode, resize, normalize, tokenize, encode) with the bundle's golden files.

    Each stage is judged on its own and the first that differs is named, with its tolerance and error; exit 1
    when one differs. DUMP_DIR holds index.json naming raw .bin arrays, or NAME.npy files (docs/ports.md).

    \b
    Example:
      edgeclip check-port mc2s0.edgeclip ./android-dump
    """
    from edgeclip.runtimes.golden import check_port_dump

    report = check_port_dump(bundle, dump_dir, verify=not no_verify)
    if as_json:
        emit_json(report.to_dict())
    else:
        for s in report.stages:
            figure = ""
            if s.error is not None:
                bound = ">=" if s.stage == "encode" else "<="
                figure = f"  {s.metric}: {s.error:.6g} (tolerance {bound} {s.tolerance:g})"
            click.echo(f"{s.stage:<10} {s.status:<8}{figure}  {s.detail}".rstrip())
    first = report.first_failure
    if first is not None:
        raise click.ClickException(f"the port first differs at stage {first.stage}: {first.detail}")
    if not report.ok:
        raise click.ClickException(f"{dump_dir} holds none of the golden arrays: see docs/ports.md for the names")
    if not as_json:
        click.echo("the port matches the golden files at every stage it dumped")
