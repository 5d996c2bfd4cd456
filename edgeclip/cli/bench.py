"""`edgeclip bench` (run), `edgeclip bench report` and `edgeclip bench compare`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeclip.cli import (
    CommaList,
    EdgeclipGroup,
    backend_options,
    cli,
    emit_json,
    json_option,
    quiet_option,
    runtime_options,
    show_progress,
    verify_option,
)

if TYPE_CHECKING:
    from edgeclip.bench.results import BenchResult


class IntList(click.ParamType):
    """`1,8,32` as a list of positive whole numbers."""

    name = "N,N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            numbers = [int(v) for v in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a list of whole numbers such as 1,8", param, ctx)
        if min(numbers) < 1:
            self.fail(f"{value!r}: every number must be at least 1", param, ctx)
        return numbers


class BenchGroup(EdgeclipGroup):
    """`bench report ...` and `bench compare ...` are subcommands; anything else is `bench run ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=BenchGroup)
def bench() -> None:
    """Benchmark bundles or a model's targets on this device; merge farm results; compare runs.

    `edgeclip bench BUNDLES...` or `edgeclip bench --model ...` is short for `edgeclip bench run ...`
    (use `bench run` explicitly for a bundle folder named "report" or "compare").

    \b
    Examples:
      edgeclip bench --model MobileCLIP2-S0 --random-init --targets onnx:fp32,torch
      edgeclip bench mc2s0.edgeclip other.edgeclip --batch 1,8 --runs 200 --json results/$(hostname).json
      edgeclip bench report results/*.json --html report.html --plot pareto.png
      edgeclip bench compare results/old.json results/new.json --fail-on median:10%
    """


class _Steps:
    """Step messages on a progress line (stderr); silent when not a TTY or --quiet."""

    def __init__(self, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(file=sys.stderr, leave=False, bar_format="{desc} [{elapsed}]")

    def step(self, message: str) -> None:
        if self._bar is not None:
            self._bar.set_description(message[:70])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def show_result(result: BenchResult, json_path: str | None, *, markdown: bool, quiet: bool) -> None:
    """Print a bench result as a table (or as JSON for `--json -`) and write the results file `--json` names."""
    from edgeclip.bench import format_result, save_results

    if json_path == "-":
        emit_json(result.to_dict())
        return
    click.echo(format_result(result, markdown=markdown))
    if json_path:
        path = save_results(result, json_path)
        if not quiet:
            click.echo(f"\nwrote {path}")


@bench.command("run")
@click.argument("bundles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "-m", help="open_clip architecture to export and measure, e.g. MobileCLIP2-S0.")
@click.option("--pretrained", "-p", help="With --model: checkpoint file or pretrained tag.")
@click.option("--random-init", is_flag=True, help="With --model: random weights on purpose (latency and parity work).")
@click.option(
    "--targets",
    type=CommaList(),
    help="With --model: TARGET[:PRECISION][+KEY[=VALUE]...] items from `edgeclip targets` (+ adds a target "
    "option, e.g. onnx:int8+dynamic), `torch` (PyTorch eager baseline) or `all` (default: all; with bundles: torch).",
)
@click.option("--batch", "batch_sizes", type=IntList(), default="1", show_default=True, help="Batch sizes, e.g. 1,8.")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=1), help="Timed runs per stage/batch.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0), help="Untimed runs first.")
@click.option("--dataset", type=click.Path(path_type=Path), help="Labelled folder <root>/<class>/<image> for top-1.")
@click.option(
    "--eval-images",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Shapes eval images when no --dataset is given.",
)
@click.option("--templates", default="simple", show_default=True, help="Prompt templates for top-1: simple or openai.")
@click.option("--reference", help="Row (or, with bundles, a bundle folder) parity is measured against.")
@click.option("--label", help="How reports name this run (default: '<host> · <threads> threads').")
@click.option("--device-name", help="Device name in the results (default: the host name).")
@click.option("--keep-bundles", type=click.Path(path_type=Path), help="With --model: keep exported bundles here.")
@click.option("--no-isolate", is_flag=True, help="Measure in this process (faster; peak memory then accumulates).")
@click.option("--json", "json_path", help="Write the results file here (the farm contract); '-' prints it.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@verify_option
@runtime_options
@backend_options
@quiet_option
def bench_run(
    bundles: tuple[Path, ...],
    model: str | None,
    pretrained: str | None,
    random_init: bool,
    targets: list[str] | None,
    batch_sizes: list[int],
    runs: int,
    warmup: int,
    dataset: Path | None,
    eval_images: int,
    templates: str,
    reference: str | None,
    label: str | None,
    device_name: str | None,
    keep_bundles: Path | None,
    no_isolate: bool,
    json_path: str | None,
    markdown: bool,
    no_verify: bool,
    providers: tuple[str, ...],
    threads: int | None,
    backend: str | None,
    precision_hint: str | None,
    quiet: bool,
) -> None:
    """Measure latency, memory, zero-shot top-1 and parity of each target/precision (or bundle) on this device.

    Give bundle folders, --model (exported to --targets, default all), or both (the model then adds its
    PyTorch eager baseline, `torch`, unless --targets asks for more). Each row runs in its own process:
    cold start (bundle load to first result), SingleStream latency of the image encoder, text encoder and
    end to end (RGB image to class probabilities), peak memory, top-1 on the shapes eval split (or
    --dataset) and cosine parity to the reference (PyTorch eager where measured). A target that cannot be
    exported is ❌, one that cannot run here ❎, and the rest is still measured.

    \b
    Examples:
      edgeclip bench --model MobileCLIP2-S0 --random-init --targets onnx:fp32,torch --runs 50
      edgeclip bench -m MobileCLIP2-S0 -p mc2s0.safetensors --targets onnx:fp32,onnx:int8+dynamic,torch --batch 1,8
      edgeclip bench -m MobileCLIP2-S0 -p mc2s0.safetensors --targets all,onnx:int8+calibration=calib/
      edgeclip bench mc2s0.edgeclip --threads 2 --json results/$(hostname).json
      edgeclip bench bundles/*.edgeclip --model MobileCLIP2-S0 -p mc2s0.safetensors   # + the eager baseline
    """
    from edgeclip.bench import run_bench

    steps = _Steps(show_progress(quiet))
    try:
        result = run_bench(
            model=model,
            pretrained=pretrained,
            random_init=random_init,
            targets=targets,
            bundles=bundles,
            batch_sizes=batch_sizes,
            runs=runs,
            warmup=warmup,
            threads=threads,
            providers=providers or None,
            backend=backend,
            precision_hint=precision_hint,
            dataset=dataset,
            eval_images=eval_images,
            templates=templates,
            reference=reference,
            label=label,
            device_name=device_name,
            bundle_dir=keep_bundles,
            isolate=not no_isolate,
            verify=not no_verify,
            on_step=steps.step,
        )
    finally:
        steps.close()
    show_result(result, json_path, markdown=markdown, quiet=quiet)


@bench.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path), help="Write the Markdown report here.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write a static HTML page (plot embedded).")
@click.option("--plot", type=click.Path(path_type=Path), help="Write the accuracy-latency Pareto plot (PNG).")
@click.option(
    "--stage",
    type=click.Choice(["image", "text", "end_to_end"]),
    default="image",
    show_default=True,
    help="Which latency the grid and the plot use.",
)
@click.option("--strict", is_flag=True, help="Stop at a file that is not a results file, instead of skipping it.")
@quiet_option
def bench_report(
    files: tuple[Path, ...],
    markdown_path: Path | None,
    html_path: Path | None,
    plot: Path | None,
    stage: str,
    strict: bool,
    quiet: bool,
) -> None:
    """Merge results files (or folders of them) from many devices into a device x model report.

    Prints the Markdown report unless --markdown/--html/--plot say where to write it.

    \b
    Examples:
      edgeclip bench report results/*.json
      edgeclip bench report results/ --html report.html --plot pareto.png --markdown report.md
    """
    from edgeclip.bench.report import load_report, to_markdown, write_report

    report = load_report(files, strict=strict)
    for path, why in report.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    if not (markdown_path or html_path or plot):
        click.echo(to_markdown(report, stage), nl=False)
        return
    written = write_report(report, markdown=markdown_path, html_path=html_path, plot=plot, stage=stage)
    if not quiet:
        for kind, path in written.items():
            click.echo(f"wrote {kind} {path}")
        click.echo(f"{len(report.runs)} runs, {len(report.models())} rows")


@bench.command("compare")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option(
    "--fail-on",
    multiple=True,
    help="STAT:N% or STAT:Nms (min, median, p90, p99, mean) or top1:N% "
    "(points); repeatable. Exit 1 when any is exceeded.",
)
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@json_option
@click.pass_context
def bench_compare(ctx: click.Context, old: Path, new: Path, fail_on: tuple[str, ...], markdown: bool, as_json: bool):
    """Show what changed between two results files; exit 1 on a regression beyond --fail-on (CI on a farm).

    A row that ran in OLD and does not run in NEW is always a regression.

    \b
    Examples:
      edgeclip bench compare results/old.json results/new.json
      edgeclip bench compare old.json new.json --fail-on median:10% --fail-on top1:1%
    """
    from edgeclip.bench import compare_results, format_comparison, load_results, parse_threshold

    thresholds = [parse_threshold(t) for t in fail_on]
    comparison = compare_results(load_results(old), load_results(new), thresholds)
    if as_json:
        emit_json(comparison.to_dict())
    else:
        click.echo(format_comparison(comparison, markdown=markdown))
    if comparison.regressions:
        ctx.exit(1)
