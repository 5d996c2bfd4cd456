"""Dynamic int8: weights int8 ahead of time, activation ranges measured at run time, so no calibration set."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeclip.precision.static import preprocess_for_quantization

# Why the text encoder defaults to dynamic int8 under static image int8: docs/quantization.md#the-text-encoder
DYNAMIC_OPS = ("MatMul", "Gemm")


def quantize_dynamic_int8(src: Path, dst: Path, *, op_types: tuple[str, ...] = DYNAMIC_OPS) -> None:
    """Dynamic int8 (weights int8, activation ranges at run time) of MatMul/Gemm: needs no calibration set."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess_for_quantization(Path(src), Path(tmp) / "pre.onnx")
        quantize_dynamic(
            str(pre), str(dst), op_types_to_quantize=list(op_types), per_channel=False, weight_type=QuantType.QInt8
        )
