"""ONNX target: both encoders as ONNX graphs with a dynamic batch axis, run by ONNX Runtime on the device."""

from __future__ import annotations

from pathlib import Path

from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.targets import TargetSpec, register_target
from edgeclip.runtimes.manifest import TensorSpec

DEFAULT_OPSET = 18
SPEC = TargetSpec(
    name="onnx",
    description="ONNX graphs for ONNX Runtime (CPU, CUDA, TensorRT, CoreML and other execution providers)",
    precisions=("fp32",),
    file_suffix=".onnx",
    dynamic_batch=True,
    extra=None,
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
