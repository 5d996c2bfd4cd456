"""`edgeclip export` and `edgeclip targets`."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from tqdm import tqdm

# --- target options: the flags are generated from each target's options dataclass -------------------------------


class OptionKindType(click.ParamType):
    """Parses a flag's value with the option kind its targets declare, so a bad value fails at the flag."""

    def __init__(self, kind: Any, metavar: str | None) -> None:
        self.kind = kind
        self.name = metavar or kind.metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from edgeclip.export.target_options import BadValue

        try:
            return self.kind.parse(value)
        except BadValue as e:
            self.fail(f"{value!r}: {e}", param, ctx)


def target_option_params() -> list[click.Option]:
    """One click option per target-option flag of every registered target, merged where targets share a flag."""
    from edgeclip.export.target_options import Choice, Flag
    from edgeclip.export.targets import list_targets

    flags: dict[str, list[tuple[str, Any]]] = {}
    for spec in list_targets():
        for info in spec.options_type.infos():
            flags.setdefault(info.cli_flag, []).append((spec.name, info))
    params = []
    for flag, users in flags.items():
        infos = [info for _, info in users]
        keys = {info.key for info in infos}
        if len(keys) != 1:
            raise ValueError(f"target option flag {flag} stands for different keys: {', '.join(sorted(keys))}")
        helps: dict[str, list[str]] = {}
        for target, info in users:
            default = f" (default {info.kind.to_json(info.default)})" if info.default not in (None, False, ()) else ""
            helps.setdefault(info.help + default, []).append(target)
        text = "; ".join(f"{'/'.join(targets)}: {help}" for help, targets in helps.items())
        kinds = {info.kind for info in infos}
        first = infos[0]
        if all(isinstance(k, Flag) for k in kinds):
            params.append(click.Option([flag, first.key], is_flag=True, default=None, help=text))
            continue
        kind = kinds.pop() if len(kinds) == 1 else None  # targets that read one flag differently parse it themselves
        metavar = first.metavar or ("[" + "|".join(kind.choices) + "]" if isinstance(kind, Choice) else None)
        metavar = metavar or (kind or first.kind).metavar
        params.append(
            click.Option(
                [flag, first.key],
                type=OptionKindType(kind, metavar) if kind is not None else click.STRING,
                multiple=any(info.kind.multiple for info in infos),
                metavar=metavar,
                help=text,
            )
        )
    return params


class TargetOptionsCommand(click.Command):
    """A command whose target-option flags are generated on first use (loading the targets only then)."""

    _generated_for: tuple[str, ...] | None = None
    _generated: tuple[click.Parameter, ...] = ()

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        from edgeclip.export.targets import list_targets

        names = tuple(spec.name for spec in list_targets())
        if names != self._generated_for:  # first use, or a target registered since (a plugin, a test's toy)
            self.params = [p for p in self.params if p not in self._generated]
            self._generated, self._generated_for = tuple(target_option_params()), names
            at = next((i for i, p in enumerate(self.params) if p.name == "quiet"), len(self.params))
            self.params[at:at] = self._generated
        return super().get_params(ctx)


def target_options_from_flags(target: str, precision: str | None, flags: Mapping[str, Any]) -> Any:
    """The target's typed options from the generated flags the user gave; UsageError names a flag it does not take."""
    from edgeclip.export.targets import get_target

    exporter = get_target(target)
    given = {key: value for key, value in flags.items() if value is not None and value != ()}
    return exporter.parse_options(given, exporter.precision(precision))


PREPROCESS_KEYS = ("image_size", "mean", "std", "interpolation", "resize_mode")


def preprocess_overrides(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The preprocessing override flags, handed to the command as one `preprocess` dict (None: the model's)."""

    @functools.wraps(fn)
    def collect(*args: Any, **kwargs: Any) -> Any:
        kwargs["preprocess"] = {key: kwargs.pop(key) for key in PREPROCESS_KEYS}
        return fn(*args, **kwargs)

    for add in reversed(
        (
            click.option("--image-size", type=ImageSize(), help="Override the input size: 256 or HxW."),
            click.option("--mean", type=FloatTriple(), help="Override the normalization mean: R,G,B."),
            click.option("--std", type=FloatTriple(), help="Override the normalization std: R,G,B."),
            click.option(
                "--interpolation", type=click.Choice(["bicubic", "bilinear"]), help="Override the resize filter."
            ),
            click.option(
                "--resize-mode", type=click.Choice(["shortest", "longest", "squash"]), help="Override how images fit."
            ),
        )
    ):
        collect = add(collect)
    return collect


@cli.command(cls=TargetOptionsCommand)
@click.option("--model", "-m", required=True, help="open_clip architecture, e.g. MobileCLIP2-S0 or ViT-B-32.")
@click.option("--pretrained", "-p", help="Checkpoint file (.safetensors/.pt/.bin), pretrained tag or hf-hub: id.")
@click.option("--random-init", is_flag=True, help="Random weights on purpose (structure and speed work).")
@click.option("--target", "-t", default="onnx", show_default=True, help="Export target: see `edgeclip targets`.")
@click.option("--precision", help="Numeric precision the target supports (default: the target's, e.g. coreml fp16).")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle at --output.")
@preprocess_overrides
@click.option("--opset", type=click.IntRange(min=17), help="ONNX opset (default: the target's choice).")
@click.option(
    "--require-delegate",
    is_flag=True,
    help="Fail when an encoder's accelerated delegate takes less than --min-delegated of its ops, or when the "
    "runtime cannot tell (default: warn, naming the ops left outside).",
)
@click.option(
    "--min-delegated",
    type=click.FloatRange(0.0, 1.0),
    default=lambda: _default_min_delegated(),
    show_default="0.9",
    help="Share of each encoder's ops its delegate must take (see `edgeclip info --placement`).",
)
# The target options (--compress, --calibration, --max-batch, ...) follow, generated from the targets' declarations.
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
    preprocess: dict[str, Any],
    opset: int | None,
    require_delegate: bool,
    min_delegated: float,
    quiet: bool,
    as_json: bool,
    **target_flags: Any,
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
      edgeclip export -m MobileCLIP2-S0 --random-init --require-delegate --min-delegated 0.95 -o mc2s0.edgeclip
    """
    from edgeclip.export import export_bundle
    from edgeclip.runtimes.bundle import encoder_bytes

    # Parsed once here, by the target's own declaration; the library gets the typed object.
    options = target_options_from_flags(target, precision, target_flags)
    bar = _StepBar(enabled=show_progress(quiet), total=8)
    with bar:
        result = export_bundle(
            model,
            pretrained,
            output,
            target=target,
            precision=precision,
            random_init=random_init,
            preprocess=preprocess,
            opset=opset,
            target_options=options,
            force=force,
            require_delegate=require_delegate,
            min_delegated=min_delegated,
            on_step=bar.step,
        )
    if as_json:
        emit_json({"path": str(result.path), "timings": result.timings, "manifest": result.manifest.to_dict()})
        return
    m = result.manifest
    click.echo(f"wrote {result.path}  ({m.source.architecture}, {m.target} {m.precision})")
    for role, enc in m.encoders.items():
        size = encoder_bytes(result.path, m, role) / 1e6
        p = enc.parity
        parity = (
            f"parity vs PyTorch: min cosine {p.min_cosine:.6f}, max abs diff {p.max_abs_diff:.2e} over {p.samples} "
            "samples"
            if p
            else "parity not measured here"
        )
        click.echo(f"  {role:<5} {enc.file:<24} {size:8.1f} MB  {parity}")
        placed = m.target_info.get("placement", {}).get(role)
        if placed:
            from edgeclip.runtimes.placement import Placement

            click.echo(f"  {'':<5} placement: {Placement.from_dict(placed).summary()}")
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
        self._bar: tqdm[Any] | None = None

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
    from edgeclip.export.targets import list_targets

    specs = list_targets()
    if as_json:
        emit_json([s.to_dict() for s in specs])
        return
    for s in specs:
        needs = f"  needs {s.requires}" if s.requires else ""
        click.echo(f"{s.name:<10} precisions: {', '.join(s.precisions):<20} {s.description}{needs}")
        for info in s.options_type.infos():
            choices = getattr(info.kind, "choices", ())
            values = f" ({', '.join(choices)})" if choices else ""
            click.echo(f"{'':<10} {info.cli_flag:<20} {info.help}{values}")


def _default_min_delegated() -> float:
    """The coverage floor, read when the option is resolved: `edgeclip --help` imports no runtime."""
    from edgeclip.runtimes.placement import DEFAULT_MIN_DELEGATED

    return DEFAULT_MIN_DELEGATED
