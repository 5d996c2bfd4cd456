"""`edgeclip export` and `edgeclip targets`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgeclip.cli import (
    CommaList,
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
@click.option("--precision", help="Numeric precision the target supports (default: the target's, e.g. coreml fp16).")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle at --output.")
@click.option("--image-size", type=ImageSize(), help="Override the input size: 256 or HxW.")
@click.option("--mean", type=FloatTriple(), help="Override the normalization mean: R,G,B.")
@click.option("--std", type=FloatTriple(), help="Override the normalization std: R,G,B.")
@click.option("--interpolation", type=click.Choice(["bicubic", "bilinear"]), help="Override the resize filter.")
@click.option("--resize-mode", type=click.Choice(["shortest", "longest", "squash"]), help="Override how images fit.")
@click.option("--opset", type=click.IntRange(min=17), help="ONNX opset (default: the target's choice).")
# Target options: each target says which it takes and their values (`edgeclip targets`) and checks them.
@click.option("--compress", help="Weight compression, e.g. coreml int8 or palettize4 (see `edgeclip targets`).")
@click.option("--image-input", help="coreml: tensor (float pixels, default) or pixels (RGB image, normalized inside).")
@click.option("--deployment-target", help="coreml: the minimum OS the packages need (default iOS17).")
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    multiple=True,
    help="A .npz from `edgeclip calibrate` (one set for every target) or a folder of images: onnx/tensorrt "
    "int8, coreml w8a8 (which also takes image files).",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    help="onnx/tensorrt int8: how activation ranges are calibrated (default minmax; percentile clips "
    "outliers; entropy minimizes KL divergence and is the slowest).",
)
@click.option(
    "--auto-exclude",
    is_flag=True,
    default=None,
    help="onnx int8: keep the most sensitive nodes in float until the accuracy gate passes.",
)
@click.option("--dynamic", is_flag=True, default=None, help="onnx int8: dynamic int8 (MatMul/Gemm), no calibration.")
@click.option(
    "--text-int8",
    type=click.Choice(["dynamic", "static"]),
    help="onnx int8 with --calibration: how the "
    "text encoder is quantized (default dynamic: faster and closer to fp32 on MobileCLIP2-S0).",
)
@click.option(
    "--max-cosine-drop",
    type=click.FloatRange(0, 1),
    help="Fail the export when an encoder's mean cosine "
    "to fp32 on held-out inputs drops by more than this (onnx fp16/int8).",
)
@click.option("--batch-sizes", type=CommaList(), help="coreml: enumerated batch sizes, e.g. 1,8,32 (default: 1-64).")
@click.option(
    "--max-batch", type=click.IntRange(1, 4096), help="tensorrt: largest batch the engines take (default 32)."
)
@click.option(
    "--opt-batch",
    type=click.IntRange(1, 4096),
    help="tensorrt: batch the kernels are tuned for (default max-batch / 2).",
)
@click.option(
    "--workspace",
    type=click.IntRange(16),
    metavar="MIB",
    help="tensorrt: builder workspace limit in MiB (default 2048).",
)
@click.option(
    "--onnx-only",
    is_flag=True,
    default=None,
    help="tensorrt: write and check the TensorRT-ready ONNX "
    "graphs (int8: symmetric Q/DQ) without building engines, e.g. on a machine without an NVIDIA GPU.",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path),
    help="tensorrt: timing cache file to reuse and update (default: one per GPU under ~/.cache/edgeclip/tensorrt).",
)
@quiet_option
@json_option
def export(
    model: str,
    pretrained: str | None,
    random_init: bool,
    target: str,
    precision: str | None,
    output: Path,
    force: bool,
    image_size: tuple[int, int] | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    interpolation: str | None,
    resize_mode: str | None,
    opset: int | None,
    compress: str | None,
    image_input: str | None,
    deployment_target: str | None,
    calibration: tuple[Path, ...],
    calibration_method: str | None,
    auto_exclude: bool | None,
    dynamic: bool | None,
    text_int8: str | None,
    max_cosine_drop: float | None,
    batch_sizes: list[str] | None,
    max_batch: int | None,
    opt_batch: int | None,
    workspace: int | None,
    onnx_only: bool | None,
    timing_cache: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Export a CLIP checkpoint to a bundle: encoders, manifest, tokenizer and a parity report.

    \b
    Examples:
      edgeclip export --model MobileCLIP2-S0 --pretrained ./mobileclip2_s0.safetensors --output mc2s0.edgeclip
      edgeclip export --model MobileCLIP2-S0 --random-init --output demo.edgeclip --force
      edgeclip export -m MobileCLIP2-S0 --random-init -t coreml --compress palettize4 -o mc2s0-coreml.edgeclip
      edgeclip export -m MobileCLIP2-S0 --random-init -t coreml --image-input pixels -o mc2s0-pixels.edgeclip
      edgeclip export -m MobileCLIP2-S0 -p ckpt.safetensors --precision int8 --calibration calib.npz -o int8.edgeclip
      edgeclip export -m MobileCLIP2-S0 -p ckpt.safetensors --precision fp16 --max-cosine-drop 0.001 -o fp16.edgeclip
      edgeclip export -m MobileCLIP2-S0 -p ckpt.safetensors -t tensorrt --precision fp16 --max-batch 32 -o trt.edgeclip
      edgeclip export -m MobileCLIP2-S0 -p ckpt.safetensors -t tensorrt --precision int8 --calibration calib.npz \
        --onnx-only -o trt-ready.edgeclip
    """
    from edgeclip.export import export_bundle
    from edgeclip.runtimes.bundle import size_path

    overrides = {
        "image_size": image_size,
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
        "resize_mode": resize_mode,
    }
    # Only the target options the user gave: the target refuses options it does not take.
    given = {
        "compress": compress,
        "image_input": image_input,
        "deployment_target": deployment_target,
        "calibration": list(calibration) or None,
        "batch_sizes": batch_sizes,
        "calibration_method": calibration_method,
        "auto_exclude": auto_exclude,
        "dynamic": dynamic,
        "text_int8": text_int8,
        "max_cosine_drop": max_cosine_drop,
        "max_batch": max_batch,
        "opt_batch": opt_batch,
        "workspace": workspace,
        "onnx_only": onnx_only,
        "timing_cache": timing_cache,
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
            target_options={k: v for k, v in given.items() if v is not None},
            force=force,
            on_step=bar.step,
        )
    if as_json:
        emit_json({"path": str(result.path), "timings": result.timings, "manifest": result.manifest.to_dict()})
        return
    m = result.manifest
    click.echo(f"wrote {result.path}  ({m.source.architecture}, {m.target} {m.precision})")
    for role, enc in m.encoders.items():
        size = size_path(result.path / enc.file) / 1e6
        p = enc.parity
        parity = (
            f"parity vs PyTorch: min cosine {p.min_cosine:.6f}, max abs diff {p.max_abs_diff:.2e} over {p.samples} "
            "samples"
            if p
            else "parity not measured here"
        )
        click.echo(f"  {role:<5} {enc.file:<24} {size:8.1f} MB  {parity}")
    gate = (m.calibration or {}).get("gate")
    if gate:
        click.echo(
            f"  accuracy gate vs fp32 ({gate['image']['samples']} held-out images): image mean cosine "
            f"{gate['image']['mean_cosine']:.4f} (p1 {gate['image']['p1_cosine']:.4f}), text mean cosine "
            f"{gate['text']['mean_cosine']:.4f}, zero-shot top-1 agreement {gate['top1_agreement']:.3f}"
            + (
                " (fp32 gives every image the same label: agreement says little)"
                if gate.get("reference_labels") == 1
                else ""
            )
        )
    if "parity_skipped" in m.target_info:
        click.echo(f"  note: {m.target_info['parity_skipped']}")
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
        for label, values in (
            ("compress", s.compressions),
            ("image input", s.image_inputs),
            ("deployment", s.deployment_targets),
        ):
            if values:
                click.echo(f"{'':<10} {label + ':':<12} {', '.join(values)}")
