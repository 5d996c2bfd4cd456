"""ExecuTorch target: each encoder as a `.pte` program delegated to XNNPACK, the CPU kernels ExecuTorch runs on
Android and iOS (and here, so export-time parity runs the very file an app loads).

Each encoder goes `torch.export` → `to_edge_transform_and_lower(XnnpackPartitioner)` → `.pte`, after module rewrites
that let XNNPACK take LayerNorm and attention (edgeclip.precision.module_rewrites; docs/mobile.md). Shapes are
fixed, as ExecuTorch's dynamic batch is fragile: one method per requested batch size in ONE file per encoder
(`forward` for the smallest, `batch_<n>` for the others), so an app ships one file and XNNPACK's named data store
keeps identical weights once. int8 is PT2E quantization with the XNNPACK quantizer (per-channel symmetric weights):
static int8 activations calibrated on edgeclip's calibration set for the image encoder, and for the text encoder
dynamic ones by default (`--text-int8`, as the onnx target), then gated against PyTorch fp32.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import ExportError, RuntimeUnavailable, UsageError
from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.target_options import Flag, Float, Ints, TargetOptions, option, options_of
from edgeclip.export.targets import TargetSpec, register_target
from edgeclip.export.targets.onnx import calibration_option, text_int8_option
from edgeclip.runtimes.backends.executorch import DELEGATE, EXTRA_HINT, PLACEMENT_SUFFIX
from edgeclip.runtimes.manifest import TensorSpec

MAX_BATCH = 1024  # the same bound as coreml's --batch-sizes, so the two targets share one CLI flag
# Calibration rows per encoder (the first of the set's calibration part): the XNNPACK quantizer's histogram observers
# make each calibration run many times slower than a plain forward, so the export time is bounded here. Not yet
# measured against larger sets: the accuracy gate on held-out inputs says whether it was enough.
CALIBRATION_ROWS = 64
OUTPUT_NAME = "embeddings"
INPUT_NAMES = {"image": "pixels", "text": "token_ids"}
_DTYPES = {"torch.float32": "float32", "torch.int64": "int64", "torch.int32": "int32"}


@dataclass(frozen=True)
class ExecuTorchOptions(TargetOptions):
    """The target options of an ExecuTorch export."""

    batch_sizes: tuple[int, ...] | None = option(
        Ints(1, MAX_BATCH),
        help="fixed batch sizes, one method each in one .pte per encoder, e.g. 1,8 (default: 1)",
        metavar="LIST",
    )
    calibration: Path | None = calibration_option()
    max_cosine_drop: float | None = option(
        Float(0.0, 1.0),
        help="int8: fail when an encoder's mean cosine to fp32 on held-out inputs drops by more than this",
        precisions=("int8",),
    )
    text_int8: str = text_int8_option(
        "int8: how the text encoder is quantized (dynamic: activation scales chosen per run, as the onnx "
        "target's text; closer to fp32 than static on trained text towers, docs/mobile.md)"
    )
    no_rewrites: bool = option(
        Flag(),
        False,
        help="export the graphs as PyTorch gives them, without the LayerNorm/attention rewrites that raise "
        "XNNPACK delegation (for comparison: more delegate pieces, slower)",
    )

    def check(self, precision: str) -> ExecuTorchOptions:
        if precision == "int8" and self.calibration is None:
            raise UsageError(
                "--target executorch --precision int8 needs --calibration (a .npz from `edgeclip calibrate`, or a "
                "folder of images): XNNPACK int8 is static PT2E quantization"
            )
        return self

    @property
    def sizes(self) -> tuple[int, ...]:
        """The batch sizes to export, smallest first."""
        return self.batch_sizes or (1,)


SPEC = TargetSpec(
    name="executorch",
    description="ExecuTorch programs (.pte) delegated to XNNPACK, for Android and iOS apps",
    precisions=("fp32", "int8"),
    default_precision="fp32",
    file_suffix=".pte",
    dynamic_batch=False,
    requires="ExecuTorch 1.5 with torch 2.13: pip install 'edgeclip[executorch]'",
    extra="executorch",
    options_type=ExecuTorchOptions,
)


def executorch_unavailable() -> str | None:
    """Why ExecuTorch's exporter cannot run in this environment, or None when it can."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: its kernels were built for another torch
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def validate_options(options: ExportOptions) -> ExportOptions:
    """Stop before any model loads where ExecuTorch is missing, or a calibration .npz cannot be read."""
    opts = options_of(options, ExecuTorchOptions)
    reason = executorch_unavailable()
    if reason is not None:
        raise RuntimeUnavailable(f"the executorch target needs ExecuTorch: {EXTRA_HINT} (here: {reason})")
    if opts.calibration is not None and opts.calibration.suffix == ".npz":
        from edgeclip.calibration import load_calibration_set

        load_calibration_set(opts.calibration)  # a corrupt or foreign file fails here, before the model loads
    return replace(options, target_options=opts)


# --- export --------------------------------------------------------------------------------------------------------


def method_name(batch: int, sizes: tuple[int, ...]) -> str:
    """The .pte method of one batch size: `forward` for the smallest, `batch_<n>` for the others."""
    return "forward" if batch == min(sizes) else f"batch_{batch}"


def _example(example, batch: int):
    """`batch` rows for tracing: the example rows repeated (values do not matter for fixed shapes)."""
    reps = -(-batch // len(example))
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch].contiguous()


def _calibration_batches(feeds: list[dict[str, np.ndarray]], name: str, batch: int) -> Iterator[np.ndarray]:
    """The calibration rows cut into batches of exactly `batch` (the last one padded by repeating rows)."""
    rows = np.concatenate([f[name] for f in feeds])[:CALIBRATION_ROWS]
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        yield chunk


def _quantized(
    module, example, feeds: list[dict[str, np.ndarray]], name: str, keep_float: tuple[type, ...], dynamic: bool
):
    """PT2E int8 with the XNNPACK quantizer (static: calibrated on `feeds`; dynamic: linear layers with activations
    quantized at run time, observed once); the converted graph module."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    quantizer = XNNPACKQuantizer().set_global(config)
    for module_type in keep_float:  # normalization and softmax statistics stay float (module_rewrites)
        quantizer.set_module_type(module_type, None)
    prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
    with torch.no_grad():
        for i, chunk in enumerate(_calibration_batches(feeds, name, len(example))):
            prepared(torch.from_numpy(chunk).to(example.dtype))
            if dynamic and i == 0:
                break  # dynamic ranges are computed at run time: one pass only traces the observers
    return convert_pt2e(prepared)


def _program(module, example, role: str) -> Any:
    """torch.export of one encoder at a fixed shape; ExportError names the encoder and the first line of the cause."""
    import torch

    try:
        return torch.export.export(module, (example,))
    except Exception as e:  # torch.export raises many kinds (Unsupported, UserError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.export of the {role} encoder failed: {first}") from None


def _placement_record(graph_module) -> dict[str, Any]:
    """ExecuTorch's delegation summary of one lowered method, as the backend's placement() reads it back."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    fallback = {op: b.non_delegated for op, b in sorted(info.delegation_by_operator.items()) if b.non_delegated}
    # Graph plumbing (getitem, the delegate call itself) is not an op that ran outside the delegate.
    fallback.pop("getitem", None)
    delegated = int(info.num_delegated_nodes)
    total = delegated + sum(fallback.values())
    return {
        "delegate": DELEGATE,
        "total_ops": total,
        "delegated_ops": delegated,
        "pieces": int(info.num_delegated_subgraphs),
        "fallback": fallback,
        "note": "edge-dialect nodes at export (executorch.devtools.backend_debug.get_delegation_info), "
        "method 'forward'",
    }


@dataclass(frozen=True)
class _Lowered:
    """One encoder's .pte bytes, its placement record and its rewrite counts."""

    buffer: bytes
    placement: dict[str, Any]
    rewrites: dict[str, int]


def _lower(
    role: str, module, example, sizes: tuple[int, ...], rewrite_names: tuple[str, ...], quant, dynamic: bool = False
) -> _Lowered:
    """Rewrite, (quantize,) export one method per batch size, delegate to XNNPACK and serialize."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgeclip.precision.module_rewrites import apply_module_rewrites, keep_float_types

    rewritten, counts = apply_module_rewrites(module, rewrite_names)
    programs = {}
    for batch in sizes:
        ex = _example(example, batch)
        keep_float = keep_float_types(rewrite_names)
        graph = rewritten if quant is None else _quantized(rewritten, ex, quant, INPUT_NAMES[role], keep_float, dynamic)
        programs[method_name(batch, sizes)] = _program(graph, ex, role)
    try:
        edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
        placement = _placement_record(edge.exported_program("forward").graph_module)
        buffer = edge.to_executorch().buffer
    except Exception as e:  # lowering errors come from many layers (exir, the partitioner, serialization)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ExecuTorch lowering of the {role} encoder failed: {first}") from None
    return _Lowered(bytes(buffer), placement, counts)


def _gate(encoders: Encoders, out_dir: Path, files: dict[str, EncoderFile], inputs, max_drop: float | None):
    """The accuracy gate: the written int8 .pte files against the PyTorch fp32 encoders on held-out inputs."""
    import torch

    from edgeclip.metrics.parity import GateReport, cosine_stats, top1_predictions
    from edgeclip.runtimes.backends import RuntimeOptions
    from edgeclip.runtimes.backends.executorch import ExecuTorchBackend
    from edgeclip.runtimes.manifest import EncoderSpec

    def candidate(role: str, batch: np.ndarray) -> np.ndarray:
        file = files[role]
        spec = EncoderSpec(file.file, "", file.inputs, file.outputs)
        return ExecuTorchBackend(out_dir / file.file, spec, RuntimeOptions()).run({file.inputs[0].name: batch})[0]

    def reference(role: str, batch: np.ndarray) -> np.ndarray:
        module = encoders.image if role == "image" else encoders.text
        with torch.no_grad():
            return torch.cat([module(torch.from_numpy(batch[i : i + 16])) for i in range(0, len(batch), 16)]).numpy()

    ref_img, cand_img = reference("image", inputs.pixels), candidate("image", inputs.pixels)
    ref_txt, cand_txt = reference("text", inputs.texts), candidate("text", inputs.texts)
    ref_lab, cand_lab = reference("text", inputs.label_tokens), candidate("text", inputs.label_tokens)
    top_ref = top1_predictions(ref_img, ref_lab)
    report = GateReport(
        reference="pytorch fp32 (reparameterized, not rewritten)",
        image=cosine_stats(ref_img, cand_img),
        text=cosine_stats(ref_txt, cand_txt),
        top1_agreement=float((top_ref == top1_predictions(cand_img, cand_lab)).mean()),
        labels=len(inputs.labels),
        max_cosine_drop=max_drop,
        reference_labels=len(set(top_ref.tolist())),
    )
    if not report.passed:
        role, stats = max((("image", report.image), ("text", report.text)), key=lambda r: 1.0 - r[1].mean)
        raise ExportError(
            f"accuracy gate failed: {role} encoder mean cosine to fp32 is {stats.mean:.4f} (drop {1 - stats.mean:.4f} "
            f"> --max-cosine-drop {max_drop}) over {stats.samples} held-out inputs; top-1 agreement "
            f"{report.top1_agreement:.3f}. Try a larger or more varied --calibration set"
        )
    return report


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary name, then rename (the bundle folder is itself a staging folder)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    tmp.replace(path)


@register_target(SPEC, validate=validate_options)
def export(encoders: Encoders, out_dir: Path, options: ExportOptions) -> EncoderFiles:
    """Write image_encoder.pte and text_encoder.pte (+ their placement records) into `out_dir`."""
    import executorch
    import torch

    from edgeclip.precision.module_rewrites import XNNPACK_REWRITES

    opts = options_of(options, ExecuTorchOptions)
    sizes = opts.sizes
    rewrite_names = () if opts.no_rewrites else XNNPACK_REWRITES
    calib = inputs = None
    if options.precision == "int8":
        from edgeclip.calibration import resolve_calibration
        from edgeclip.precision.gate import gate_inputs
        from edgeclip.runtimes.tokenizer import Tokenizer

        if opts.calibration is None:  # ExecuTorchOptions.check refuses int8 without it
            raise UsageError("--target executorch --precision int8 needs --calibration")
        calib = resolve_calibration(opts.calibration, encoders.preprocess_spec())
        tokenizer = Tokenizer.from_file(out_dir / "tokenizer.json", encoders.tokenizer_spec())
        inputs = gate_inputs(calib, encoders.preprocess_spec(), tokenizer)
    files: dict[str, EncoderFile] = {}
    placements, rewrites = {}, {}
    for role, module, example in (
        ("image", encoders.image, encoders.image_example),
        ("text", encoders.text, encoders.text_example),
    ):
        quant = inputs.feeds_for(role) if inputs is not None else None
        dynamic = role == "text" and opts.text_int8 == "dynamic"
        lowered = _lower(role, module, example, sizes, rewrite_names, quant, dynamic)
        name = f"{role}_encoder.pte"
        _write(out_dir / name, lowered.buffer)
        _write(out_dir / f"{role}_encoder{PLACEMENT_SUFFIX}", json.dumps(lowered.placement, indent=2).encode())
        placements[role], rewrites[role] = lowered.placement, lowered.rewrites
        with torch.no_grad():
            embed_dim = int(module(example[:1]).shape[-1])
        batch_axis: int | str = sizes[0] if len(sizes) == 1 else "batch"
        files[role] = EncoderFile(
            file=name,
            inputs=(TensorSpec(INPUT_NAMES[role], (batch_axis, *example.shape[1:]), _DTYPES[str(example.dtype)]),),
            outputs=(TensorSpec(OUTPUT_NAME, (batch_axis, embed_dim), "float32"),),
        )
    calibration = None
    if calib is not None and inputs is not None:
        report = _gate(encoders, out_dir, files, inputs, opts.max_cosine_drop)
        calibration = {
            "precision": "int8",
            "mode": "static",
            "text_int8": opts.text_int8,
            "method": "PT2E XNNPACKQuantizer (symmetric, per-channel weights; int8 activations, the text encoder's "
            f"{'scaled per run' if opts.text_int8 == 'dynamic' else 'calibrated'})",
            "keep_float": [t.__name__ for t in _keep_float(rewrite_names)],
            "set": calib.describe(),
            "held_out_images": len(inputs.pixels),
            "gate": report.to_dict(),
        }
    return EncoderFiles(
        image=files["image"],
        text=files["text"],
        calibration=calibration,
        target_info={
            "format": "pte",
            "delegate": DELEGATE,
            "executorch_version": getattr(executorch, "__version__", None) or _version("executorch"),
            "methods": {method_name(b, sizes): b for b in sizes},
            "module_rewrites": rewrites,
            "placement": {role: {k: v for k, v in p.items() if k != "note"} for role, p in placements.items()},
        },
    )


def _keep_float(names: tuple[str, ...]) -> tuple[type, ...]:
    from edgeclip.precision.module_rewrites import keep_float_types

    return keep_float_types(names)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
