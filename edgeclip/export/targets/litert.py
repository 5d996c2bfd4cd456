"""LiteRT target: each encoder as a `.tflite` flatbuffer (litert-torch), run on the device by LiteRT with XNNPACK.

Two files, one per encoder, as every bundle is laid out: an app that only indexes photos ships and maps only the
image encoder, each file carries its own checksum and precision, and one signature per file keeps the Interpreter
call the same for both. The batch is fixed (1, mobile's case; the runtime runs larger batches row by row):
LiteRT's dynamic batch is fragile [litert-torch#685]. The input layout is NCHW, the same tensor every other target
and edgeclip's preprocessing produce (XNNPACK works in NHWC internally either way; the converter adds the
transposes). Token ids are int32: LiteRT has no int64 argmax, which open_clip's text pooling needs.

Before conversion each encoder gets the `depthwise-bands` module rewrite (edgeclip.precision.module_rewrites): XNNPACK
runs a depthwise conv of more than 25 taps (FastViT's 7x7) as a slow grouped IGEMM (docs/mobile.md, op by op).

Precisions, in the same grammar as the ONNX target: `fp32`; `int8 --dynamic` (int8 weights, activations quantized
at run time: ai-edge-quantizer's dynamic_wi8_afp32, depthwise convs kept float so XNNPACK keeps them);
`int8 --calibration SET` (static int8 activations calibrated on the image set every target takes; the text encoder
dynamic unless `--text-int8 static`). int8 files are made from the fp32 ones and gated against them on held-out
inputs, as the ONNX target's are.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip.errors import ExportError, RuntimeUnavailable, UsageError
from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.target_options import Flag, Float, TargetOptions, option, options_of
from edgeclip.export.targets import TargetSpec, register_target
from edgeclip.export.targets.onnx import calibration_option, text_int8_option
from edgeclip.runtimes.manifest import TensorSpec

if TYPE_CHECKING:
    from edgeclip.calibration import CalibrationSet
    from edgeclip.metrics.parity import GateReport

INSTALL_HINT = "pip install 'edgeclip[litert]'"
INPUT_NAMES = {"image": "pixels", "text": "token_ids"}
INPUT_DTYPES = {"image": "float32", "text": "int32"}
OUTPUT_NAME = "embeddings"
LAYOUT = "NCHW"
BATCH = 1
ROLES = ("image", "text")
# XNNPACK has no dynamic-int8 depthwise kernel: quantized, each depthwise conv leaves the delegate for TFLite's hybrid
# kernel (S0 image: 27 pieces); kept float, the graph is one XNNPACK piece: 27 against 45-48 ms (docs/litert.md).
DYNAMIC_FLOAT_OPS = ("DEPTHWISE_CONV_2D",)
DYNAMIC_RECIPE = "dynamic_wi8_afp32, " + ", ".join(DYNAMIC_FLOAT_OPS) + " kept float"
# The module rewrites applied before conversion unless --no-rewrites.
LITERT_REWRITES = ("depthwise-bands",)
# Static int8 on the ops that carry the MACs only: with ai-edge-quantizer's static_wi8_ai8 (every supported op) the
# tiny ViT fell into 29 XNNPACK pieces (int8 layer norm, GELU, softmax, batch matmul stay out); with these three
# it is one piece, the rest float with QUANTIZE/DEQUANTIZE between.
STATIC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
STATIC_RECIPE = "static_wi8_ai8 on " + ", ".join(STATIC_OPS)


@dataclass(frozen=True)
class LiteRTOptions(TargetOptions):
    """The LiteRT target's options: how int8 encoders are made and gated against fp32 (as the ONNX target's)."""

    calibration: Path | None = calibration_option()
    dynamic: bool = option(
        Flag(),
        False,
        help="int8: dynamic int8 (int8 weights, activations at run time), no calibration",
        precisions=("int8",),
    )
    text_int8: str = text_int8_option(
        "static int8: how the text encoder is quantized (static calibrates on the set's captions)"
    )
    max_cosine_drop: float | None = option(
        Float(0.0, 1.0),
        help="int8: fail when an encoder's mean cosine to fp32 on held-out inputs drops by more than this",
        precisions=("int8",),
    )
    no_rewrites: bool = option(
        Flag(),
        False,
        help="convert the graphs as PyTorch gives them, without splitting large depthwise convs into bands "
        "(for comparison: XNNPACK then runs them as a slow grouped IGEMM)",
    )

    def check(self, precision: str) -> LiteRTOptions:
        if precision == "int8" and self.calibration is None and not self.dynamic:
            raise UsageError(
                "--target litert --precision int8 needs --calibration (a .npz from `edgeclip calibrate`, or a "
                "folder of images) for static int8, or --dynamic for dynamic int8 without calibration"
            )
        if self.calibration is not None and self.dynamic:
            raise UsageError("--dynamic quantizes without calibration: drop --calibration, or drop --dynamic")
        if self.text_int8 != "dynamic" and self.dynamic:
            raise UsageError(
                "--text-int8 chooses how static int8 (--precision int8 --calibration) quantizes the "
                "text encoder; it does not apply here"
            )
        return self

    @property
    def mode(self) -> str:
        """'fp32', 'dynamic' or 'static' (the bench rows litert:fp32, litert:int8+dynamic, litert:int8)."""
        return "dynamic" if self.dynamic else "static" if self.calibration is not None else "fp32"


SPEC = TargetSpec(
    name="litert",
    description="LiteRT (TensorFlow Lite) flatbuffers (.tflite) for Android, iOS and embedded Linux, run with XNNPACK",
    precisions=("fp32", "int8"),
    file_suffix=".tflite",
    dynamic_batch=False,
    requires="litert-torch and ai-edge-litert: pip install 'edgeclip[litert]'",
    extra="litert",
    platforms=("Android", "iOS", "Linux", "macOS", "Windows"),
    options_type=LiteRTOptions,
)


def _missing(modules: tuple[str, ...]) -> str | None:
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def validate_options(options: ExportOptions) -> ExportOptions:
    """Refuse at once, before the model loads, where the converter (or the int8 quantizer) is not installed."""
    opts = options_of(options, LiteRTOptions)
    needed = ("litert_torch", "ai_edge_litert") + (("ai_edge_quantizer",) if options.precision == "int8" else ())
    missing = _missing(needed)
    if missing is not None:
        raise RuntimeUnavailable(f"the litert target needs {missing.replace('_', '-')}: {INSTALL_HINT}")
    return replace(options, target_options=opts)


# --- conversion ----------------------------------------------------------------------------------------------


def _wrapped(role: str, module: Any) -> Any:
    """The encoder as LiteRT takes it: input named as the manifest names it, int32 ids, output named embeddings."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from edgeclip.models.encoders import TextEncoder

    class LiteRTImageEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = module

        def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
            return {OUTPUT_NAME: self.encoder(pixels)}

    class LiteRTTextEncoder(LiteRTImageEncoder):
        def forward(self, token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            if isinstance(self.encoder, TextEncoder):
                # TextEncoder casts ids to int64 (ONNX's contract); open_clip's argmax pooling then has no LiteRT
                # kernel. int32 ids index embeddings and argmax the same way, so the tower takes them as they are.
                return {OUTPUT_NAME: F.normalize(self.encoder.clip.encode_text(token_ids), dim=-1)}
            return {OUTPUT_NAME: self.encoder(token_ids)}

    return (LiteRTImageEncoder if role == "image" else LiteRTTextEncoder)().eval()


def _example(role: str, encoders: Encoders) -> Any:
    import torch

    example = encoders.image_example if role == "image" else encoders.text_example.to(torch.int32)
    return example[:1].expand(BATCH, *example.shape[1:]).contiguous()


def _quiet_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a converter call with its progress lines (stdout/stderr chatter) kept off the console."""
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def convert_encoder(role: str, module: Any, example: Any, path: Path) -> None:
    """Convert one encoder to a `.tflite` at `path` with one signature (input named as the manifest names it)."""
    import litert_torch
    import torch

    name = INPUT_NAMES[role]
    try:
        with torch.no_grad():
            model = _quiet_call(litert_torch.convert, _wrapped(role, module), sample_kwargs={name: example})
            _quiet_call(model.export, str(path))
    except Exception as e:  # torch.export and the MLIR lowering raise many kinds, one per unsupported construct
        text = str(e).strip()
        raise ExportError(
            f"litert-torch cannot convert the {role} encoder: {text.splitlines()[0] if text else type(e).__name__}"
        ) from None


def _encoder_file(role: str, example: Any, embed_dim: int) -> EncoderFile:
    shape = tuple(int(d) for d in example.shape)
    return EncoderFile(
        file=f"{role}_encoder.tflite",
        inputs=(TensorSpec(INPUT_NAMES[role], shape, INPUT_DTYPES[role]),),
        outputs=(TensorSpec(OUTPUT_NAME, (shape[0], embed_dim), "float32"),),
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


@register_target(SPEC, validate=validate_options)
def export(encoders: Encoders, out_dir: Path, options: ExportOptions) -> EncoderFiles:
    """Write image_encoder.tflite and text_encoder.tflite into `out_dir` (fp32, or int8 made from fp32 and gated)."""
    import torch

    from edgeclip.precision.module_rewrites import apply_module_rewrites

    opts = options_of(options, LiteRTOptions)
    if options.precision == "int8":
        return _export_int8(encoders, out_dir, options, opts)
    files, rewrites = {}, {}
    for role, module in (("image", encoders.image), ("text", encoders.text)):
        example = _example(role, encoders)
        with torch.no_grad():
            embed_dim = int(module(example[:1]).shape[-1])
        file = _encoder_file(role, example, embed_dim)
        rewritten, rewrites[role] = apply_module_rewrites(module, () if opts.no_rewrites else LITERT_REWRITES)
        convert_encoder(role, rewritten, example, out_dir / file.file)
        files[role] = file
    return EncoderFiles(
        image=files["image"],
        text=files["text"],
        target_info={
            "format": "tflite",
            "layout": LAYOUT,
            "batch": BATCH,
            "token_ids_dtype": INPUT_DTYPES["text"],
            "signature": "serving_default (one per file)",
            "runtime": "ai-edge-litert Interpreter with the XNNPACK delegate, thread count set",
            "module_rewrites": rewrites,
            "versions": _versions(),
        },
    )


# --- int8 ------------------------------------------------------------------------------------------------------


def quantize_file(src: Path, dst: Path, mode: str, feeds: list[dict[str, np.ndarray]] | None = None) -> None:
    """Quantize a `.tflite` with ai-edge-quantizer: `dynamic` (no data) or `static` (calibrated on `feeds` first)."""
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.recipe_manager import RecipeManager

    if mode == "dynamic":
        qt = quantizer.Quantizer(str(src), recipe.dynamic_wi8_afp32())
        for op in DYNAMIC_FLOAT_OPS:
            qt.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    else:
        manager = RecipeManager()
        for op in STATIC_OPS:
            manager.add_static_config(regex=".*", operation_name=op, activation_num_bits=8, weight_num_bits=8)
        qt = quantizer.Quantizer(str(src), manager.get_quantization_recipe())
        # The model's input and output stay float32 (the manifest's contract); QUANTIZE/DEQUANTIZE ops go inside.
        for io in ("INPUT", "OUTPUT"):
            qt.update_quantization_recipe(regex=".*", operation_name=io, algorithm_key=AlgorithmName.NO_QUANTIZE)
    result = None
    if qt.need_calibration:
        if not feeds:
            raise ExportError(f"static int8 of {src.name} needs calibration inputs; none were given")
        result = _quiet_call(qt.calibrate, {"serving_default": feeds}, num_threads=1)
    quantized = _quiet_call(qt.quantize, result, enable_progress_report=False)
    tmp = dst.with_name(dst.name + ".partial")
    _quiet_call(quantized.export_model, str(tmp), overwrite=True)
    tmp.replace(dst)


def embed_file(path: Path, name: str, batch: np.ndarray, dtype: str) -> np.ndarray:
    """The first output of a `.tflite` encoder over `batch`, run as the runtime runs it (XNNPACK, threads set)."""
    from edgeclip.runtimes.backends import RuntimeOptions
    from edgeclip.runtimes.backends.litert import LiteRTBackend
    from edgeclip.runtimes.manifest import EncoderSpec

    spec = EncoderSpec(
        path.name, "", (TensorSpec(name, (BATCH, *batch.shape[1:]), dtype),), (TensorSpec(OUTPUT_NAME, (), "float32"),)
    )
    return LiteRTBackend(path, spec, RuntimeOptions()).run({name: batch})[0].astype(np.float32)


def gate(reference: tuple[Path, Path], candidate: tuple[Path, Path], inputs: Any, drop: float | None) -> GateReport:
    """The accuracy gate (edgeclip.metrics.parity's figures) of int8 `.tflite` files against the fp32 ones."""
    from edgeclip.metrics.parity import GateReport, cosine_stats, top1_predictions

    def run(paths: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = embed_file(paths[0], "pixels", inputs.pixels, "float32")
        text = embed_file(paths[1], "token_ids", inputs.texts, "int32")
        labels = embed_file(paths[1], "token_ids", inputs.label_tokens, "int32")
        return image, text, labels

    ref, cand = run(reference), run(candidate)
    top_ref, top_cand = top1_predictions(ref[0], ref[2]), top1_predictions(cand[0], cand[2])
    return GateReport(
        reference="litert fp32 export",
        image=cosine_stats(ref[0], cand[0]),
        text=cosine_stats(ref[1], cand[1]),
        top1_agreement=float((top_ref == top_cand).mean()),
        labels=len(inputs.labels),
        max_cosine_drop=drop,
        reference_labels=len(set(top_ref.tolist())),
    )


def _int32_feeds(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [{k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in feed.items()} for feed in feeds]


def _export_int8(encoders: Encoders, out_dir: Path, options: ExportOptions, opts: LiteRTOptions) -> EncoderFiles:
    """Convert fp32 to a temp folder, quantize into `out_dir` (dynamic, or static from the calibration set), gate."""
    from edgeclip.calibration import resolve_calibration
    from edgeclip.precision.gate import gate_inputs
    from edgeclip.runtimes.tokenizer import Tokenizer

    spec = encoders.preprocess_spec()
    # Before the fp32 conversion: a calibration set made for other preprocessing fails here, fast.
    calib: CalibrationSet | None = resolve_calibration(opts.calibration, spec) if opts.calibration else None
    tokenizer = Tokenizer.from_file(out_dir / "tokenizer.json", encoders.tokenizer_spec())
    inputs = gate_inputs(calib, spec, tokenizer)
    static = {"image"} | ({"text"} if opts.text_int8 == "static" else set()) if calib is not None else set()
    recipes = {role: STATIC_RECIPE if role in static else DYNAMIC_RECIPE for role in ROLES}
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        fp32_options = ExportOptions(options.target, "fp32", target_options=LiteRTOptions(no_rewrites=opts.no_rewrites))
        fp32 = export(encoders, Path(tmp), fp32_options)
        src = (Path(tmp) / fp32.image.file, Path(tmp) / fp32.text.file)
        dst = (out_dir / fp32.image.file, out_dir / fp32.text.file)
        for i, role in enumerate(ROLES):
            mode = "static" if role in static else "dynamic"
            quantize_file(src[i], dst[i], mode, _int32_feeds(inputs.feeds_for(role)) if role in static else None)
        report = gate(src, dst, inputs, opts.max_cosine_drop)
    record: dict[str, object] = {
        "precision": "int8",
        "mode": opts.mode,
        "quantizer": "ai-edge-quantizer",
        "recipes": recipes,
        "gate": report.to_dict(),
    }
    if calib is not None:
        record.update(text_int8=opts.text_int8, set=calib.describe(), held_out_images=len(inputs.pixels))
    report.check()
    return EncoderFiles(fp32.image, fp32.text, {**fp32.target_info, "int8": opts.mode}, calibration=record)
