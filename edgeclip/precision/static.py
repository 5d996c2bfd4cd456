"""The one static int8 runner: calibrate an fp32 ONNX file on a calibration set and write its QDQ graph by a recipe.

Every target's static int8 goes through `quantize_static_int8` (ONNX Runtime's recipes, TensorRT's symmetric
Q/DQ); it reads an fp32 file and writes a new one, nothing in place.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from edgeclip.calibration import OrtCalibrationReader
from edgeclip.errors import ExportError, UsageError
from edgeclip.precision.recipes import QuantRecipe, get_recipe
from edgeclip.precision.rewrites import GraphIndex, fuse_gelu_file

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
Feeds = Iterable[Mapping[str, np.ndarray]]

# Histogram calibrators are fed in chunks of up to this many bytes of calibrated tensors, and the entropy search
# gets these bins: docs/quantization.md#histogram-calibration-percentile-entropy.
HISTOGRAM_MEMORY = 1 << 30
ENTROPY_BINS = 1024
ENTROPY_QUANTIZED_BINS = 256


def check_method(method: str) -> str:
    """The calibration method name, or a UsageError listing the choices."""
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method {method!r} is unknown: expected one of {', '.join(CALIBRATION_METHODS)}")
    return method


def calibration_arguments(
    pre: Path, op_types: Iterable[str] | None, reader: OrtCalibrationReader, method: str,
    extra_options: Mapping[str, object], tmp: Path,
) -> dict[str, object]:  # fmt: skip
    """quantize_static's keyword arguments for `method`: the calibrator, and for histogram methods the ranges.

    Histogram methods calibrate here, not inside quantize_static (chunked to bound memory, with room for the
    entropy search), and hand the ranges over through quantize_static's calibration cache.
    """
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
    options: dict[str, object]
    if method == "entropy":
        options = {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
                   "symmetric": bool(extra_options.get("CalibTensorRangeSymmetric", False))}  # fmt: skip
    else:
        percentile = extra_options.get("CalibPercentile", 99.999)
        if not isinstance(percentile, (int, float)):
            raise TypeError(f"extra option CalibPercentile is {percentile!r}: expected a number")
        options = {"percentile": float(percentile),
                   "symmetric": bool(extra_options.get("CalibTensorRangeSymmetric", True))}  # fmt: skip
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


def _histogram_chunk(calibrator, batch: Mapping[str, np.ndarray]) -> int:
    """Batches per collect_data call that keep the tensors a histogram calibrator holds under HISTOGRAM_MEMORY."""
    session = calibrator.infer_session  # the calibrator's own session over its augmented graph
    names = [o.name for o in session.get_outputs()]
    held = sum(out.nbytes for name, out in zip(names, session.run(None, dict(batch)), strict=True)
               if name in calibrator.tensors_to_calibrate)  # fmt: skip
    return max(1, HISTOGRAM_MEMORY // max(held, 1))


def quantizer_error(what: str, src: Path, method: str, error: Exception) -> ExportError:
    """One line for a failure inside ORT's quantizer, which raises plain exceptions of many kinds."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    hint = f" (calibration method {method}; minmax builds no histograms)" if method != "minmax" else ""
    return ExportError(f"{what} of {src.name} failed: {first}{hint}")


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
    recipe: str | QuantRecipe = "edgeclip-image",
    method: str = "minmax",
    exclude: Iterable[str] = (),
) -> list[str]:
    """Static QDQ int8 of the fp32 ONNX file `src` into `dst` by `recipe`, calibrated on `calibration`; the nodes."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    spec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    check_method(method)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    reader = OrtCalibrationReader(calibration)
    if len(reader) == 0:
        raise UsageError(f"static int8 ({spec.name} recipe) needs calibration inputs: the calibration set is empty")
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess_for_quantization(Path(src), Path(tmp) / "pre.onnx")
        nodes = quantized_nodes(pre, spec, exclude)
        if not nodes:
            raise ExportError(f"recipe {spec.name!r} finds nothing to quantize in {Path(src).name}")
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
            if spec.gelu is not None:
                fuse_gelu_file(Path(dst), spec.gelu)
        except Exception as e:  # ORT's quantizer raises plain exceptions of many kinds; report one line
            raise quantizer_error(f"int8 quantization ({spec.name} recipe)", Path(src), method, e) from None
    return nodes
