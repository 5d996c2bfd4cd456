"""`edgeclip export` and `edgeclip targets`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgeclip.cli import (
    FloatTriple,
    ImageSize,
    cli,
    emit_json,
    json_option,
    quiet_option,
    show_progress,
)


@cli.command()
@click.option("--model", "-m", required=True, help="open_clip architecture, e.g. MobileCLIP2-S0 or ViT-B-32.")
@click.option("--pretrained", "-p", help="Checkpoint file (.safetensors/.pt/.bin), pretrained tag or hf-hub: id.")
@click.option("--random-init", is_flag=True, help="Random weights on purpose (structure and speed work).")
@click.option("--target", "-t", default="onnx", show_default=True, help="Export target: see `edgeclip targets`.")
@click.option("--precision", default="fp32", show_default=True, help="Numeric precision the target supports.")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle at --output.")
@click.option("--image-size", type=ImageSize(), help="Override the input size: 256 or HxW.")
@click.option("--mean", type=FloatTriple(), help="Override the normalization mean: R,G,B.")
@click.option("--std", type=FloatTriple(), help="Override the normalization std: R,G,B.")
@click.option("--interpolation", type=click.Choice(["bicubic", "bilinear"]), help="Override the resize filter.")
@click.option("--resize-mode", type=click.Choice(["shortest", "longest", "squash"]), help="Override how images fit.")
@click.option("--opset", type=click.IntRange(min=17), help="ONNX opset (default: the target's choice).")
@quiet_option
@json_option
def export(
    model: str,
    pretrained: str | None,
    random_init: bool,
    target: str,
    precision: str,
    output: Path,
    force: bool,
    image_size: tuple[int, int] | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    interpolation: str | None,
    resize_mode: str | None,
    opset: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Export a CLIP checkpoint to a bundle: encoders, manifest, tokenizer and a parity report.

    \b
    Examples:
      edgeclip export --model MobileCLIP2-S0 --pretrained ./mobileclip2_s0.safetensors --output mc2s0.edgeclip
      edgeclip export --model MobileCLIP2-S0 --random-init --output demo.edgeclip --force
    """
    from edgeclip.export import export_bundle

    overrides = {
        "image_size": image_size,
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
        "resize_mode": resize_mode,
    }
    bar = _StepBar(enabled=show_progress(quiet), total=7)
    with bar:
        result = export_bundle(
            model,
            pretrained,
            output,
            target=target,
            precision=precision,
            random_init=random_init,
            preprocess=overrides,
            opset=opset,
            force=force,
            on_step=bar.step,
        )
    if as_json:
        emit_json({"path": str(result.path), "timings": result.timings, "manifest": result.manifest.to_dict()})
        return
    m = result.manifest
    click.echo(f"wrote {result.path}  ({m.source.architecture}, {m.target} {m.precision})")
    for role, enc in m.encoders.items():
        size = (result.path / enc.file).stat().st_size / 1e6
        p = enc.parity
        click.echo(
            f"  {role:<5} {enc.file:<22} {size:8.1f} MB  parity vs PyTorch: min cosine {p.min_cosine:.6f}, "
            f"max abs diff {p.max_abs_diff:.2e} over {p.samples} samples"
        )
    click.echo("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    if m.source.random_init:
        click.echo("  note: random weights (--random-init): for structure and speed work, not for predictions")


class _StepBar:
    """A progress bar over an export's steps; silent when disabled (not a TTY, or --quiet)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self._bar = None

    def __enter__(self) -> _StepBar:
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {n}/{total}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def step(self, message: str) -> None:
        if self._bar is not None:
            self._bar.set_description(message[:60])
            self._bar.update(1)


@cli.command()
@json_option
def targets(as_json: bool) -> None:
    """List export targets and what each supports.

    \b
    Example:
      edgeclip targets --json
    """
    from dataclasses import asdict

    from edgeclip.export.targets import list_targets

    specs = list_targets()
    if as_json:
        emit_json([asdict(s) for s in specs])
        return
    for s in specs:
        needs = f"  needs {s.requires}" if s.requires else ""
        click.echo(f"{s.name:<10} precisions: {', '.join(s.precisions):<20} {s.description}{needs}")


