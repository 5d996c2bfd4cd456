"""TensorRT target: engines built from the ONNX export with TensorRT's Python API, on the NVIDIA device itself.

The ONNX target is the declared prerequisite: its fp32 graphs are made TensorRT-ready here (fp16: converted to a
float16 graph, overflow-prone ops kept float32; int8: a symmetric Q/DQ graph, see `precision.qdq`) and checked in
ONNX Runtime against fp32. The network is strongly typed (the graph carries the precision: required for Q/DQ and
fp16 from TensorRT 10.12, the only mode in 11), with one optimization profile on the batch axis
(1 / opt / max), a workspace limit, and a timing cache kept between builds so rebuilds are fast.

Engines are device-specific, so building needs the NVIDIA GPU that will run them. Elsewhere the target stops at
once, before the model loads; ``onnx_only`` (``--onnx-only``) writes the TensorRT-ready ONNX graphs, checked, as a
bundle whose manifest carries the ``trtexec`` line that builds each engine on the device.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import ExportError, RuntimeUnavailable, UsageError
from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.target_options import Flag, Int, OutputFile, TargetOptions, option, options_of
from edgeclip.export.target_options import parse_options as parse_target_options
from edgeclip.export.targets import TargetSpec, register_target
from edgeclip.export.targets.onnx import calibration_method_option, calibration_option
from edgeclip.metrics.parity import parity_shortfall
from edgeclip.runtimes.backends.tensorrt import tensorrt_unavailable
from edgeclip.runtimes.manifest import EncoderSpec, TensorRTRecord, TensorSpec

DEFAULT_MAX_BATCH = 32
DEFAULT_WORKSPACE_MIB = 2048
MAX_BATCH_LIMIT = 4096
ROLES = ("image", "text")

GPU_BUILD = ("NVIDIA GPU (engine build)",)


@dataclass(frozen=True)
class TensorRTOptions(TargetOptions):
    """The target options of a TensorRT export: the batch profile, the builder's limits, int8 calibration."""

    max_batch: int = option(Int(1, MAX_BATCH_LIMIT), DEFAULT_MAX_BATCH, help="largest batch the engines take")
    opt_batch: int | None = option(
        Int(1, MAX_BATCH_LIMIT), help="batch the kernels are tuned for (default: max_batch / 2)"
    )
    workspace: int = option(
        Int(16, 1 << 20),
        DEFAULT_WORKSPACE_MIB,
        help="builder workspace limit in MiB",
        platforms=GPU_BUILD,
        metavar="MIB",
    )
    calibration: Path | None = calibration_option()
    calibration_method: str = calibration_method_option()
    onnx_only: bool = option(
        Flag(),
        False,
        help="write and check the TensorRT-ready ONNX graphs (int8: symmetric Q/DQ) without building engines, "
        "e.g. on a machine without an NVIDIA GPU",
    )
    timing_cache: Path | None = option(
        OutputFile("a timing cache file"),
        help="timing cache file to reuse and update (default: one per GPU under ~/.cache/edgeclip/tensorrt)",
        platforms=GPU_BUILD,
    )

    def tuned_batch(self) -> int:
        """The batch the kernels are tuned for: opt_batch, or max_batch / 2 when not given (as `check` fills it)."""
        return self.opt_batch if self.opt_batch is not None else max(1, self.max_batch // 2)

    def check(self, precision: str) -> TensorRTOptions:
        opt_batch = self.tuned_batch()
        if opt_batch > self.max_batch:
            raise UsageError(
                f"tensorrt opt_batch {opt_batch} is larger than max_batch {self.max_batch}: "
                f"expected 1 to {self.max_batch}"
            )
        if precision == "int8" and self.calibration is None:
            raise UsageError(
                "--target tensorrt --precision int8 needs --calibration (a .npz from `edgeclip calibrate`, "
                "or a folder of images): TensorRT int8 is a calibrated Q/DQ graph"
            )
        return replace(self, opt_batch=opt_batch)


SPEC = TargetSpec(
    name="tensorrt",
    description="TensorRT engines (.engine) for NVIDIA GPUs and Jetson, built on the device that runs them",
    precisions=("fp16", "int8"),
    file_suffix=".engine",
    dynamic_batch=True,
    requires="an NVIDIA GPU with TensorRT 10+ to build and run engines (--onnx-only prepares the graphs anywhere)",
    extra="tensorrt",
    platforms=("Linux x86_64 + NVIDIA GPU", "Jetson (JetPack 6+)", "Windows + NVIDIA GPU"),
    options_type=TensorRTOptions,
)


def parse_options(precision: str, options: dict[str, Any]) -> TensorRTOptions:
    """The TensorRT options from strings or values by key, or a UsageError naming the bad value."""
    return parse_target_options(TensorRTOptions, SPEC.name, options, precision)


def validate_options(options: ExportOptions) -> ExportOptions:
    """Stop at once where engines cannot be built (unless only the ONNX stage is asked)."""
    opts = options_of(options, TensorRTOptions)
    if not opts.onnx_only:
        reason = tensorrt_unavailable()
        if reason is not None:
            raise RuntimeUnavailable(
                f"the tensorrt target builds engines on the NVIDIA GPU that runs them, and here {reason}: pass "
                "--onnx-only to write the checked TensorRT-ready ONNX graphs here and build the engines on the device"
            )
    return replace(options, target_options=opts)


# --- the ONNX stage (runs anywhere) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadyGraph:
    """One TensorRT-ready ONNX graph, its fp32 source, its input and output, and what its check measured."""

    role: str
    path: Path
    fp32: Path
    input: TensorSpec
    output: TensorSpec
    check: dict[str, Any]


def prepare_onnx(
    fp32: EncoderFiles,
    fp32_dir: Path,
    ready_dir: Path,
    precision: str,
    opts: TensorRTOptions,
    calib,
    spec,
    tokenizer,
) -> tuple[dict[str, ReadyGraph], dict[str, np.ndarray]]:
    """Write the fp16 or int8 Q/DQ graphs TensorRT builds from, each checked in ONNX Runtime against fp32.

    `calib` is the resolved CalibrationSet (int8) or None. Returns the graphs by role and the held-out inputs
    (never used for calibration) they were compared on.
    """
    from edgeclip.metrics.parity import parity_report
    from edgeclip.precision.fp16 import FP16_KEEP_FLOAT_RECORD, convert_fp16
    from edgeclip.precision.gate import gate_inputs, run_onnx_cpu
    from edgeclip.precision.qdq import check_tensorrt_qdq, quantize_for_tensorrt

    held = gate_inputs(calib, spec, tokenizer)
    samples = {"image": held.pixels, "text": held.texts}
    calibration = {"image": held.image_feeds, "text": held.text_feeds}
    ready_dir.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for role, file in (("image", fp32.image), ("text", fp32.text)):
        src, dst = fp32_dir / file.file, ready_dir / file.file
        if precision == "int8":
            quantized = quantize_for_tensorrt(src, dst, calibration[role], method=opts.calibration_method, role=role)
            check: dict[str, Any] = {"quantized_nodes": len(quantized), **check_tensorrt_qdq(dst).to_dict()}
        else:
            convert_fp16(src, dst)
            check = {"fp16_keep_float": FP16_KEEP_FLOAT_RECORD}
        feed = {file.inputs[0].name: samples[role]}
        report = parity_report(run_onnx_cpu(src, feed), run_onnx_cpu(dst, feed), "onnxruntime cpu, fp32 onnx export")
        missed = parity_shortfall(report.min_cosine, report.mean_cosine, precision)
        if missed:
            raise ExportError(
                f"the TensorRT-ready {precision} {role} graph drifts from fp32 in ONNX Runtime: "
                f"{missed} over {report.samples} held-out inputs"
            )
        check["vs_fp32_onnxruntime"] = report.to_dict()
        graphs[role] = ReadyGraph(role, dst, src, file.inputs[0], file.outputs[0], check)
    return graphs, {graphs[r].input.name: samples[r] for r in ROLES}


def _dims(spec: TensorSpec, batch: int) -> str:
    return "x".join(str(d) for d in (batch, *spec.shape[1:]))


def trtexec_command(graph: ReadyGraph, engine: str, opts: TensorRTOptions) -> str:
    """The trtexec line that builds the same engine from an --onnx-only bundle's graph, on the device."""
    name = graph.input.name
    return (
        f"trtexec --onnx={graph.path.name} --saveEngine={engine} --stronglyTyped "
        f"--minShapes={name}:{_dims(graph.input, 1)} --optShapes={name}:{_dims(graph.input, opts.tuned_batch())} "
        f"--maxShapes={name}:{_dims(graph.input, opts.max_batch)} --memPoolSize=workspace:{opts.workspace}M "
        "--timingCacheFile=edgeclip-tensorrt.timing"
    )


# --- the engine stage (NVIDIA GPU only) ------------------------------------------------------------------------------


def default_timing_cache(facts: dict[str, str]) -> Path:
    """Where the timing cache lives: one file per TensorRT version and GPU, under the user's cache folder."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeclip" / "tensorrt"
    gpu = "".join(c if c.isalnum() else "-" for c in facts["gpu_name"]).strip("-")
    return root / f"trt{facts['tensorrt_version']}-{gpu}-sm{facts['compute_capability'].replace('.', '')}.timing"


def build_engine(graph: ReadyGraph, engine_path: Path, opts: TensorRTOptions, cache_path: Path) -> None:
    """Build one strongly typed engine from a TensorRT-ready graph, reading and updating the timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        raise RuntimeUnavailable(
            f"TensorRT {trt.__version__} has no strongly typed networks: the tensorrt target needs TensorRT 10 or later"
        )
    network = builder.create_network(1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph.path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0].strip().splitlines()[0] if errors else "no error reported"
        raise ExportError(f"TensorRT {trt.__version__} cannot parse the {graph.role} encoder graph: {first}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace << 20)
    rest = tuple(int(d) for d in graph.input.shape[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(graph.input.name, (1, *rest), (opts.tuned_batch(), *rest), (opts.max_batch, *rest))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)  # False: a cache from another device is refused
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(
            f"TensorRT {trt.__version__} could not build the {graph.role} encoder engine "
            f"(max batch {opts.max_batch}, workspace {opts.workspace} MiB): see its log above"
        )
    engine_path.write_bytes(memoryview(plan))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
    tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    tmp.replace(cache_path)  # another build reading the cache sees the old file or the new one, never half


def engine_parity(graph: ReadyGraph, engine_path: Path, inputs: np.ndarray, reference: str):
    """The engine's embeddings against ONNX Runtime fp32 (CPU) on the held-out inputs: a ParityReport."""
    from edgeclip.metrics.parity import parity_report
    from edgeclip.precision.gate import run_onnx_cpu
    from edgeclip.runtimes.backends import RuntimeOptions
    from edgeclip.runtimes.backends.tensorrt import TensorRTBackend

    spec = EncoderSpec(engine_path.name, "", (graph.input,), (graph.output,))
    engine = TensorRTBackend(engine_path, spec, RuntimeOptions())
    expected = run_onnx_cpu(graph.fp32, {graph.input.name: inputs})
    return parity_report(expected, engine.run({graph.input.name: inputs})[0], reference)


# --- the target ------------------------------------------------------------------------------------------------------


@register_target(SPEC, validate=validate_options)
def export(encoders: Encoders, out_dir: Path, options: ExportOptions) -> EncoderFiles:
    """Write image_encoder.engine and text_encoder.engine (or, with onnx_only, the TensorRT-ready .onnx graphs)."""
    from edgeclip.calibration import resolve_calibration
    from edgeclip.export.targets import onnx as onnx_target
    from edgeclip.runtimes.tokenizer import Tokenizer

    opts = options_of(options, TensorRTOptions)
    precision = options.precision
    # Before the fp32 export: a calibration set made for other preprocessing fails here, fast.
    calib = None
    if precision == "int8":
        if opts.calibration is None:  # TensorRTOptions.check refuses int8 without it
            raise UsageError("--target tensorrt --precision int8 needs --calibration")
        calib = resolve_calibration(opts.calibration, encoders.preprocess_spec())
    tokenizer = Tokenizer.from_file(out_dir / "tokenizer.json", encoders.tokenizer_spec())
    files: dict[str, EncoderFile] = {}
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        fp32_dir = Path(tmp) / "fp32"
        fp32 = onnx_target.export(encoders, fp32_dir, ExportOptions("onnx", "fp32", options.opset))
        graphs, held_out = prepare_onnx(
            fp32, fp32_dir, Path(tmp) / "ready", precision, opts, calib, encoders.preprocess, tokenizer
        )
        info: dict[str, Any] = {
            "onnx_stage": {role: g.check for role, g in graphs.items()},
            "opset": fp32.target_info.get("opset"),
            "batch_profile": {"min": 1, "opt": opts.tuned_batch(), "max": opts.max_batch},
        }
        if opts.onnx_only:
            for role, g in graphs.items():
                shutil.copyfile(g.path, out_dir / g.path.name)
                files[role] = EncoderFile(g.path.name, (g.input,), (g.output,))
            info["stage"] = "onnx (build the engines on the NVIDIA device)"
            info["trtexec"] = {role: trtexec_command(g, f"{role}_encoder.engine", opts) for role, g in graphs.items()}
        else:
            info.update(_build(graphs, held_out, out_dir, precision, opts, files))
    calibration: dict[str, object] | None = (
        None
        if calib is None
        else {
            "method": opts.calibration_method,
            "format": "QDQ (symmetric int8 activations and per-channel weights)",
            "recipe": "tensorrt (edgeclip.precision.recipes)",
            "set": calib.describe(),
        }
    )
    return EncoderFiles(image=files["image"], text=files["text"], target_info=info, calibration=calibration)


def _build(
    graphs: dict[str, ReadyGraph],
    held_out: dict[str, np.ndarray],
    out_dir: Path,
    precision: str,
    opts: TensorRTOptions,
    files: dict[str, EncoderFile],
) -> dict[str, Any]:
    """Build both engines into `out_dir`, measure them against ONNX Runtime fp32, and return the manifest facts."""
    from edgeclip.runtimes.backends.tensorrt import device_facts

    facts = device_facts()
    cache = opts.timing_cache or default_timing_cache(facts)
    parity = {}
    for role, g in graphs.items():
        engine = out_dir / f"{role}_encoder.engine"
        build_engine(g, engine, opts, cache)
        report = engine_parity(g, engine, held_out[g.input.name], "onnxruntime fp32 (cpu), same inputs")
        missed = parity_shortfall(report.min_cosine, report.mean_cosine, precision)
        if missed:
            raise ExportError(
                f"{role} engine parity failed: {missed} (to ONNX Runtime fp32) over {report.samples} inputs "
                f"({precision})"
            )
        parity[role] = report.to_dict()
        files[role] = EncoderFile(engine.name, (g.input,), (g.output,))
    record = TensorRTRecord(
        facts["tensorrt_version"],
        facts["gpu_name"],
        facts["compute_capability"],
        (1, opts.tuned_batch(), opts.max_batch),
        opts.workspace,
    )
    return {
        "tensorrt": record.to_dict(),
        "stage": "engine",
        "parity_vs_onnxruntime_fp32": parity,
        "timing_cache": cache.name,
    }
