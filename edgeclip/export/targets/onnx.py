"""ONNX target: both encoders as ONNX graphs with a dynamic batch axis, run by ONNX Runtime on the device."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeclip.errors import UsageError
from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.target_options import Choice, File, Flag, Float, TargetOptions, option, options_of
from edgeclip.export.targets import TargetSpec, register_target
from edgeclip.precision.static import CALIBRATION_METHODS
from edgeclip.runtimes.manifest import TensorSpec

if TYPE_CHECKING:
    from edgeclip.precision.request import PrecisionRequest

DEFAULT_OPSET = 18
CALIBRATION_SOURCES = "a .npz from `edgeclip calibrate`, a folder of images or a captions file"
# Static int8 quantizes the image encoder from the calibration set; the text encoder is quantized dynamically
# unless asked: docs/quantization.md#the-text-encoder
TEXT_INT8_MODES = ("dynamic", "static")


def calibration_option() -> Any:
    """The --calibration option as the ONNX-based targets declare it (one set, read the same way by each)."""
    help = "int8: the calibration set (.npz from `edgeclip calibrate`) or a folder of images"
    return option(File(CALIBRATION_SOURCES), help=help, precisions=("int8",))


def text_int8_option(help: str) -> Any:
    """The --text-int8 option as every int8 target declares it: one flag, the same choices, dynamic by default."""
    return option(Choice(TEXT_INT8_MODES), "dynamic", help=help, precisions=("int8",))


def calibration_method_option() -> Any:
    """The --calibration-method option as the ONNX-based targets declare it."""
    return option(
        Choice(CALIBRATION_METHODS),
        CALIBRATION_METHODS[0],
        help="int8: how activation ranges are calibrated (percentile clips outliers; entropy minimizes KL "
        "divergence and is the slowest)",
        precisions=("int8",),
    )


@dataclass(frozen=True)
class OnnxOptions(TargetOptions):
    """The ONNX target's options: how fp16/int8 encoders are made and gated against fp32."""

    calibration: Path | None = calibration_option()
    calibration_method: str = calibration_method_option()
    auto_exclude: bool = option(
        Flag(),
        False,
        help="int8: keep the most sensitive nodes in float until the accuracy gate passes",
        precisions=("int8",),
    )
    dynamic: bool = option(Flag(), False, help="int8: dynamic int8 (MatMul/Gemm), no calibration", precisions=("int8",))
    text_int8: str = text_int8_option(
        "static int8: how the text encoder is quantized (dynamic: faster and closer to fp32 on MobileCLIP2-S0)"
    )
    max_cosine_drop: float | None = option(
        Float(0.0, 1.0),
        help="fp16/int8: fail when an encoder's mean cosine to fp32 on held-out inputs drops by more than this",
        precisions=("fp16", "int8"),
    )

    def check(self, precision: str) -> OnnxOptions:
        if precision == "int8" and self.calibration is None and not self.dynamic:
            raise UsageError(
                "--precision int8 needs --calibration (a .npz from `edgeclip calibrate`, or a folder of "
                "images), or --dynamic for dynamic int8 without calibration"
            )
        if self.calibration is not None and self.dynamic:
            raise UsageError("--dynamic quantizes without calibration: drop --calibration, or drop --dynamic")
        if self.auto_exclude and self.dynamic:
            raise UsageError("--auto-exclude needs static int8 (a --calibration set), not --dynamic")
        if self.text_int8 != "dynamic" and self.dynamic:
            raise UsageError(
                "--text-int8 chooses how static int8 (--precision int8 --calibration) quantizes the "
                "text encoder; it does not apply here"
            )
        return self


SPEC = TargetSpec(
    name="onnx",
    description="ONNX graphs for ONNX Runtime (CPU, CUDA, TensorRT, CoreML and other execution providers)",
    precisions=("fp32", "fp16", "int8"),
    file_suffix=".onnx",
    dynamic_batch=True,
    extra=None,
    options_type=OnnxOptions,
)

_DTYPES = {"torch.float32": "float32", "torch.int64": "int64", "torch.int32": "int32", "torch.float16": "float16"}


def _encoder_file(file: str, example, input_name: str, embed_dim: int) -> EncoderFile:
    shape = ("batch", *example.shape[1:])
    return EncoderFile(
        file=file,
        inputs=(TensorSpec(input_name, shape, _DTYPES[str(example.dtype)]),),
        outputs=(TensorSpec("embeddings", ("batch", embed_dim), "float32"),),
    )


@register_target(SPEC)
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
    from edgeclip.calibration import resolve_calibration
    from edgeclip.precision.lower import lower_precision
    from edgeclip.precision.request import PrecisionRequest
    from edgeclip.runtimes.tokenizer import Tokenizer

    request = PrecisionRequest.of(options.precision, options_of(options, OnnxOptions))
    # Before the fp32 export: a calibration set made for other preprocessing fails here, fast.
    spec = encoders.preprocess_spec()
    calib = resolve_calibration(request.calibration, spec) if request.calibration is not None else None
    tokenizer = Tokenizer.from_file(out_dir / "tokenizer.json", encoders.tokenizer_spec())
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        fp32 = export(encoders, Path(tmp), ExportOptions(options.target, "fp32", options.opset))
        record = lower_precision(
            (Path(tmp) / fp32.image.file, Path(tmp) / fp32.text.file),
            (out_dir / fp32.image.file, out_dir / fp32.text.file),
            request,
            calib,
            spec,
            tokenizer,
        )
    return EncoderFiles(fp32.image, fp32.text, {**fp32.target_info}, calibration=record)


def parse_options(precision: str, options: Mapping[str, object]) -> PrecisionRequest:
    """The ONNX target's options checked for `precision` before any work; UsageError names the bad one."""
    from edgeclip.export.targets import get_target
    from edgeclip.precision.request import PrecisionRequest

    return PrecisionRequest.of(precision, get_target("onnx").parse_options(options, precision))
