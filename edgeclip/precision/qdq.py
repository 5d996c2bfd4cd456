"""TensorRT-ready ONNX: symmetric int8 Q/DQ graphs TensorRT reads as explicit quantization, and their checks.

TensorRT 10.1+ builds int8 only from explicit quantization (its implicit calibrators are gone in 11): every
QuantizeLinear/DequantizeLinear must be int8 with zero point 0, and the graph must hold standard ONNX ops only.
edgeclip's ONNX Runtime recipes do not fit: they use uint8 activations and fuse GELU into com.microsoft's Gelu.
So the TensorRT graph is quantized from the plain fp32 export by the "tensorrt" recipe (precision/recipes.py):
Q/DQ in front of every Conv and every linear MatMul/Gemm (constant weights, per-output-channel int8), activations
int8 symmetric, biases and outputs left float (TensorRT fuses bias and activation itself; Q/DQ only on op inputs,
as NVIDIA ModelOpt places them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.errors import ExportError
from edgeclip.precision.recipes import target_recipe
from edgeclip.precision.static import quantize_static_int8

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
STANDARD_DOMAINS = ("", "ai.onnx")


def quantize_for_tensorrt(
    src: Path,
    dst: Path,
    calibration: Iterable[Mapping[str, np.ndarray]],
    *,
    method: str = "minmax",
    role: str = "image",
) -> list[str]:
    """The TensorRT int8 recipe for `role` through the static runner, then the Q/DQ check; the quantized nodes."""
    recipe = target_recipe("tensorrt", "int8").for_role(role)
    nodes = quantize_static_int8(src, dst, calibration, recipe=recipe, method=method)
    check_tensorrt_qdq(Path(dst))
    return nodes


@dataclass(frozen=True)
class QdqCheck:
    """What a TensorRT Q/DQ graph holds: Q/DQ counts, quantized weights (per-channel among them), op domains."""

    quantize: int
    dequantize: int
    weights: int
    per_channel_weights: int
    domains: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "quantize_linear": self.quantize,
            "dequantize_linear": self.dequantize,
            "weights": self.weights,
            "per_channel_weights": self.per_channel_weights,
            "domains": list(self.domains),
        }


def check_tensorrt_qdq(path: Path) -> QdqCheck:
    """Check a Q/DQ graph is what TensorRT's explicit int8 reads; ExportError names the first node that is not."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(path))
    where = Path(path).name
    inits = {t.name: t for t in model.graph.initializer}
    foreign = sorted({n.domain for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if foreign:
        node = next(n for n in model.graph.node if n.domain in foreign)
        raise ExportError(
            f"{where}: node {node.name} ({node.domain}.{node.op_type}) is not a standard ONNX op; "
            "TensorRT reads standard ops only"
        )
    counts = {op: 0 for op in QDQ_OPS}
    weights = per_channel = 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        counts[node.op_type] += 1
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None or zero.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zero) != 0):
            got = (
                "none"
                if zero is None
                else (f"{TensorProto.DataType.Name(zero.data_type)} {numpy_helper.to_array(zero).ravel()[:4]}")
            )
            raise ExportError(
                f"{where}: {node.op_type} {node.name} has zero point {got}: TensorRT needs int8 0 "
                "(symmetric quantization)"
            )
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weights += 1
            scale = inits.get(node.input[1])
            per_channel += int(scale is not None and int(np.prod(scale.dims)) > 1)
    if counts["QuantizeLinear"] == 0:
        raise ExportError(f"{where} holds no QuantizeLinear: it is not an int8 Q/DQ graph")
    return QdqCheck(
        counts["QuantizeLinear"],
        counts["DequantizeLinear"],
        weights,
        per_channel,
        tuple(sorted({n.domain or "ai.onnx" for n in model.graph.node})),
    )
