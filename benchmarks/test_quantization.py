"""ONNX fp32 vs int8 (ORT's default quantize_static and the edgeclip recipe) vs fp16, with OpenVINO f32, OpenVINO
default (bf16 on CPUs with AVX512_BF16/AMX) and NNCF int8 on the same ONNX file as the peers to beat.

MobileCLIP2-S0 (random weights: speed only; accuracy is benchmarks/quantization_accuracy.py), batch 1, 2 threads,
image and text encoders. The fp32 row is each group's baseline; the table at the end gives the speed-ups.

Run: .venv/bin/python -m pytest benchmarks/test_quantization.py --benchmark-only
Goal (issue 4): edgeclip int8 >= 2.0x faster than ONNX fp32 and faster than OpenVINO's int8.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.conftest import ARCH, THREADS

ROUNDS = dict(rounds=30, warmup_rounds=5, iterations=1)
# int8-edgeclip: static image (the recipe) + dynamic text (its default); int8-static-text: the recipe's static text.
ORT_ROWS = ("fp32", "int8-default", "int8-edgeclip", "int8-static-text", "int8-dynamic", "fp16")


@pytest.fixture(scope="module")
def setup(mc2s0: dict):
    """fp32 bundle of random-weight MobileCLIP2-S0; fp16 and int8 files made from its encoders; one real input."""
    import warnings

    from edgeclip.calibration import build_calibration_set, feeds
    from edgeclip.data.shapes import ShapesDataset, write_image_folder
    from edgeclip.export.onnx_quant import gate_inputs, lower_precision, parse_options
    from edgeclip.export.quantize import quantize_dynamic_int8, quantize_static_int8

    root, bundle = mc2s0["root"], mc2s0["bundle"]
    m = bundle.manifest
    fp32 = (bundle.path / m.encoders["image"].file, bundle.path / m.encoders["text"].file)
    folder = write_image_folder(ShapesDataset("train", size=256, seed=3), root / "calib", 80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calib, _ = build_calibration_set(folder, m.preprocess, count=80)
    files = {"fp32": fp32}
    for name, precision, options in (("int8-edgeclip", "int8", {"calibration": [folder]}), ("fp16", "fp16", {})):
        out = (root / f"{name}-image.onnx", root / f"{name}-text.onnx")
        lower_precision(fp32, out, parse_options(precision, options), calib if precision == "int8" else None,
                        m.preprocess, bundle.tokenizer)
        files[name] = out
    inputs = gate_inputs(calib, m.preprocess, bundle.tokenizer)
    files["int8-default"] = (root / "default-image.onnx", root / "default-text.onnx")
    for i, batches in enumerate((inputs.image_feeds, inputs.text_feeds)):
        quantize_static_int8(fp32[i], files["int8-default"][i], batches, recipe="default")
    files["int8-static-text"] = (files["int8-edgeclip"][0], root / "static-text.onnx")
    quantize_static_int8(fp32[1], files["int8-static-text"][1], inputs.text_feeds, recipe="edgeclip-text")
    files["int8-dynamic"] = (root / "dynamic-image.onnx", root / "dynamic-text.onnx")
    for i in range(2):
        quantize_dynamic_int8(fp32[i], files["int8-dynamic"][i])
    calib_feeds = {"image": feeds({"pixels": calib.pixels[:64]}), "text": inputs.text_feeds[:64]}
    return {"files": files, "pixels": mc2s0["pixels"], "tokens": mc2s0["tokens"], "bundle": bundle,
            "calib": calib_feeds}


def _group(role: str) -> str:
    return f"{ARCH} {role} encoder, batch 1, {THREADS} threads (quantization)"


def _x(setup, role: str) -> tuple[str, np.ndarray]:
    return ("pixels", setup["pixels"]) if role == "image" else ("token_ids", setup["tokens"])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("row", ORT_ROWS)
@pytest.mark.parametrize("role", ["image", "text"])
def test_onnxruntime(benchmark, setup, role: str, row: str) -> None:
    import onnxruntime

    from edgeclip.runtimes.backends.ort import session_options

    if row == "int8-static-text" and role == "image":
        pytest.skip("a text-only row: its image encoder is int8-edgeclip's")
    benchmark.group = _group(role)
    benchmark.extra_info["baseline"] = row == "fp32"
    path = setup["files"][row][0 if role == "image" else 1]
    session = onnxruntime.InferenceSession(str(path), session_options(THREADS), providers=["CPUExecutionProvider"])
    reference = onnxruntime.InferenceSession(str(setup["files"]["fp32"][0 if role == "image" else 1]),
                                             providers=["CPUExecutionProvider"])
    name, x = _x(setup, role)
    benchmark.extra_info["cosine_vs_fp32"] = _cosine(session.run(None, {name: x})[0], reference.run(None, {name: x})[0])
    benchmark.pedantic(lambda: session.run(None, {name: x}), **ROUNDS)


# "fp32" forces f32; "default" is what users get (bf16 on this CPU: not fp32 arithmetic); "nncf-int8" is NNCF's
# default post-training quantization (TRANSFORMER model type for the text tower) calibrated on the same images.
OPENVINO_ROWS = ("fp32", "default", "nncf-int8")


@pytest.mark.parametrize("row", OPENVINO_ROWS)
@pytest.mark.parametrize("role", ["image", "text"])
def test_openvino_same_onnx(benchmark, setup, role: str, row: str) -> None:
    ov = pytest.importorskip("openvino", reason="OpenVINO is the optional peer: pip install 'edgeclip[bench]'")
    benchmark.group = _group(role)
    core = ov.Core()
    model = core.read_model(str(setup["files"]["fp32"][0 if role == "image" else 1]))
    config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
    if row == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if row == "nncf-int8":
        nncf = pytest.importorskip("nncf", reason="NNCF int8: pip install 'edgeclip[bench]'")
        batches = [next(iter(b.values())) for b in setup["calib"][role]]
        kind = nncf.ModelType.TRANSFORMER if role == "text" else None
        model = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), model_type=kind)
    compiled = core.compile_model(model, "CPU", config)
    benchmark.extra_info["openvino_inference_precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    request = compiled.create_infer_request()
    name, x = _x(setup, role)
    ours = setup["bundle"].encoder(role).run({name: x})[0]
    benchmark.extra_info["cosine_vs_fp32"] = _cosine(ours, request.infer({0: x})[compiled.output(0)])
    benchmark.pedantic(lambda: request.infer({0: x}), **ROUNDS)
