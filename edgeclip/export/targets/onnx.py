"""ONNX target: both encoders as ONNX graphs with a dynamic batch axis, run by ONNX Runtime on the device."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.targets import TargetSpec, register_target
from edgeclip.runtimes.manifest import TensorSpec

DEFAULT_OPSET = 18
SPEC = TargetSpec(
    name="onnx",
    description="ONNX graphs for ONNX Runtime (CPU, CUDA, TensorRT, CoreML and other execution providers)",
    precisions=("fp32", "fp16", "int8"),
    file_suffix=".onnx",
    dynamic_batch=True,
    extra=None,
    options=("calibration", "calibration_method", "auto_exclude", "dynamic", "max_cosine_drop", "text_int8"),
)

_DTYPES = {"torch.float32": "float32", "torch.int64": "int64", "torch.int32": "int32", "torch.float16": "float16"}


def _encoder_file(file: str, example, input_name: str, embed_dim: int) -> EncoderFile:
    shape = ("batch", *example.shape[1:])
    return EncoderFile(
        file=file,
        inputs=(TensorSpec(input_name, shape, _DTYPES[str(example.dtype)]),),
        outputs=(TensorSpec("embeddings", ("batch", embed_dim), "float32"),),
    )


def _validate(options: ExportOptions) -> ExportOptions:
    """int8/fp16 options are checked before the model loads (int8 without calibration or --dynamic fails here)."""
    from edgeclip.export.onnx_quant import parse_options

    parse_options(options.precision, options.target_options)
    return options


@register_target(SPEC, validate=_validate)
def export(encoders: Encoders, out_dir: Path, options: ExportOptions) -> EncoderFiles:
    """Write image_encoder.onnx and text_encoder.onnx into `out_dir`."""
    import onnx
    import torch

    from edgeclip.export.onnx_graph import export_onnx_graph

    opset = options.opset or DEFAULT_OPSET
    if options.precision != "fp32":
        return _export_lower_precision(encoders, out_dir, options, opset)
    files = {}
    for role, module, example, input_name in (
        ("image", encoders.image, encoders.image_example, "pixels"),
        ("text", encoders.text, encoders.text_example, "token_ids"),
    ):
        name = f"{role}_encoder.onnx"
        export_onnx_graph(module, example, out_dir / name, input_name=input_name, output_name="embeddings", opset=opset)
        with torch.no_grad():
            embed_dim = int(module(example[:1]).shape[-1])
        files[role] = _encoder_file(name, example, input_name, embed_dim)
    return EncoderFiles(
        image=files["image"], text=files["text"], target_info={"opset": opset, "onnx_version": onnx.__version__}
    )


def _export_lower_precision(encoders: Encoders, out_dir: Path, options: ExportOptions, opset: int) -> EncoderFiles:
    """Export fp32 to a temp folder, then write fp16 or int8 encoders into `out_dir`, gated against the fp32 ones."""
    from edgeclip.export.onnx_quant import lower_precision, parse_options, resolve_calibration
    from edgeclip.runtimes.tokenizer import Tokenizer

    request = parse_options(options.precision, options.target_options)
    # Before the fp32 export: a calibration set made for other preprocessing fails here, fast.
    calib = resolve_calibration(request.calibration, encoders.preprocess) if request.calibration is not None else None
    tokenizer = Tokenizer.from_file(out_dir / "tokenizer.json", encoders.tokenizer)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        fp32 = export(encoders, Path(tmp), ExportOptions(options.target, "fp32", options.opset))
        record = lower_precision(
            (Path(tmp) / fp32.image.file, Path(tmp) / fp32.text.file),
            (out_dir / fp32.image.file, out_dir / fp32.text.file),
            request,
            calib,
            encoders.preprocess,
            tokenizer,
        )
    return EncoderFiles(fp32.image, fp32.text, {**fp32.target_info}, calibration=record)
