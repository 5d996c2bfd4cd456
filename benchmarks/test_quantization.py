"""ONNX fp32 vs int8 (ORT's default quantize_static and the edgeclip recipe) vs fp16, with OpenVINO f32, OpenVINO
default (bf16 on CPUs with AVX512_BF16/AMX) and NNCF int8 on the same ONNX file as the peers to beat.

MobileCLIP2-S0 (random weights: speed only; accuracy is benchmarks/quantization_accuracy.py), batch 1, 2 threads,
image and text encoders. The fp32 row is each group's baseline; the table at the end gives the speed-ups.

Run: .venv/bin/python -m pytest benchmarks/test_quantization.py --benchmark-only
pytest-benchmark times one row after another; benchmarks/quantization_speed.py times the same files with every row
in every round, which keeps the ratios when a shared machine's load comes and goes, and says where the time goes.
Goal (issue 4): edgeclip int8 >= 2.0x faster than ONNX fp32 and faster than OpenVINO's int8.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.conftest import THREADS
from benchmarks.mc2s0 import ARCH, ORT_ROWS, build_quantized, nncf_int8

ROUNDS = dict(rounds=30, warmup_rounds=5, iterations=1)


@pytest.fixture(scope="module")
def setup(mc2s0: dict):
    """fp32 bundle of random-weight MobileCLIP2-S0; fp16 and int8 files made from its encoders; one real input."""
    built = build_quantized(mc2s0["root"], mc2s0["bundle"])
    return {**built, "pixels": mc2s0["pixels"], "tokens": mc2s0["tokens"], "bundle": mc2s0["bundle"]}


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
    reference = onnxruntime.InferenceSession(
        str(setup["files"]["fp32"][0 if role == "image" else 1]), providers=["CPUExecutionProvider"]
    )
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
        pytest.importorskip("nncf", reason="NNCF int8: pip install 'edgeclip[bench]'")
        model = nncf_int8(model, setup["calib"][role], role)
    compiled = core.compile_model(model, "CPU", config)
    benchmark.extra_info["openvino_inference_precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    request = compiled.create_infer_request()
    name, x = _x(setup, role)
    ours = setup["bundle"].encoder(role).run({name: x})[0]
    benchmark.extra_info["cosine_vs_fp32"] = _cosine(ours, request.infer({0: x})[compiled.output(0)])
    benchmark.pedantic(lambda: request.infer({0: x}), **ROUNDS)
