"""TensorRT-ready ONNX: symmetric int8 Q/DQ graphs TensorRT reads as explicit quantization, and their checks.

TensorRT 10.1+ builds int8 only from explicit quantization (its implicit calibrators are gone in 11): every
QuantizeLinear/DequantizeLinear must be int8 with zero point 0, and the graph must hold standard ONNX ops only.
edgeclip's ONNX Runtime recipes do not fit: they use uint8 activations and fuse GELU into com.microsoft's Gelu.
So the TensorRT graph is quantized here from the plain fp32 export: Q/DQ in front of every Conv and every
linear MatMul/Gemm (constant weights, per-output-channel int8), activations int8 symmetric, biases and outputs
left float (TensorRT fuses bias and activation itself; Q/DQ only on op inputs, as NVIDIA ModelOpt places them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.calibration import OrtCalibrationReader
from edgeclip.errors import ExportError, UsageError
from edgeclip.export.quantize import (
    GraphIndex,
    QuantRecipe,
    calibration_arguments,
    check_method,
    linear_matmul,
    preprocess_for_quantization,
    quantized_nodes,
    quantizer_error,
)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
STANDARD_DOMAINS = ("", "ai.onnx")


def _conv_or_linear(node, graph: GraphIndex) -> bool:
    """Every Conv, and MatMul/Gemm with a constant weight (attention's activation products stay float)."""
    return node.op_type == "Conv" or linear_matmul(node, graph)


TENSORRT_RECIPE = QuantRecipe(
    "tensorrt",
    "Conv and linear MatMul/Gemm, S8S8 symmetric, per-channel weights, Q/DQ on op inputs only (TensorRT explicit int8)",
    ("Conv", "MatMul", "Gemm"),
    _conv_or_linear,
    per_channel=True,
    activation_type="int8",
    weight_type="int8",
    # The first quantizable node reads the widest-ranged activations (the patch embedding's input pixels; in the
    # text tower the first LayerNorm over token + position embeddings): on the tiny text tower, quantizing that
    # in-projection alone dropped min cosine to 0.976 against 0.996-0.9998 for every other layer alone, so it stays
    # float (as TensorRT users commonly keep the first layer in higher precision).
    float_first=1,
    extra_options={
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,  # an int32 bias DequantizeLinear is not TensorRT's; it fuses float biases itself
        "OpTypesToExcludeOutputQuantization": ["Conv", "MatMul", "Gemm"],
    },
)


def quantize_for_tensorrt(
    src: Path, dst: Path, calibration: Iterable[Mapping[str, np.ndarray]], *, method: str = "minmax"
) -> list[str]:
    """Quantize the fp32 ONNX file `src` into a TensorRT Q/DQ graph `dst`, checked; the quantized node names."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    check_method(method)
    reader = OrtCalibrationReader(calibration)
    if len(reader) == 0:
        raise UsageError("tensorrt int8 needs calibration inputs: the calibration set is empty")
    recipe = TENSORRT_RECIPE
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess_for_quantization(Path(src), Path(tmp) / "pre.onnx")
        nodes = quantized_nodes(pre, recipe)
        if not nodes:
            raise ExportError(f"{Path(src).name} has no Conv or linear MatMul/Gemm for TensorRT int8 to quantize")
        try:
            quantize_static(
                str(pre),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(recipe.op_types or ()),
                nodes_to_quantize=nodes,
                per_channel=recipe.per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                extra_options=dict(recipe.extra_options),
                **calibration_arguments(pre, recipe.op_types, reader, method, recipe.extra_options, Path(tmp)),
            )
        except Exception as e:  # ORT's quantizer raises plain exceptions of many kinds; report one line
            raise quantizer_error("tensorrt int8 quantization", Path(src), method, e) from None
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


def run_onnx_cpu(path: Path, inputs: Mapping[str, np.ndarray], batch: int = 8) -> np.ndarray:
    """The first output of an ONNX file run by ONNX Runtime on CPU, in batches (how the graphs are checked here)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n = len(next(iter(inputs.values())))
    outs = [
        session.run(None, {k: np.ascontiguousarray(v[i : i + batch]) for k, v in inputs.items()})[0]
        for i in range(0, n, batch)
    ]
    return np.concatenate(outs).astype(np.float32)
