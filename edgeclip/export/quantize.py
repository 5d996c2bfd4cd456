"""ONNX int8 (static QDQ or dynamic) and fp16 conversion of exported encoders, with edgeclip's recipes for CLIP.

Every function reads an fp32 ONNX file and writes a new one; nothing is changed in place.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclip.calibration import OrtCalibrationReader
from edgeclip.errors import ExportError, UsageError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
Feeds = Iterable[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class GraphIndex:
    """A graph's initializers, which node produces each tensor and which nodes read it (node filters, rewrites)."""

    initializers: dict[str, object]
    producer: dict[str, object]
    consumers: dict[str, list] = field(default_factory=dict)

    @classmethod
    def of(cls, model) -> GraphIndex:
        consumers: dict[str, list] = {}
        for n in model.graph.node:
            for name in n.input:
                consumers.setdefault(name, []).append(n)
        return cls({t.name: t for t in model.graph.initializer},
                   {out: n for n in model.graph.node for out in n.output}, consumers)  # fmt: skip


# Decides per node whether a recipe quantizes it.
NodeFilter = Callable[[object, GraphIndex], bool]


def _conv_kind(node, graph: GraphIndex) -> str | None:
    """'pointwise' (1x1, group 1), 'depthwise' (group > 1), 'spatial' (kxk, group 1) or None for non-Conv nodes."""
    if node.op_type != "Conv":
        return None
    weight = graph.initializers.get(node.input[1])
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if weight is None:
        return "spatial"
    if group > 1:
        return "depthwise"
    return "pointwise" if tuple(weight.dims[2:]) == (1, 1) else "spatial"


def _any(_node, _graph: GraphIndex) -> bool:
    return True


def linear_matmul(node, graph: GraphIndex) -> bool:
    """MatMul/Gemm with a constant weight (a linear layer), not attention's activation x activation products."""
    return node.op_type in ("MatMul", "Gemm") and any(name in graph.initializers for name in node.input[1:2])


def _conv_residual_add(node, graph: GraphIndex) -> bool:
    """An Add of two activations, one of them a Conv's output: a conv block's residual connection.

    Not a bias or GELU's `1 + erf` (a constant input), nor a transformer's residual stream, whose outlier channels
    per-tensor int8 handles badly.
    """
    if node.op_type != "Add" or any(name in graph.initializers for name in node.input):
        return False
    return any(getattr(graph.producer.get(name), "op_type", None) == "Conv" for name in node.input)


def _conv_chain(node, graph: GraphIndex) -> bool:
    """1x1 and depthwise convs, linear MatMul/Gemm and conv residual Adds: what keeps a FastViT block int8."""
    return (
        _conv_kind(node, graph) in ("pointwise", "depthwise")
        or linear_matmul(node, graph)
        or _conv_residual_add(node, graph)
    )


@dataclass(frozen=True)
class QuantRecipe:
    """Which ops a static int8 quantization touches and in which integer types; everything else stays float."""

    name: str
    description: str
    op_types: tuple[str, ...] | None  # None: every op ONNX Runtime's quantizer knows
    select: NodeFilter = _any
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    extra_options: dict[str, object] = field(default_factory=dict)
    gelu: str = "exact"  # after quantizing, GELU is com.microsoft Gelu ("exact"), FastGelu ("tanh") or uint8 "quick"
    float_first: int = 0  # the first N selected nodes in graph order (the stem, the first projection) stay float


# The edgeclip image recipe, measured on the MobileCLIP2-S0 image encoder at batch 1 (ratios from one interleaved
# run each, ORT's profiler for where the time goes):
# - Every simple recipe loses to fp32: ORT's default quantize_static (every op) 0.45x; Conv+MatMul S8S8 0.48x.
# - 1x1 convs are ~70% of fp32 time and run as U8S8 QLinearConv. Quantizing only them (the first recipe) gave
#   1.78-2.08x at 2 threads on an AVX-512 VNNI Zen4, but left float depthwise convs and residual adds between int8
#   convs, so ORT ran the int8 convs NHWC and the float ones NCHWc with ~70 reorders/transposes and Q/DQ between.
# - Depthwise convs and conv residual Adds int8 too keep the conv chain int8 NHWC (29 transposes, all in the
#   attention stage); only GELU leaves int8, between a DequantizeLinear and a QuantizeLinear. Measured on an
#   AVX2-only Zen3 (no VNNI), 1 thread: fp32 78 ms, 1x1 only 62.6 ms, + depthwise and Adds 56.2 ms. The stem's
#   3x3 conv stays float (no faster int8, and the first layer is the sensitive one).
# - GELU is then ~20% of the int8 time: ORT's exact-erf Gelu kernel costs ~1.7 ns/element, its tanh-form FastGelu
#   ~1 ns (56.2 -> 52.3 ms). The tanh form differs from erf GELU by < 5e-4, far below an int8 step; the accuracy
#   gate measures the whole int8 model against fp32 anyway. (A uint8 lookup table, Cast + Gather, ran 10 ns/element.)
# - "quick" GELU, x * sigmoid(1.702 x) as CLIP's QuickGELU, stays uint8 where GELU sits between a DequantizeLinear and
#   a QuantizeLinear: com.microsoft QLinearSigmoid (a 256-entry table in MLAS; the 1.702 folds into its input
#   scale) and QLinearMul, instead of DQ -> FastGelu -> Q. 2 threads, same run: fp32 39.8 ms, tanh 29.0 ms (1.37x),
#   quick 25.8 ms (1.54x). On the shapes-trained MCi0 (benchmarks/quantization_accuracy.py) image cosine vs fp32
#   went mean 0.99891 -> 0.99865, p1 0.99428 -> 0.99177, colour top-1 unchanged (98.62%).
# - U8 activations: ORT's x86 QLinearConv kernels are U8S8; S8S8 is converted at run time. QDQ (not QOperator, which
#   measured the same) so the file stays a plain ONNX QDQ graph.
# Depthwise convs, GELU, LayerNorm, Softmax and residuals are where CLIP-class encoders lose accuracy under int8:
# `--auto-exclude` keeps the worst of them float until the gate passes; benchmarks/quantization_accuracy.py
# measures the recipe on a trained model.
RECIPES: dict[str, QuantRecipe] = {}


def register_recipe(recipe: QuantRecipe) -> QuantRecipe:
    """Add a recipe to the registry; names are unique."""
    if recipe.name in RECIPES:
        raise ValueError(f"quantization recipe {recipe.name!r} is registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


register_recipe(
    QuantRecipe(
        "default",
        "ONNX Runtime's quantize_static defaults (every op, per-tensor, S8S8)",
        None,
        per_channel=False,
        activation_type="int8",
    )
)
register_recipe(
    QuantRecipe(
        "edgeclip-image",
        "1x1 and depthwise Conv, linear MatMul/Gemm and residual Add, U8S8, "
        "per-channel symmetric weights, uint8 quick GELU between int8 convs (tanh GELU elsewhere)",
        ("Conv", "MatMul", "Gemm", "Add"),
        _conv_chain,
        gelu="quick",
    )
)
# Text tower (a transformer: MatMul/Gemm and attention): MatMul weights int8, activations U8; LayerNorm, Softmax,
# GELU and residual adds float.
register_recipe(
    QuantRecipe(
        "edgeclip-text",
        "linear MatMul/Gemm only, U8S8, per-channel symmetric weights",
        ("MatMul", "Gemm"),
        linear_matmul,
    )
)

# Ops kept in float32 by the fp16 conversion: reductions and exponentials that overflow or lose range in fp16
# (LayerNorm's variance, Softmax's exp, L2 normalization's sum of squares and division).
FP16_KEEP_FLOAT = (
    "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Div", "Softmax",
    "Exp", "Erf", "Range", "CumSum", "ArgMax", "TopK", "NonZero",
)  # fmt: skip


def check_method(method: str) -> str:
    """The calibration method name, or a UsageError listing the choices."""
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method {method!r} is unknown: expected one of {', '.join(CALIBRATION_METHODS)}")
    return method


# Histogram calibration (percentile, entropy) is run here, not inside quantize_static, for two reasons:
# - ORT's histogram calibrators keep every calibrated tensor of every batch they are given until they build the
#   histograms: 172 MB per image for MobileCLIP2-S0 at 256 px, 44 GB for a 256-image calibration set. Fed in chunks
#   of up to HISTOGRAM_MEMORY bytes of those tensors, they merge each chunk into their histograms and free it.
#   Merging moves entropy's ranges a little (image cosine mean 0.99864 in one pass, 0.99727 in chunks of 8 batches,
#   0.99817 in 1 GB chunks on the model below), hence chunks as large as memory allows rather than a fixed count.
# - quantize_static builds its entropy calibrator with 128 histogram bins and 128 quantized bins and has no option
#   to change them, so the KL search has a single candidate, the whole range: its "entropy" gave minmax's scales,
#   every one. ENTROPY_BINS leaves the search room (2048 bins took 2.4x as long and did no better); 256 quantized
#   bins are the 8-bit levels.
# The ranges go in through quantize_static's calibration cache. On the shapes-trained MCi0 at 64 px, 256 images,
# one core (image cosine to fp32, mean / p1; quantization time): minmax 0.99890 / 0.99404, 22 s; percentile
# 0.99916 / 0.99688, 34 s; entropy 0.99817 / 0.98690, 155 s. Minmax stays the default: fast, and it never builds
# a histogram (np.histogram refuses 2048 bins over a near-constant tensor, which random-weight MobileCLIP2-S0 has).
HISTOGRAM_MEMORY = 1 << 30
ENTROPY_BINS = 1024
ENTROPY_QUANTIZED_BINS = 256


def calibration_arguments(
    pre: Path, op_types: Iterable[str] | None, reader: OrtCalibrationReader, method: str,
    extra_options: Mapping[str, object], tmp: Path,
) -> dict[str, object]:  # fmt: skip
    """quantize_static's keyword arguments for `method`: the calibrator, and for histogram methods the ranges."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    calibrate_method = methods[check_method(method)]
    if method == "minmax":  # ReduceMin/ReduceMax inside the graph: a few scalars per batch
        return {"calibrate_method": calibrate_method}
    # quantize_static's option names, and its defaults for percentile (2048 bins, 99.999, symmetric ranges)
    options: dict[str, object] = (
        {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
         "symmetric": bool(extra_options.get("CalibTensorRangeSymmetric", False))}
        if method == "entropy" else
        {"percentile": float(extra_options.get("CalibPercentile", 99.999)),
         "symmetric": bool(extra_options.get("CalibTensorRangeSymmetric", True))}
    )  # fmt: skip
    calibrator = create_calibrator(pre, list(op_types) if op_types else None,
                                   augmented_model_path=str(tmp / "histogram-augmented.onnx"),
                                   calibrate_method=calibrate_method, extra_options=options)  # fmt: skip
    batches = list(reader)
    chunk = _histogram_chunk(calibrator, batches[0]) if batches else 1
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints a line per chunk and its bin settings
        for start in range(0, len(batches), chunk):
            calibrator.collect_data(OrtCalibrationReader(batches[start : start + chunk]))
        ranges = calibrator.compute_data()
    cache = tmp / "calibration-ranges.json"
    save_tensors_data(ranges, cache)
    del calibrator
    return {"calibrate_method": calibrate_method, "calibration_cache_path": str(cache)}


def quantizer_error(what: str, src: Path, method: str, error: Exception) -> ExportError:
    """One line for a failure inside ORT's quantizer, which raises plain exceptions of many kinds."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    hint = f" (calibration method {method}; minmax builds no histograms)" if method != "minmax" else ""
    return ExportError(f"{what} of {src.name} failed: {first}{hint}")


def _histogram_chunk(calibrator, batch: Mapping[str, np.ndarray]) -> int:
    """Batches per collect_data call that keep the tensors a histogram calibrator holds under HISTOGRAM_MEMORY."""
    session = calibrator.infer_session  # the calibrator's own session over its augmented graph
    names = [o.name for o in session.get_outputs()]
    held = sum(out.nbytes for name, out in zip(names, session.run(None, dict(batch)), strict=True)
               if name in calibrator.tensors_to_calibrate)  # fmt: skip
    return max(1, HISTOGRAM_MEMORY // max(held, 1))


def preprocess_for_quantization(src: Path, dst: Path) -> Path:
    """ONNX Runtime's quant_pre_process (optimization + shape inference) so the quantizer sees a clean graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference fails on the Expand that onnx_graph adds for channel-multiplier convs; ONNX's
    # own shape inference is enough for these static graphs.
    quant_pre_process(str(src), str(dst), skip_optimization=False, skip_symbolic_shape=True)
    return dst


def quantized_nodes(model_path: Path, recipe: QuantRecipe, exclude: Iterable[str] = ()) -> list[str]:
    """Names of the nodes `recipe` quantizes in the model at `model_path`, less `exclude`."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = GraphIndex.of(model)
    skip = set(exclude)
    selected = [
        n.name
        for n in model.graph.node
        if (recipe.op_types is None or n.op_type in recipe.op_types) and recipe.select(n, graph)
    ]  # ONNX graphs are topologically sorted, so graph order is the order the data flows in
    return [name for name in selected[recipe.float_first :] if name not in skip]


def quantize_static_int8(
    src: Path,
    dst: Path,
    calibration: Feeds,
    *,
    recipe: str = "edgeclip-image",
    method: str = "minmax",
    exclude: Iterable[str] = (),
) -> list[str]:
    """Static QDQ int8 of the fp32 ONNX file `src` into `dst`, calibrated on `calibration`; the quantized nodes."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if recipe not in RECIPES:
        raise UsageError(f"quantization recipe {recipe!r} is unknown: expected one of {', '.join(RECIPES)}")
    spec = RECIPES[recipe]
    check_method(method)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    reader = OrtCalibrationReader(calibration)
    if len(reader) == 0:
        raise UsageError("static int8 needs calibration inputs: the calibration set is empty")
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess_for_quantization(Path(src), Path(tmp) / "pre.onnx")
        nodes = quantized_nodes(pre, spec, exclude)
        if not nodes:
            raise ExportError(f"recipe {recipe!r} finds nothing to quantize in {Path(src).name}")
        extra = {"WeightSymmetric": True, **spec.extra_options}
        try:
            quantize_static(
                str(pre),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(spec.op_types) if spec.op_types else None,
                nodes_to_quantize=nodes if spec.op_types else None,
                nodes_to_exclude=list(exclude) or None,
                per_channel=spec.per_channel,
                activation_type=types[spec.activation_type],
                weight_type=types[spec.weight_type],
                extra_options=extra,
                **calibration_arguments(pre, spec.op_types, reader, method, extra, Path(tmp)),
            )
            _fuse_gelu_file(Path(dst), spec.gelu)
        except Exception as e:  # ORT's quantizer raises plain exceptions of many kinds; report one line
            raise quantizer_error("int8 quantization", Path(src), method, e) from None
    return nodes


def quantize_dynamic_int8(src: Path, dst: Path, *, op_types: tuple[str, ...] = ("MatMul", "Gemm")) -> None:
    """Dynamic int8 (weights int8, activation ranges at run time) of MatMul/Gemm: needs no calibration set."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess_for_quantization(Path(src), Path(tmp) / "pre.onnx")
        quantize_dynamic(
            str(pre), str(dst), op_types_to_quantize=list(op_types), per_channel=False, weight_type=QuantType.QInt8
        )


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


def _scalar(initializers: dict, name: str) -> float | None:
    from onnx import numpy_helper

    tensor = initializers.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return float(value.ravel()[0]) if value.size == 1 else None


GELU_OPS = {"exact": "Gelu", "tanh": "FastGelu"}  # com.microsoft ops: erf GELU, and its tanh approximation
GELU_FORMS = (*GELU_OPS, "quick")  # quick: x * sigmoid(1.702 x) in uint8 between Q/DQ, tanh GELU elsewhere
QUICK_GELU_ALPHA = 1.702


def fuse_gelu(model, form: str = "exact") -> int:
    """Replace exact-erf GELU chains, `(x * (1 + erf(x / sqrt2))) * 0.5`, by ONNX Runtime's Gelu op; the count.

    ORT fuses these itself in a float graph, but not once x comes out of a DequantizeLinear, and the unfused
    Div/Erf/Add/Mul/Mul chain also breaks its NCHWc layout. `form="tanh"` writes FastGelu, the tanh approximation
    (within 5e-4 of erf GELU, ~1.7x faster in ORT); `form="quick"` then moves each FastGelu that sits between a
    DequantizeLinear and a QuantizeLinear into uint8 (`quantized_quick_gelu`, CPU kernels). The result uses the
    com.microsoft domain, which ONNX Runtime runs on every execution provider edgeclip uses.
    """
    from onnx import helper

    if form not in GELU_FORMS:
        raise ValueError(f"GELU form {form!r} is unknown: expected one of {', '.join(GELU_FORMS)}")
    if form == "quick":
        fused = fuse_gelu(model, "tanh")
        quantized_quick_gelu(model)
        return fused
    graph = model.graph
    index = GraphIndex.of(model)
    inits, producer, consumers = index.initializers, index.producer, index.consumers

    def only_consumer(name: str, op_type: str):
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def close(name: str | None, value: float) -> bool:
        got = _scalar(inits, name) if name else None
        return got is not None and abs(got - value) < 1e-3

    replaced: dict[int, object] = {}
    dropped: set[int] = set()
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not close(div.input[1], 2**0.5):
            continue
        x = div.input[0]
        add = only_consumer(erf.output[0], "Add")
        mul = only_consumer(add.output[0], "Mul") if add is not None else None
        half = only_consumer(mul.output[0], "Mul") if mul is not None and x in mul.input else None
        if half is None or not close(next((i for i in add.input if i != erf.output[0]), None), 1.0):
            continue
        if not close(next((i for i in half.input if i != mul.output[0]), None), 0.5):
            continue
        dropped |= {id(div), id(erf), id(add), id(mul)}
        replaced[id(half)] = helper.make_node(
            GELU_OPS[form], [x], [half.output[0]], name=f"{erf.name}_gelu", domain="com.microsoft"
        )
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def quantized_quick_gelu(model, alpha: float = QUICK_GELU_ALPHA) -> int:
    """Rewrite DequantizeLinear -> FastGelu -> QuantizeLinear as uint8 x * sigmoid(alpha x); the count.

    ONNX Runtime has no integer GELU. Its QLinearSigmoid is a 256-entry lookup table, and sigmoid(alpha x) needs no
    extra op: it is QLinearSigmoid of the same uint8 tensor read at scale alpha * s. QLinearMul then multiplies x by
    it and requantizes to the QuantizeLinear's scale and zero point, so the conv chain never leaves uint8.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    index = GraphIndex.of(model)
    inits, producer, consumers = index.initializers, index.producer, index.consumers
    replaced: dict[int, list] = {}
    dropped: set[int] = set()
    for gelu in [n for n in graph.node if n.op_type == "FastGelu" and len(n.input) == 1]:
        dq = producer.get(gelu.input[0])
        after = consumers.get(gelu.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(consumers[dq.output[0]]) != 1 or len(after) != 1:
            continue
        q = after[0]
        params = [*dq.input[1:3], *q.input[1:3]]
        if q.op_type != "QuantizeLinear" or len(params) != 4 or any(i not in inits for i in params):
            continue
        scale, zero, _, q_zero = (numpy_helper.to_array(inits[i]) for i in params)
        if scale.size != 1 or zero.dtype != np.uint8 or q_zero.dtype != np.uint8:  # per-tensor uint8, as recipes write
            continue
        k = f"{gelu.name}_quick"
        graph.initializer.extend([
            numpy_helper.from_array(np.asarray(float(scale.reshape(())) * alpha, np.float32), f"{k}_x_scale"),
            numpy_helper.from_array(np.asarray(1 / 255, np.float32), f"{k}_sigmoid_scale"),
            numpy_helper.from_array(np.asarray(0, np.uint8), f"{k}_sigmoid_zero_point"),
        ])  # fmt: skip
        x, x_scale, x_zero = dq.input[0], dq.input[1], dq.input[2]
        sig = [f"{k}_sigmoid", f"{k}_sigmoid_scale", f"{k}_sigmoid_zero_point"]
        replaced[id(q)] = [
            helper.make_node("QLinearSigmoid", [x, f"{k}_x_scale", x_zero, sig[1], sig[2]], [sig[0]],
                             name=f"{k}_sigmoid", domain="com.microsoft"),
            helper.make_node("QLinearMul", [x, x_scale, x_zero, *sig, q.input[1], q.input[2]], [q.output[0]],
                             name=f"{k}_mul", domain="com.microsoft"),
        ]  # fmt: skip
        dropped |= {id(dq), id(gelu)}
    nodes = [m for n in graph.node if id(n) not in dropped for m in replaced.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def _fuse_gelu_file(path: Path, form: str = "exact") -> None:
    import onnx

    model = onnx.load(str(path))
    if fuse_gelu(model, form):
        onnx.save(model, str(path))
