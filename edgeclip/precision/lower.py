"""The ONNX target's fp16 and int8 step: calibration in, lower-precision encoders out, accuracy gate recorded.

Called by the onnx target (`edgeclip.export.targets.onnx`) after it has written the fp32 encoders; the fp32 files
are the gate's reference.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeclip.calibration import CalibrationSet
from edgeclip.errors import ExportError, UsageError
from edgeclip.metrics.parity import GateReport
from edgeclip.precision.dynamic import quantize_dynamic_int8
from edgeclip.precision.fp16 import FP16_KEEP_FLOAT_RECORD, convert_fp16
from edgeclip.precision.gate import GateInputs, gate_inputs, measure_gate
from edgeclip.precision.recipes import DYNAMIC_RECIPE_FOR, TargetRecipe, get_dynamic_recipe, target_recipe
from edgeclip.precision.static import preprocess_for_quantization, quantize_static_int8, quantized_nodes
from edgeclip.runtimes.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from edgeclip.precision.request import PrecisionRequest

AUTO_EXCLUDE_DROP = 0.01  # the gate --auto-exclude works towards when --max-cosine-drop is not given
AUTO_EXCLUDE_STEP = 0.1  # fraction of the quantized nodes kept in float per round, worst first
SENSITIVITY_INPUTS = 8  # calibration inputs the per-node sensitivity pass runs on
ROLES = ("image", "text")


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


def _auto_exclude(
    fp32: tuple[Path, Path],
    out: tuple[Path, Path],
    nodes: dict[str, list[str]],
    inputs: GateInputs,
    recipes: TargetRecipe,
    method: str,
    gate: Callable[[], GateReport],
    step: Callable[[str], None],
    roles: tuple[str, ...] = ROLES,
) -> dict[str, list[str]]:
    """Per encoder over the limit: re-quantize with its most sensitive nodes in float, a tenth more per round."""
    excluded: dict[str, list[str]] = {role: [] for role in ROLES}
    report = gate()
    with tempfile.TemporaryDirectory() as tmp:
        for i, role in enumerate(ROLES):
            if role not in roles:
                continue
            recipe = recipes.for_role(role)
            pre = preprocess_for_quantization(fp32[i], Path(tmp) / f"{role}.onnx")
            batches = inputs.feeds_for(role)
            step_size = max(1, math.ceil(AUTO_EXCLUDE_STEP * len(nodes[role])))
            while 1.0 - getattr(report, role).mean > report.max_cosine_drop:
                live = quantized_nodes(pre, recipe, excluded[role])
                if len(live) <= step_size:
                    raise ExportError(
                        f"--auto-exclude kept {len(excluded[role])} of {len(nodes[role])} {role} encoder nodes in "
                        f"float and its mean cosine to fp32 is still {getattr(report, role).mean:.4f}: "
                        "raise --max-cosine-drop or try another --calibration-method"
                    )
                step(f"auto-exclude: {role} mean cosine {getattr(report, role).mean:.4f}")
                sqnr = sensitivity(pre, out[i], batches[:SENSITIVITY_INPUTS])
                excluded[role] += _worst_nodes(pre, live, sqnr, step_size)
                quantize_static_int8(fp32[i], out[i], batches, recipe=recipe, method=method, exclude=excluded[role])
                report = gate()
    return excluded


def lower_precision(
    fp32: tuple[Path, Path],
    out: tuple[Path, Path],
    request: PrecisionRequest,
    calib: CalibrationSet | None,
    spec: PreprocessSpec,
    tokenizer,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Write the fp16 or int8 encoders `out` from the fp32 files, gate them, and return the manifest record.

    `calib` is the resolved calibration set (see `edgeclip.calibration.resolve_calibration`), needed for static int8.
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
        record["fp16_keep_float"] = FP16_KEEP_FLOAT_RECORD
    elif request.dynamic:
        for src, dst, role in zip(fp32, out, ROLES, strict=True):
            quantize_dynamic_int8(src, dst, recipe=DYNAMIC_RECIPE_FOR[role])
        ops = sorted({op for role in ROLES for op in get_dynamic_recipe(DYNAMIC_RECIPE_FOR[role]).op_types})
        record.update(mode="dynamic", ops=ops, recipes=dict(DYNAMIC_RECIPE_FOR))
    else:
        if calib is None:  # parse_options guarantees a calibration source for static int8
            raise UsageError("static int8 needs a calibration set")
        recipes = target_recipe("onnx", "int8")
        static = request.static_roles()
        nodes = {
            role: quantize_static_int8(
                fp32[i], out[i], inputs.feeds_for(role), recipe=recipes.for_role(role), method=request.method
            )
            for i, role in enumerate(ROLES)
            if role in static
        }
        for i, role in enumerate(ROLES):
            if role not in static:
                quantize_dynamic_int8(fp32[i], out[i], recipe=DYNAMIC_RECIPE_FOR[role])
        if request.auto_exclude:
            drop = drop if drop is not None else AUTO_EXCLUDE_DROP
            excluded = _auto_exclude(fp32, out, nodes, inputs, recipes, request.method, gate, step, static)
        record.update(
            mode="static",
            format="QDQ",
            text_int8=request.text_int8,
            method=request.method,
            recipes={role: recipes.for_role(role).name for role in static},
            dynamic_recipes={role: DYNAMIC_RECIPE_FOR[role] for role in ROLES if role not in static},
            recipe_details={role: recipes.for_role(role).description for role in static},
            set=calib.describe(),
            held_out_images=len(inputs.pixels),
            excluded_nodes=excluded,
        )
    report = gate()
    record["gate"] = report.to_dict()
    report.check()
    return record
