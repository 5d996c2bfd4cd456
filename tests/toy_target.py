"""A toy export target in one module: the ONNX target's fp32 graphs, copied under names its one option picks."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.target_options import Choice, TargetOptions, option, options_of
from edgeclip.export.targets import TargetSpec, onnx, register_target
from edgeclip.runtimes.backends import register_backend
from edgeclip.runtimes.backends.ort import OnnxRuntimeBackend


@dataclass(frozen=True)
class ToyOptions(TargetOptions):
    toy_prefix: str = option(Choice(("toy", "copy")), "toy", help="the encoder files' name prefix")


SPEC = TargetSpec(
    "toy", "ONNX graphs under other names (a test's toy)", ("fp32",), ".onnx", True, options_type=ToyOptions
)
register_backend("toy-onnxruntime", targets=("toy",))(OnnxRuntimeBackend)


@register_target(SPEC)
def export(encoders: Encoders, out_dir: Path, options: ExportOptions) -> EncoderFiles:
    """Export with the ONNX target into a temp folder, then copy both graphs as PREFIX_image.onnx, PREFIX_text.onnx."""
    prefix = options_of(options, ToyOptions).toy_prefix
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        fp32 = onnx.export(encoders, Path(tmp), ExportOptions("onnx", "fp32", options.opset))
        files = {}
        for role, file in (("image", fp32.image), ("text", fp32.text)):
            shutil.copyfile(Path(tmp) / file.file, out_dir / f"{prefix}_{role}.onnx")
            files[role] = EncoderFile(f"{prefix}_{role}.onnx", file.inputs, file.outputs)
    return EncoderFiles(files["image"], files["text"], {"copied_from": "onnx"})
