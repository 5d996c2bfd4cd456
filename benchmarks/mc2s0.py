"""The files the speed benchmarks time: random-weight MobileCLIP2-S0 as an fp32 bundle, and its int8/fp16 encoders.

Shared by the pytest-benchmark suites (through conftest's fixture) and benchmarks/quantization_speed.py, so that
both time the same files made the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

ARCH = "MobileCLIP2-S0"
# int8-edgeclip: static image (the recipe) + dynamic text (its default); int8-static-text: the recipe's static text.
ORT_ROWS = ("fp32", "int8-default", "int8-edgeclip", "int8-static-text", "int8-dynamic", "fp16")


def build_mc2s0(root: Path, threads: int) -> dict:
    """Random-weight MobileCLIP2-S0 written to a checkpoint and exported as an fp32 bundle; one photo and caption."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from skimage import data

    from edgeclip.export import export_bundle
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.preprocess import preprocess

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None).eval()
    ckpt = root / "mc2s0.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    bundle_path = export_bundle(ARCH, str(ckpt), root / "mc2s0.edgeclip").path
    bundle = load_bundle(bundle_path, threads=threads)
    pixels = preprocess([data.astronaut()], bundle.manifest.preprocess)
    tokens = bundle.tokenizer.encode(["a photo of an astronaut floating above the earth"])
    return {
        "model": model,
        "bundle": bundle,
        "path": Path(bundle_path),
        "pixels": pixels,
        "tokens": tokens,
        "root": root,
    }


def build_quantized(root: Path, bundle) -> dict:
    """Each ORT_ROWS row's (image, text) ONNX files, and 64 calibration batches per encoder for NNCF.

    Calibration: 80 shapes images, through `edgeclip.calibration` as `edgeclip calibrate` makes them.
    """
    from edgeclip.calibration import build_calibration_set, feeds
    from edgeclip.data.shapes import ShapesDataset, write_image_folder
    from edgeclip.export.targets.onnx import parse_options
    from edgeclip.precision.dynamic import quantize_dynamic_int8
    from edgeclip.precision.gate import gate_inputs
    from edgeclip.precision.lower import lower_precision
    from edgeclip.precision.recipes import DYNAMIC_RECIPE_FOR
    from edgeclip.precision.static import quantize_static_int8

    m = bundle.manifest
    fp32 = (bundle.path / m.encoders["image"].file, bundle.path / m.encoders["text"].file)
    folder = write_image_folder(ShapesDataset("train", size=256, seed=3), root / "calib", 80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calib, _ = build_calibration_set(folder, m.preprocess, count=80)
    files = {"fp32": fp32}
    for name, precision, options in (("int8-edgeclip", "int8", {"calibration": [folder]}), ("fp16", "fp16", {})):
        out = (root / f"{name}-image.onnx", root / f"{name}-text.onnx")
        lower_precision(
            fp32,
            out,
            parse_options(precision, options),
            calib if precision == "int8" else None,
            m.preprocess,
            bundle.tokenizer,
        )
        files[name] = out
    inputs = gate_inputs(calib, m.preprocess, bundle.tokenizer)
    files["int8-default"] = (root / "default-image.onnx", root / "default-text.onnx")
    for i, batches in enumerate((inputs.image_feeds, inputs.text_feeds)):
        quantize_static_int8(fp32[i], files["int8-default"][i], batches, recipe="default")
    files["int8-static-text"] = (files["int8-edgeclip"][0], root / "static-text.onnx")
    quantize_static_int8(fp32[1], files["int8-static-text"][1], inputs.text_feeds, recipe="edgeclip-text")
    files["int8-dynamic"] = (root / "dynamic-image.onnx", root / "dynamic-text.onnx")
    for i, role in enumerate(("image", "text")):
        quantize_dynamic_int8(fp32[i], files["int8-dynamic"][i], recipe=DYNAMIC_RECIPE_FOR[role])
    # the text recipe before attention fusion (ORT's quantize_dynamic on the exported graph), for comparison
    files["int8-text-matmul"] = (files["int8-edgeclip"][0], root / "text-matmul.onnx")
    quantize_dynamic_int8(fp32[1], files["int8-text-matmul"][1], recipe="matmul")
    calib_feeds = {"image": feeds({"pixels": calib.pixels[:64]}), "text": inputs.text_feeds[:64]}
    return {"files": files, "calib": calib_feeds}


def nncf_int8(model, calib_batches: list[dict[str, np.ndarray]], role: str):
    """NNCF's default post-training int8 of an OpenVINO model (TRANSFORMER type for the text tower)."""
    import nncf

    batches = [next(iter(b.values())) for b in calib_batches]
    kind = nncf.ModelType.TRANSFORMER if role == "text" else None
    return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), model_type=kind)
