"""OpenVINO target: both encoders as OpenVINO IR (`.xml` graph + `.bin` weights) for x86 CPUs, run by OpenVINO.

The ONNX target is the declared prerequisite: its fp32 graphs are converted with `openvino.convert_model`.
Precisions: `fp32` (f32 weights, run in f32), `fp16` (weights compressed to fp16, run in f32), `bf16` (f32
weights; bfloat16 is a runtime hint the IR and the manifest record, honoured where the CPU has AVX512_BF16/AMX
and run in f32 elsewhere) and `int8` (NNCF post-training quantization fed by the same calibration set every
target takes). fp16, bf16 and int8 encoders pass the accuracy gate against the fp32 ONNX graphs, run in OpenVINO
as the bundle will run. Measurements and CPU-feature dependence: docs/openvino.md.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import ExportError, UsageError
from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.target_options import Choice, Float, TargetOptions, option, options_of
from edgeclip.export.targets import TargetSpec, register_target
from edgeclip.export.targets.onnx import calibration_option, text_int8_option
from edgeclip.runtimes.backends.openvino import HINT_KEY, INSTALL

ROLES = ("image", "text")
# The precision hint each bundle precision records in its IR (rt_info) and manifest; int8 leaves OpenVINO's default
# (bf16 where the CPU has it) for the layers NNCF keeps in float.
RECORDED_HINT = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": None}
PRESETS = ("performance", "mixed")
# dynamic (default): int8 weights (nncf.compress_weights), activations quantized at run time: the analogue of ONNX's
# dynamic text int8. static: NNCF's full int8 (transformer type, SmoothQuant): min cosine 0.60 to PyTorch on
# random-weight MobileCLIP2-S0's text tower, so not the default (docs/openvino.md#int8).


@dataclass(frozen=True)
class OpenVinoOptions(TargetOptions):
    """The OpenVINO target's options: int8 calibration (NNCF) and the accuracy gate's limit."""

    calibration: Path | None = calibration_option()
    preset: str = option(
        Choice(PRESETS),
        PRESETS[0],
        help="int8: NNCF's quantization preset (performance: symmetric, fastest; mixed: asymmetric activations)",
        precisions=("int8",),
    )
    text_int8: str = text_int8_option(
        "int8: how the text encoder is quantized (dynamic: int8 weights, activations quantized at run time; "
        "static: NNCF int8 activations and weights, can lose accuracy)"
    )
    max_cosine_drop: float | None = option(
        Float(0.0, 1.0),
        help="fp16/bf16/int8: fail when an encoder's mean cosine to fp32 on held-out inputs drops by more than this",
        precisions=("fp16", "bf16", "int8"),
    )

    def check(self, precision: str) -> OpenVinoOptions:
        if precision == "int8" and self.calibration is None:
            raise UsageError(
                "--target openvino --precision int8 needs --calibration (a .npz from `edgeclip calibrate`, or a "
                "folder of images): NNCF's post-training quantization calibrates activation ranges on it"
            )
        return self


SPEC = TargetSpec(
    name="openvino",
    description="OpenVINO IR (.xml + .bin) for x86 CPUs; bf16 runtime hint on AVX512_BF16/AMX, int8 via NNCF",
    precisions=("fp32", "fp16", "bf16", "int8"),
    file_suffix=".xml",
    dynamic_batch=True,
    extra="openvino",
    platforms=("Linux x86_64", "Windows x86_64", "macOS (Intel and Apple silicon)", "Linux aarch64"),
    options_type=OpenVinoOptions,
)


def validate_options(options: ExportOptions) -> ExportOptions:
    """Stop before the model loads when OpenVINO (or NNCF, for int8) is not installed: one line naming the extra."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise UsageError(f"--target openvino needs OpenVINO: {INSTALL}") from None
    if options.precision == "int8":
        try:
            import nncf  # noqa: F401
        except ImportError:
            raise UsageError(f"--target openvino --precision int8 needs NNCF: {INSTALL}") from None
    return replace(options, target_options=options_of(options, OpenVinoOptions))


@register_target(SPEC, validate=validate_options)
def export(encoders: Encoders, out_dir: Path, options: ExportOptions) -> EncoderFiles:
    """Write image_encoder.xml/.bin and text_encoder.xml/.bin into `out_dir` (via the fp32 ONNX graphs)."""
    import openvino as ov

    from edgeclip.export.targets.onnx import export as export_onnx
    from edgeclip.runtimes.backends.openvino import openvino_version

    opts = options_of(options, OpenVinoOptions)
    precision = options.precision
    calib = None
    if precision == "int8":  # before the ONNX export: a calibration set made for other preprocessing fails fast
        from edgeclip.calibration import resolve_calibration

        calib = resolve_calibration(opts.calibration, encoders.preprocess_spec())  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        onnx_dir = Path(tmp)
        fp32 = export_onnx(encoders, onnx_dir, ExportOptions("onnx", "fp32", options.opset))
        onnx_files = {"image": onnx_dir / fp32.image.file, "text": onnx_dir / fp32.text.file}
        models = {role: ov.convert_model(str(onnx_files[role])) for role in ROLES}
        record: dict[str, object] | None = None
        if precision == "int8":
            models, record = _quantize(models, encoders, out_dir, calib, opts)
        files = {}
        for role, source in (("image", fp32.image), ("text", fp32.text)):
            model = models[role]
            hint = RECORDED_HINT[precision]
            if hint is not None:
                model.set_rt_info(hint, HINT_KEY)
            name = f"{role}_encoder.xml"
            ov.save_model(model, str(out_dir / name), compress_to_fp16=precision == "fp16")
            files[role] = EncoderFile(name, source.inputs, source.outputs)
        if precision != "fp32":
            gate = _gate(onnx_files, out_dir, files, encoders, calib, opts.max_cosine_drop)
            record = {**(record or {"precision": precision}), "gate": gate.to_dict()}
            gate.check()
    from edgeclip.runtimes.backends.openvino import cpu_has_bf16

    info = {
        "opset": fp32.target_info.get("opset"),
        "openvino": {
            "version": openvino_version(),
            "weights": "fp16" if precision == "fp16" else ("int8" if precision == "int8" else "fp32"),
            "precision_hint": RECORDED_HINT[precision] or "auto",
            "precision_hint_is": "a runtime hint (recorded in each IR's rt_info); the IR weights are as above",
            "exported_on_cpu_with_bf16": cpu_has_bf16(),
        },
    }
    return EncoderFiles(files["image"], files["text"], info, calibration=record)


def _quantize(
    models: dict[str, Any], encoders: Encoders, out_dir: Path, calib: Any, opts: OpenVinoOptions
) -> tuple[dict[str, Any], dict[str, object]]:
    """NNCF post-training int8 of both encoders on the calibration set's feeds (held-out part kept for the gate)."""
    import nncf

    from edgeclip.precision.gate import gate_inputs
    from edgeclip.runtimes.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_file(out_dir / "tokenizer.json", encoders.tokenizer_spec())
    inputs = gate_inputs(calib, encoders.preprocess_spec(), tokenizer)
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[opts.preset]
    out = {}
    for role in ROLES:
        feeds = inputs.feeds_for(role)
        if not feeds:
            raise ExportError(f"the calibration set gives no {role} encoder inputs: expected images and texts")
        if role == "text" and opts.text_int8 == "dynamic":
            out[role] = nncf.compress_weights(models[role], mode=nncf.CompressWeightsMode.INT8_ASYM)
            continue
        kwargs: dict[str, Any] = {"preset": preset, "subset_size": len(feeds)}
        if role == "text":
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        out[role] = nncf.quantize(models[role], nncf.Dataset(feeds), **kwargs)
    record: dict[str, object] = {
        "precision": "int8",
        "mode": "static",
        "format": "OpenVINO IR (FakeQuantize)",
        "quantizer": f"nncf {nncf.__version__} post-training quantization",
        "preset": opts.preset,
        "text_int8": opts.text_int8,
        "model_type": {
            "image": "default",
            "text": "transformer" if opts.text_int8 == "static" else "int8 weights only",
        },
        "set": calib.describe(),
        "calibration_inputs": {role: len(inputs.feeds_for(role)) for role in ROLES},
        "held_out_images": len(inputs.pixels),
    }
    return out, record


def _gate(
    onnx_files: dict[str, Path],
    out_dir: Path,
    files: dict[str, EncoderFile],
    encoders: Encoders,
    calib: Any,
    max_cosine_drop: float | None,
) -> Any:
    """The accuracy gate on the written IR, run by the OpenVINO backend as the bundle runs, against fp32 ONNX."""
    from edgeclip.metrics.parity import GateReport, cosine_stats, top1_predictions
    from edgeclip.precision.gate import gate_inputs, run_onnx_cpu
    from edgeclip.runtimes.backends import RuntimeOptions
    from edgeclip.runtimes.backends.openvino import OpenVinoBackend
    from edgeclip.runtimes.manifest import EncoderSpec
    from edgeclip.runtimes.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_file(out_dir / "tokenizer.json", encoders.tokenizer_spec())
    inputs = gate_inputs(calib, encoders.preprocess_spec(), tokenizer)

    def ir(role: str, name: str, batch: np.ndarray) -> np.ndarray:
        f = files[role]
        backend = OpenVinoBackend(out_dir / f.file, EncoderSpec(f.file, "", f.inputs, f.outputs), RuntimeOptions())
        return np.concatenate([backend.run({name: batch[i : i + 8]})[0] for i in range(0, len(batch), 8)])

    ref_img = run_onnx_cpu(onnx_files["image"], {"pixels": inputs.pixels})
    ref_txt = run_onnx_cpu(onnx_files["text"], {"token_ids": inputs.texts})
    ref_lab = run_onnx_cpu(onnx_files["text"], {"token_ids": inputs.label_tokens})
    img, txt = ir("image", "pixels", inputs.pixels), ir("text", "token_ids", inputs.texts)
    lab = ir("text", "token_ids", inputs.label_tokens)
    top_ref, top_cand = top1_predictions(ref_img, ref_lab), top1_predictions(img, lab)
    return GateReport(
        reference="onnx fp32 export (onnxruntime)",
        image=cosine_stats(ref_img, img),
        text=cosine_stats(ref_txt, txt),
        top1_agreement=float((top_ref == top_cand).mean()),
        labels=len(inputs.labels),
        max_cosine_drop=max_cosine_drop,
        reference_labels=len(set(top_ref.tolist())),
    )
