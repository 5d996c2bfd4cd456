"""The `edgeclip` command line: parse, call one library function, format the result."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgeclip import errors
from edgeclip._version import __version__


class EdgeclipGroup(click.Group):
    """Translates library errors at one place: usage errors exit 2, every other edgeclip error exits 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.UsageError as e:
            raise click.UsageError(str(e)) from None
        except errors.EdgeclipError as e:
            raise click.ClickException(str(e)) from None


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
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as e:
                self.fail(f"cannot read {path}: {e.strerror or e}", param, ctx)
            return [line.strip() for line in lines if line.strip()]
        return [item.strip() for item in value.split(",")]


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


def _quiet_option(fn: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar or step messages.")(fn)


def _json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")(fn)


def _runtime_options(fn: Callable) -> Callable:
    fn = click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the runtime.")(fn)
    fn = click.option(
        "--provider",
        "providers",
        multiple=True,
        help="ONNX Runtime execution provider, best first (repeatable); default CPUExecutionProvider.",
    )(fn)
    return fn


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _emit_json(data: Any) -> None:
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


# --- export -----------------------------------------------------------------------------------------


def _target_names() -> list[str]:
    from edgeclip.export.targets import list_targets

    return [spec.name for spec in list_targets()]


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
@_quiet_option
@_json_option
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
    bar = _StepBar(enabled=_show_progress(quiet), total=7)
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
        _emit_json({"path": str(result.path), "timings": result.timings, "manifest": result.manifest.to_dict()})
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
@_json_option
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
        _emit_json([asdict(s) for s in specs])
        return
    for s in specs:
        needs = f"  needs {s.requires}" if s.requires else ""
        click.echo(f"{s.name:<10} precisions: {', '.join(s.precisions):<20} {s.description}{needs}")


# --- info -------------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check file sha256 sums.")
@_json_option
def info(bundle: Path, verify: bool, as_json: bool) -> None:
    """Show what a bundle holds: model, target, preprocessing, tokenizer, files, parity and heads.

    \b
    Example:
      edgeclip info mc2s0.edgeclip
    """
    from edgeclip.runtimes import load_bundle

    b = load_bundle(bundle, verify=verify)
    summary = b.summary()
    if as_json:
        _emit_json(summary)
        return
    m = b.manifest
    src = m.source
    click.echo(f"bundle     {b.path}")
    click.echo(f"model      {src.architecture}  weights: {src.pretrained or '-'}  id: {m.model_id}")
    if src.random_init:
        click.echo("           random weights (exported with --random-init): structure and speed demo only")
    click.echo(f"target     {m.target} {m.precision}  embed dim {m.embed_dim}  logit scale {m.logit_scale:.2f}")
    p = m.preprocess
    click.echo(
        f"preprocess {p.image_size[0]}x{p.image_size[1]} {p.resize_mode} {p.interpolation}  "
        f"mean {list(p.mean)} std {list(p.std)}  ({m.preprocess_source})"
    )
    t = m.tokenizer
    click.echo(f"tokenizer  {t.kind} ({t.file}), context length {t.context_length}")
    for role, enc in m.encoders.items():
        ins = ", ".join(f"{i.name} {list(i.shape)} {i.dtype}" for i in enc.inputs)
        size = summary["files"][enc.file] / 1e6
        click.echo(f"{role:<10} {enc.file} ({size:.1f} MB)  in: {ins}")
        if enc.parity:
            q = enc.parity
            click.echo(
                f"           parity: min cosine {q.min_cosine:.6f}, mean {q.mean_cosine:.6f}, "
                f"max abs diff {q.max_abs_diff:.2e} ({q.samples} samples vs {q.reference})"
            )
    click.echo(f"heads      {', '.join(summary['heads']) or 'none'}")
    checked = "verified" if verify else "not verified"
    click.echo(f"written by edgeclip {m.edgeclip_version} on {m.created}; files {checked}")


# --- heads ------------------------------------------------------------------------------------------


@cli.group(cls=EdgeclipGroup)
def heads() -> None:
    """Manage precomputed label heads stored in a bundle.

    \b
    Example:
      edgeclip heads add mc2s0.edgeclip --name pets --labels cat,dog,hamster --templates openai
    """


@heads.command("add")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Head name (letters, digits, '_', '-', '.').")
@click.option("--labels", required=True, type=CommaList(), help="Comma-separated labels, or @file with one per line.")
@click.option("--templates", default="openai", show_default=True, help="openai (80), simple (7) or @file.")
@click.option("--force", is_flag=True, help="Replace a head of the same name.")
@_quiet_option
@_json_option
def heads_add(bundle: Path, name: str, labels: list[str], templates: str, force: bool, quiet: bool, as_json: bool):
    """Embed labels x templates with the bundle's text encoder and store them as a zero-shot head.

    \b
    Example:
      edgeclip heads add mc2s0.edgeclip --name pets --labels cat,dog,hamster --templates simple
    """
    from edgeclip.runtimes import build_zero_shot_head, load_bundle

    b = load_bundle(bundle)
    head = build_zero_shot_head(b, labels, _templates(templates), name, progress=_show_progress(quiet))
    path = b.save_head(head, force=force)
    if as_json:
        _emit_json({"path": str(path), "labels": list(head.labels), "templates": len(head.templates)})
    else:
        click.echo(f"wrote {path}: {len(head.labels)} labels x {len(head.templates)} templates")


def _templates(value: str) -> str | list[str]:
    if value.startswith("@"):
        return CommaList().convert(value, None, None)
    return value


@heads.command("list")
@click.argument("bundle", type=click.Path(path_type=Path))
@_json_option
def heads_list(bundle: Path, as_json: bool) -> None:
    """List the heads stored in a bundle.

    \b
    Example:
      edgeclip heads list mc2s0.edgeclip
    """
    from edgeclip.runtimes import load_bundle

    b = load_bundle(bundle)
    rows = []
    for name in b.head_names():
        h = b.load_head(name)
        rows.append({"name": name, "kind": h.kind, "labels": list(h.labels), "templates": len(h.templates)})
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        shown = ", ".join(r["labels"][:8]) + (" …" if len(r["labels"]) > 8 else "")
        click.echo(f"{r['name']:<20} {r['kind']:<10} {len(r['labels'])} labels ({shown}), {r['templates']} templates")
    if not rows:
        click.echo("no heads")


@heads.command("remove")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("name")
def heads_remove(bundle: Path, name: str) -> None:
    """Delete a head from a bundle.

    \b
    Example:
      edgeclip heads remove mc2s0.edgeclip pets
    """
    from edgeclip.runtimes import load_bundle

    path = load_bundle(bundle).remove_head(name)
    click.echo(f"removed {path}")


# --- classify ---------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--head", help="A head stored in the bundle (see `edgeclip heads list`).")
@click.option("--labels", type=CommaList(), help="Comma-separated labels (or @file), embedded on the fly.")
@click.option("--templates", default="openai", show_default=True, help="With --labels: openai, simple or @file.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Labels shown per image.")
@click.option("--skip-bad", is_flag=True, help="Report unreadable images and go on, instead of stopping.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@_runtime_options
@_quiet_option
@_json_option
def classify(
    bundle: Path,
    images: tuple[Path, ...],
    head: str | None,
    labels: list[str] | None,
    templates: str,
    top_k: int,
    skip_bad: bool,
    batch_size: int,
    providers: tuple[str, ...],
    threads: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Zero-shot classify images (files or folders) with a stored head or labels.

    \b
    Examples:
      edgeclip classify mc2s0.edgeclip photos/*.jpg --head pets
      edgeclip classify mc2s0.edgeclip photos/ --labels "cat,dog" --top-k 1 --json
    """
    from edgeclip.data.images import expand_image_paths
    from edgeclip.runtimes import ZeroShotClassifier, load_bundle

    if (head is None) == (labels is None):
        raise click.UsageError("give --head NAME or --labels a,b,c (one of them)")
    paths = expand_image_paths(images)
    b = load_bundle(bundle, providers=providers or None, threads=threads)
    clf = ZeroShotClassifier(b, labels=labels, templates=_templates(templates), head=head)
    predictions = clf.predict_many(
        paths, top_k=top_k, skip_bad=skip_bad, batch_size=batch_size, progress=_show_progress(quiet)
    )
    if as_json:
        _emit_json([p.to_dict() for p in predictions])
    else:
        width = max(len(p.source) for p in predictions)
        for p in predictions:
            if p.error:
                click.echo(f"{p.source:<{width}}  skipped: {p.error}")
            else:
                click.echo(f"{p.source:<{width}}  " + "  ".join(f"{label} {prob:.3f}" for label, prob in p.ranked))
    bad = sum(1 for p in predictions if p.error)
    if bad and not quiet:
        click.echo(f"{bad} of {len(predictions)} images could not be read and were skipped", err=True)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="edgeclip")


if __name__ == "__main__":
    main()
