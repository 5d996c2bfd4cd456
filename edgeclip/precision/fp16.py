"""fp16 conversion of an fp32 ONNX encoder: float16 weights and compute, float32 inputs and outputs."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from edgeclip.errors import UsageError

# Ops kept in float32 by the fp16 conversion: reductions and exponentials that overflow or lose range in fp16
# (LayerNorm's variance, Softmax's exp, L2 normalization's sum of squares and division).
FP16_KEEP_FLOAT = (
    "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Div", "Softmax",
    "Exp", "Erf", "Range", "CumSum", "ArgMax", "TopK", "NonZero",
)  # fmt: skip
# What a manifest records about the ops fp16 keeps in float32.
FP16_KEEP_FLOAT_RECORD = "see edgeclip.precision.fp16.FP16_KEEP_FLOAT"


def convert_fp16(src: Path, dst: Path, keep_float: tuple[str, ...] = FP16_KEEP_FLOAT) -> None:
    """Float16 weights and compute with float32 inputs and outputs; overflow-prone ops stay float32."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise UsageError("fp16 ONNX export needs onnxconverter-common: pip install 'edgeclip[export]'") from None
    model = onnx.load(str(src))
    float_outputs = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(keep_float), disable_shape_infer=True
        )
    # The converter warns once per weight tensor it clamps: to +-min_positive_val (1e-7), which is noise and
    # hundreds of lines on a random-weight MobileCLIP; -inf attention masks to -1e4, which still masks; finite
    # values beyond +-max_finite_val (1e4), which change the model and are counted.
    clamped = 0
    for w in caught:
        clamp = re.fullmatch(r"the float32 number (\S+) will be truncated to (\S+)", str(w.message))
        if clamp is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif np.isfinite(float(clamp[1])) and abs(float(clamp[2])) >= 1.0:
            clamped += 1
    if clamped:
        warnings.warn(
            f"fp16: {clamped} weight tensors of {src.name} hold values beyond +-1e4 and were "
            "clamped; the accuracy gate measures what that costs",
            stacklevel=2,
        )
    _float32_outputs(converted, float_outputs)
    onnx.save(converted, str(dst))
    onnx.checker.check_model(str(dst))


def _float32_outputs(model, names: set[str]) -> None:
    """Give back float32 graph outputs that the converter left as float16.

    onnxconverter-common (1.16) casts an output to float16 when the op producing it is in `op_block_list`
    (here the L2 normalization's Div), despite `keep_io_types`: its Cast is turned into a float32 one.
    """
    from onnx import TensorProto, helper

    producer = {out: n for n in model.graph.node for out in n.output}
    for output in model.graph.output:
        if output.name not in names or output.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        node = producer.get(output.name)
        to = next((a for a in node.attribute if a.name == "to"), None) if node is not None else None
        if node is not None and node.op_type == "Cast" and to is not None:
            to.i = TensorProto.FLOAT
        else:
            inner = f"{output.name}__fp16"
            for n in model.graph.node:
                n.output[:] = [inner if o == output.name else o for o in n.output]
            model.graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT))
        output.type.tensor_type.elem_type = TensorProto.FLOAT
