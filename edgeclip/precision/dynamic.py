"""Dynamic int8: weights int8 ahead of time, activation ranges measured at run time, so no calibration set."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeclip.precision.recipes import DynamicRecipe, get_dynamic_recipe
from edgeclip.precision.rewrites import fuse_attention_file
from edgeclip.precision.static import preprocess_for_quantization

# Why the text encoder defaults to dynamic int8 under static image int8: docs/quantization.md#the-text-encoder


def quantize_dynamic_int8(src: Path, dst: Path, *, recipe: str | DynamicRecipe = "matmul") -> int:
    """Dynamic int8 of `src` into `dst` by `recipe` (recipes.DYNAMIC_RECIPE_FOR names each encoder's): needs no
    calibration set; returns how many attention blocks the recipe fused."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    spec = get_dynamic_recipe(recipe) if isinstance(recipe, str) else recipe
    fused = 0
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess_for_quantization(Path(src), Path(tmp) / "pre.onnx")
        if spec.fuse_attention:
            fused = fuse_attention_file(pre, Path(tmp) / "fused.onnx")
            pre = Path(tmp) / "fused.onnx"
        quantize_dynamic(
            str(pre), str(dst), op_types_to_quantize=list(spec.op_types), per_channel=False,
            weight_type=QuantType.QInt8,
            # shape inference cannot type the outputs of com.microsoft Attention: they are float
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )  # fmt: skip
    return fused
