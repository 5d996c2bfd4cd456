"""The ONNX target's fp16 and int8 step: calibration in, lower-precision encoders out, accuracy gate recorded.

Called by `edgeclip.export.onnx` after it has written the fp32 encoders; the fp32 files are the gate's reference.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.calibration import (
    CalibrationSet,
    build_calibration_set,
    default_text_strings,
    feeds,
    load_calibration_set,
    split_held_out,
)
from edgeclip.calibration.text import DEFAULT_LABELS
from edgeclip.errors import ExportError, UsageError
from edgeclip.export.accuracy_gate import GATE_PROMPT, GateReport, measure_gate
from edgeclip.export.quantize import (
    RECIPES,
    convert_fp16,
    quantize_dynamic_int8,
    quantize_static_int8,
    quantized_nodes,
)
from edgeclip.runtimes.preprocess import PreprocessSpec

# Static int8 quantizes the image encoder from the calibration set; the text encoder is quantized dynamically
# unless asked: on MobileCLIP2-S0 (2 threads, AVX-512 VNNI) dynamic text int8 ran 14.7 ms against static 23.2 ms
# (fp32 51.9) and stayed closer to fp32 on a shapes-trained model (mean cosine 0.99998 vs 0.99995);
# benchmarks/test_quantization.py and benchmarks/quantization_accuracy.py measure both.
AUTO_EXCLUDE_DROP = 0.01  # the gate --auto-exclude works towards when --max-cosine-drop is not given
AUTO_EXCLUDE_STEP = 0.1  # fraction of the quantized nodes kept in float per round, worst first
SENSITIVITY_INPUTS = 8  # calibration inputs the per-node sensitivity pass runs on


@dataclass(frozen=True)
class PrecisionRequest:
    """The validated int8/fp16 request: a precision and the ONNX target's options that shape it."""

    precision: str
    calibration: object | None  # a CalibrationSet, or a path to a .npz, a folder or a captions file
    method: str
    auto_exclude: bool
    dynamic: bool
    max_cosine_drop: float | None
    text_int8: str = "dynamic"  # static int8 only: how the text encoder is quantized ("dynamic" or "static")

    @classmethod
    def of(cls, precision: str, options: Any) -> PrecisionRequest:
        """The request from typed target options (OnnxOptions, or any with `calibration`/`calibration_method`)."""
        return cls(
            precision,
            options.calibration,
            options.calibration_method,
            getattr(options, "auto_exclude", False),
            getattr(options, "dynamic", False),
            getattr(options, "max_cosine_drop", None),
            getattr(options, "text_int8", "dynamic"),
        )

    def static_roles(self) -> tuple[str, ...]:
        """The encoders quantized statically from the calibration set."""
        return ("image", "text") if self.text_int8 == "static" else ("image",)


def parse_options(precision: str, options: Mapping[str, object]) -> PrecisionRequest:
    """The ONNX target's options checked for `precision` before any work; UsageError names the bad one."""
    from edgeclip.export.targets import get_target

    return PrecisionRequest.of(precision, get_target("onnx").parse_options(options, precision))


def resolve_calibration(source: object, spec: PreprocessSpec) -> CalibrationSet:
    """A CalibrationSet for `spec`: given, read from a .npz (checked against `spec`), or built from a folder."""
    if isinstance(source, CalibrationSet):
        source.check(spec)
        return source
    path = Path(str(source))
    if path.suffix == ".npz":
        return load_calibration_set(path, expect=spec)
    calib, skipped = build_calibration_set(path, spec)
    if skipped:
        import warnings

        warnings.warn(f"calibration skipped {len(skipped)} unreadable images: {'; '.join(skipped)}", stacklevel=2)
    return calib


def _tokens(tokenizer, texts: Sequence[str]) -> np.ndarray:
    return np.asarray(tokenizer.encode(list(texts)), dtype=np.int64)


@dataclass(frozen=True)
class GateInputs:
    """Held-out images, texts and label prompts the gate compares on, and the calibration feeds (disjoint)."""

    pixels: np.ndarray
    texts: np.ndarray
    labels: tuple[str, ...]
    label_tokens: np.ndarray
    image_feeds: list[dict[str, np.ndarray]]
    text_feeds: list[dict[str, np.ndarray]]


def gate_inputs(calib: CalibrationSet | None, spec: PreprocessSpec, tokenizer) -> GateInputs:
    """Split the calibration set into calibration and held-out parts; add edgeclip's parity photos and strings."""
    from edgeclip.export import parity
    from edgeclip.runtimes.preprocess import preprocess

    sample_pixels = preprocess(parity.sample_images(), spec)
    sample_texts = list(parity.SAMPLE_TEXTS)
    labels = DEFAULT_LABELS
    label_tokens = _tokens(tokenizer, [GATE_PROMPT.format(label) for label in labels])
    if calib is None:
        return GateInputs(sample_pixels, _tokens(tokenizer, sample_texts), labels, label_tokens, [], [])
    held = max(1, min(64, len(calib) // 5))
    keep, out = split_held_out(len(calib), held, seed=calib.seed)
    texts = list(calib.texts) or list(default_text_strings())
    text_keep = [t for i, t in enumerate(texts) if i % 5 != 4] or texts
    text_out = [t for i, t in enumerate(texts) if i % 5 == 4]
    return GateInputs(
        pixels=np.concatenate([calib.pixels[out], sample_pixels]),
        texts=_tokens(tokenizer, text_out + sample_texts),
        labels=labels,
        label_tokens=label_tokens,
        image_feeds=feeds({"pixels": calib.pixels[keep]}, 1),
        text_feeds=feeds({"token_ids": _tokens(tokenizer, text_keep)}, 1),
    )


def sensitivity(fp32: Path, int8: Path, batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per quantized activation tensor, its quantization SQNR in dB (lower is worse), from ORT's qdq_loss_debug."""
    from onnxruntime.quantization import qdq_loss_debug as dbg

    from edgeclip.calibration import OrtCalibrationReader

    with tempfile.TemporaryDirectory() as tmp:
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        dbg.modify_model_output_intermediate_tensors(str(fp32), str(f_aug))
        dbg.modify_model_output_intermediate_tensors(str(int8), str(q_aug))
        float_acts = dbg.collect_activations(str(f_aug), OrtCalibrationReader(batches))
        quant_acts = dbg.collect_activations(str(q_aug), OrtCalibrationReader(batches))
    matched = dbg.create_activation_matching(quant_acts, float_acts)
    errors = dbg.compute_activation_error(matched)
    return {name: float(err["qdq_err"]) for name, err in errors.items() if "qdq_err" in err}


def _worst_nodes(fp32: Path, nodes: list[str], sqnr: dict[str, float], count: int) -> list[str]:
    """The `count` quantized nodes whose activation inputs lose the most to quantization."""
    import onnx

    model = onnx.load(str(fp32), load_external_data=False)
    wanted = set(nodes)
    score = {}
    for node in model.graph.node:
        if node.name in wanted:
            values = [sqnr[t] for t in node.input if t in sqnr and math.isfinite(sqnr[t])]
            score[node.name] = min(values) if values else math.inf
    return sorted(score, key=lambda n: score[n])[:count]


ROLES = ("image", "text")
RECIPE_FOR = {"image": "edgeclip-image", "text": "edgeclip-text"}
FEED_FOR = {"image": "image_feeds", "text": "text_feeds"}


def _auto_exclude(
    fp32: tuple[Path, Path],
    out: tuple[Path, Path],
    nodes: dict[str, list[str]],
    inputs: GateInputs,
    method: str,
    gate,
    step,
    roles: tuple[str, ...] = ROLES,
) -> dict[str, list[str]]:
    """Per encoder over the limit: re-quantize with its most sensitive nodes in float, a tenth more per round."""
    from edgeclip.export.quantize import preprocess_for_quantization

    excluded: dict[str, list[str]] = {role: [] for role in ROLES}
    report = gate()
    with tempfile.TemporaryDirectory() as tmp:
        for i, role in enumerate(ROLES):
            if role not in roles:
                continue
            pre = preprocess_for_quantization(fp32[i], Path(tmp) / f"{role}.onnx")
            batches = getattr(inputs, FEED_FOR[role])
            step_size = max(1, math.ceil(AUTO_EXCLUDE_STEP * len(nodes[role])))
            while 1.0 - getattr(report, role).mean_cosine > report.max_cosine_drop:
                live = quantized_nodes(pre, RECIPES[RECIPE_FOR[role]], excluded[role])
                if len(live) <= step_size:
                    raise ExportError(
                        f"--auto-exclude kept {len(excluded[role])} of {len(nodes[role])} {role} encoder nodes in "
                        f"float and its mean cosine to fp32 is still {getattr(report, role).mean_cosine:.4f}: "
                        "raise --max-cosine-drop or try another --calibration-method"
                    )
                step(f"auto-exclude: {role} mean cosine {getattr(report, role).mean_cosine:.4f}")
                sqnr = sensitivity(pre, out[i], batches[:SENSITIVITY_INPUTS])
                excluded[role] += _worst_nodes(pre, live, sqnr, step_size)
                quantize_static_int8(
                    fp32[i], out[i], batches, recipe=RECIPE_FOR[role], method=method, exclude=excluded[role]
                )
                report = gate()
    return excluded


def lower_precision(
    fp32: tuple[Path, Path],
    out: tuple[Path, Path],
    request: PrecisionRequest,
    calib: CalibrationSet | None,
    spec: PreprocessSpec,
    tokenizer,
    on_step=None,
) -> dict[str, object]:
    """Write the fp16 or int8 encoders `out` from the fp32 files, gate them, and return the manifest record.

    `calib` is the resolved calibration set (see `resolve_calibration`), needed for static int8.
    """
    step = on_step or (lambda _m: None)
    inputs = gate_inputs(calib, spec, tokenizer)
    record: dict[str, object] = {"precision": request.precision}
    excluded: dict[str, list[str]] = {role: [] for role in ROLES}
    drop = request.max_cosine_drop

    def gate() -> GateReport:
        return measure_gate(
            fp32, out, inputs.pixels, inputs.texts, inputs.label_tokens, labels=inputs.labels, max_cosine_drop=drop
        )

    if request.precision == "fp16":
        for src, dst in zip(fp32, out, strict=True):
            convert_fp16(src, dst)
        record["fp16_keep_float"] = "see edgeclip.export.quantize.FP16_KEEP_FLOAT"
    elif request.dynamic:
        for src, dst in zip(fp32, out, strict=True):
            quantize_dynamic_int8(src, dst)
        record.update(mode="dynamic", ops=["MatMul", "Gemm"])
    else:
        if calib is None:  # parse_options guarantees a calibration source for static int8
            raise UsageError("static int8 needs a calibration set")
        static = request.static_roles()
        nodes = {
            role: quantize_static_int8(
                fp32[i], out[i], getattr(inputs, FEED_FOR[role]), recipe=RECIPE_FOR[role], method=request.method
            )
            for i, role in enumerate(ROLES)
            if role in static
        }
        for i, role in enumerate(ROLES):
            if role not in static:
                quantize_dynamic_int8(fp32[i], out[i])
        if request.auto_exclude:
            drop = drop if drop is not None else AUTO_EXCLUDE_DROP
            excluded = _auto_exclude(fp32, out, nodes, inputs, request.method, gate, step, static)
        record.update(
            mode="static",
            format="QDQ",
            text_int8=request.text_int8,
            method=request.method,
            recipes={role: RECIPE_FOR[role] for role in static},
            recipe_details={role: RECIPES[RECIPE_FOR[role]].description for role in static},
            set=calib.describe(),
            held_out_images=len(inputs.pixels),
            excluded_nodes=excluded,
        )
    report = gate()
    record["gate"] = report.to_dict()
    report.check()
    return record
