"""TensorRT target: the Q/DQ graphs it builds from (checked here, in ONNX Runtime), its options, its refusal without
an NVIDIA GPU, the manifest's TensorRT record and the backend. Engine tests run only where TensorRT sees a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from edgeclip.data.shapes import ShapesDataset, write_image_folder
from edgeclip.errors import BundleError, ExportError, RuntimeUnavailable, UsageError
from edgeclip.export import export_bundle
from edgeclip.export.parity import sample_images
from edgeclip.export.targets import get_target
from edgeclip.export.targets.tensorrt import parse_options
from edgeclip.precision.gate import run_onnx_cpu
from edgeclip.precision.qdq import check_tensorrt_qdq, quantize_for_tensorrt
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.backends import RuntimeOptions, backend_for_target
from edgeclip.runtimes.backends.tensorrt import TensorRTBackend, tensorrt_unavailable
from edgeclip.runtimes.manifest import BundleManifest, EncoderSpec, TensorRTRecord, TensorSpec
from edgeclip.runtimes.preprocess import preprocess
from tests.conftest import TINY, cosine_rows

UNAVAILABLE = tensorrt_unavailable()
needs_gpu = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"TensorRT engine test: {UNAVAILABLE}")
no_gpu = pytest.mark.skipif(UNAVAILABLE is None, reason="this machine can build TensorRT engines")


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(ShapesDataset("train", size=64, seed=9), tmp_path_factory.mktemp("trt") / "imgs", 64)


@pytest.fixture(scope="module")
def ready_bundle(calib_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's TensorRT-ready int8 graphs (--onnx-only), written as a bundle."""
    out = tmp_path_factory.mktemp("trt") / "ready.edgeclip"
    export_bundle(
        TINY,
        output=out,
        target="tensorrt",
        precision="int8",
        random_init=True,
        target_options={"calibration": calib_folder, "onnx_only": True, "max_batch": 16},
    )
    return out


def assert_tensorrt_qdq(path: Path) -> int:
    """What TensorRT's explicit int8 reads, checked straight from the file; the number of quantized weights."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, "non-standard ops"
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes"
    weights = 0
    for node in qdq:
        zero = inits[node.input[2]]
        assert zero.data_type == TensorProto.INT8, (node.name, zero.data_type)
        assert not numpy_helper.to_array(zero).any(), node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a weight: int8, one scale per channel
            weights += 1
            weight, scale = inits[node.input[0]], numpy_helper.to_array(inits[node.input[1]])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            assert weight.data_type == TensorProto.INT8
            assert scale.size == weight.dims[axis] > 1, (node.name, scale.shape, list(weight.dims), axis)
    # int8 weights feed only the ops the recipe quantizes. (A quantized activation may also reach a residual Add
    # or a Shape: ONNX Runtime's quantizer routes every reader of the tensor through its one Q/DQ pair.)
    weight_dq = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    weight_ops = {n.op_type for n in model.graph.node if weight_dq & set(n.input)}
    assert weight_ops and weight_ops <= {"Conv", "MatMul", "Gemm"}, weight_ops
    return weights


# --- the Q/DQ graph ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ready_bundle_holds_tensorrt_qdq_graphs_that_match_fp32(ready_bundle: Path, tiny_bundle: Path, photos) -> None:
    ready, fp32 = load_bundle(ready_bundle), load_bundle(tiny_bundle)
    assert ready.manifest.source.weights_sha256 == fp32.manifest.source.weights_sha256  # same random weights
    m = ready.manifest
    assert (m.target, m.precision) == ("tensorrt", "int8")
    for role in ("image", "text"):
        assert assert_tensorrt_qdq(ready_bundle / m.encoders[role].file) > 0
        stage = m.target_info["onnx_stage"][role]
        assert stage["vs_fp32_onnxruntime"]["min_cosine"] >= 0.99 and stage["domains"] == ["ai.onnx"]
    pixels = preprocess(list(photos.values()), m.preprocess)
    image = cosine_rows(
        run_onnx_cpu(tiny_bundle / fp32.manifest.encoders["image"].file, {"pixels": pixels}),
        run_onnx_cpu(ready_bundle / m.encoders["image"].file, {"pixels": pixels}),
    )
    tokens = fp32.tokenizer.encode(["a photo of a cat", "a red circle", "an astronaut"])
    text = cosine_rows(
        run_onnx_cpu(tiny_bundle / fp32.manifest.encoders["text"].file, {"token_ids": tokens}),
        run_onnx_cpu(ready_bundle / m.encoders["text"].file, {"token_ids": tokens}),
    )
    print(f"\ntiny Q/DQ vs fp32 in ONNX Runtime: image min cosine {image.min():.5f}, text {text.min():.5f}")
    assert image.min() >= 0.99 and text.min() >= 0.99
    assert m.calibration["recipe"].startswith("tensorrt") and m.calibration["set"]["images"] == 64
    # The manifest tells the device how to build each engine from these graphs.
    image_line = m.target_info["trtexec"]["image"]
    assert "--stronglyTyped" in image_line and "--maxShapes=pixels:16x3x64x64" in image_line
    assert "--optShapes=pixels:8x3x64x64" in image_line and "--memPoolSize=workspace:2048M" in image_line


@pytest.mark.slow
def test_fp16_ready_graphs_are_float16_with_float32_io(tmp_path: Path, tiny_bundle: Path, photos) -> None:
    out = tmp_path / "fp16.edgeclip"
    m = export_bundle(
        TINY, output=out, target="tensorrt", precision="fp16", random_init=True, target_options={"onnx_only": True}
    ).manifest
    model = onnx.load(str(out / m.encoders["image"].file))
    kinds = {t.data_type for t in model.graph.initializer if len(t.dims) >= 2}
    assert kinds == {TensorProto.FLOAT16}, kinds  # the graph carries the precision: TensorRT builds it strongly typed
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*model.graph.input, *model.graph.output])
    assert not any(n.op_type == "QuantizeLinear" for n in model.graph.node) and m.calibration is None
    pixels = preprocess(list(photos.values()), m.preprocess)
    fp32 = load_bundle(tiny_bundle).manifest.encoders["image"].file
    cos = cosine_rows(
        run_onnx_cpu(tiny_bundle / fp32, {"pixels": pixels}),
        run_onnx_cpu(out / m.encoders["image"].file, {"pixels": pixels}),
    )
    assert cos.min() >= 0.999 and m.target_info["onnx_stage"]["text"]["vs_fp32_onnxruntime"]["min_cosine"] >= 0.999


@pytest.mark.slow
def test_ready_bundle_cannot_run_as_engines(ready_bundle: Path, photos) -> None:
    bundle = load_bundle(ready_bundle)
    with pytest.raises(RuntimeUnavailable, match="TensorRT-ready ONNX graph .* not an engine"):
        bundle.encode_image(list(photos.values()))


def test_check_refuses_onnxruntime_int8_graphs(tiny_bundle: Path, tmp_path: Path) -> None:
    """edgeclip's ORT recipe (uint8 activations, com.microsoft FastGelu) is not a TensorRT graph: the check says why."""
    from edgeclip.precision.static import quantize_static_int8

    spec = load_bundle(tiny_bundle).manifest.preprocess
    pixels = preprocess(sample_images(4), spec)
    feeds = [{"pixels": pixels[i : i + 1]} for i in range(len(pixels))]
    ort_graph = tmp_path / "ort.onnx"
    quantize_static_int8(tiny_bundle / "image_encoder.onnx", ort_graph, feeds, recipe="edgeclip-image")
    with pytest.raises(ExportError, match=r"node \S+ \(com.microsoft.(Fast)?Gelu\) is not a standard ONNX op"):
        check_tensorrt_qdq(ort_graph)
    # Asymmetric uint8 activations (the ORT recipe's), in a graph of standard ops.
    from onnx import helper

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q0"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq0"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        inits,
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "u8.onnx"))
    with pytest.raises(ExportError, match=r"QuantizeLinear q0 has zero point UINT8 \[128\]: TensorRT needs int8 0"):
        check_tensorrt_qdq(tmp_path / "u8.onnx")
    with pytest.raises(ExportError, match="holds no QuantizeLinear"):
        check_tensorrt_qdq(tiny_bundle / "image_encoder.onnx")


@pytest.mark.slow
def test_mobileclip2_s0_image_encoder_qdq(tmp_path: Path, photos) -> None:
    """The real MobileCLIP2-S0 image tower (random weights): a TensorRT Q/DQ graph that matches fp32 in ORT."""
    import torch
    from PIL import Image
    from timm.utils.model import reparameterize_model

    from edgeclip.export.onnx_graph import export_onnx_graph
    from edgeclip.models.encoders import ImageEncoder
    from edgeclip.models.loading import load_model
    from edgeclip.models.preprocess import preprocess_spec_for

    deploy = reparameterize_model(load_model("MobileCLIP2-S0", random_init=True).model.eval(), inplace=False)
    spec, _ = preprocess_spec_for("MobileCLIP2-S0", None, None)
    shapes = ShapesDataset("train", size=96, seed=3)
    calib = preprocess([Image.fromarray(shapes[i].image) for i in range(16)], spec)
    held = preprocess(list(photos.values()), spec)
    fp32, q = tmp_path / "fp32.onnx", tmp_path / "qdq.onnx"
    export_onnx_graph(
        ImageEncoder(deploy).eval(), torch.from_numpy(held[:2]), fp32, input_name="pixels", output_name="embeddings"
    )
    nodes = quantize_for_tensorrt(fp32, q, [{"pixels": calib[i : i + 1]} for i in range(len(calib))])
    weights = assert_tensorrt_qdq(q)
    assert weights == len(nodes) >= 50  # every Conv and linear layer of the tower got per-channel int8 weights
    cos = cosine_rows(run_onnx_cpu(fp32, {"pixels": held}), run_onnx_cpu(q, {"pixels": held}))
    print(f"\nMobileCLIP2-S0 image Q/DQ ({len(nodes)} nodes) vs fp32 in ONNX Runtime: min cosine {cos.min():.5f}")
    assert cos.min() >= 0.99


# --- options and refusal -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "options", "message"),
    [
        ("fp16", {"max_batch": 0}, "max_batch 0: expected a whole number from 1 to 4096"),
        ("fp16", {"max_batch": True}, "max_batch True"),
        ("fp16", {"max_batch": 8, "opt_batch": 16}, "opt_batch 16 is larger than max_batch 8"),
        ("fp16", {"workspace": "2G"}, "workspace '2G'"),
        ("int8", {}, "needs --calibration"),
        ("fp16", {"calibration": "calib.npz"}, "only applies to --precision int8"),
        ("int8", {"calibration": "missing.npz"}, "calibration missing.npz does not exist"),
        ("int8", {"calibration": "x", "calibration_method": "mse"}, "calibration_method 'mse': expected one of minmax"),
    ],
)
def test_options_are_validated(precision: str, options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_options(precision, options)


def test_defaults_and_unknown_options() -> None:
    opts = parse_options("fp16", {"max_batch": "64"})
    assert (opts.max_batch, opts.opt_batch, opts.workspace, opts.onnx_only) == (64, 32, 2048, False)
    from edgeclip.export.options import ExportOptions

    with pytest.raises(UsageError, match="no option 'max_batchs'.*did you mean 'max_batch'"):
        get_target("tensorrt").validate_options(ExportOptions("tensorrt", "fp16", target_options={"max_batchs": 8}))
    with pytest.raises(UsageError, match="does not support precision 'fp32'"):
        export_bundle(TINY, output="unused.edgeclip", target="tensorrt", precision="fp32", random_init=True)


@no_gpu
def test_target_stops_before_loading_the_model_without_a_gpu(tmp_path: Path) -> None:
    steps: list[str] = []
    with pytest.raises(RuntimeUnavailable) as err:
        export_bundle(TINY, output=tmp_path / "x.edgeclip", target="tensorrt", random_init=True, on_step=steps.append)
    message = str(err.value)
    assert "NVIDIA GPU" in message and "--onnx-only" in message and "\n" not in message, message
    assert steps == [] and list(tmp_path.iterdir()) == []  # nothing loaded, nothing written


@no_gpu
def test_cli_refuses_in_one_line(tmp_path: Path) -> None:
    from edgeclip.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "export",
            "-m",
            TINY,
            "--random-init",
            "-t",
            "tensorrt",
            "--max-batch",
            "8",
            "-o",
            str(tmp_path / "x.edgeclip"),
        ],
    )
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--onnx-only" in lines[0], result.output
    bad = CliRunner().invoke(
        cli,
        [
            "export",
            "-m",
            TINY,
            "--random-init",
            "-t",
            "tensorrt",
            "--max-batch",
            "0",
            "-o",
            str(tmp_path / "y.edgeclip"),
        ],
    )
    assert bad.exit_code == 2 and "--max-batch" in bad.output


# --- manifest record and backend --------------------------------------------------------------------------------


def test_manifest_round_trips_the_tensorrt_record(tiny_bundle: Path) -> None:
    record = TensorRTRecord("10.13.0.35", "NVIDIA Jetson AGX Orin", "8.7", (1, 16, 32), 2048)
    manifest = load_bundle(tiny_bundle).manifest
    data = manifest.to_dict()
    data["target_info"] = {**data["target_info"], "tensorrt": record.to_dict()}
    again = BundleManifest.from_json(json.dumps(data))
    assert TensorRTRecord.from_dict(again.target_info["tensorrt"]) == record
    assert again.format_version == manifest.format_version  # an optional field: format 1.x readers ignore it
    assert record.mismatch("10.13.0.35", "NVIDIA Jetson AGX Orin", "8.7") is None
    assert "built with TensorRT 10.13.0.35, and this is TensorRT 10.3.0" in record.mismatch("10.3.0", "x", "8.7")
    assert "compute capability 8.7), and this GPU is NVIDIA H200 (compute capability 9.0)" in record.mismatch(
        "10.13.0.35", "NVIDIA H200", "9.0"
    )
    with pytest.raises(BundleError, match=r"batch_profile is \[1, 32\]"):
        TensorRTRecord.from_dict({**record.to_dict(), "batch_profile": [1, 32]})
    with pytest.raises(BundleError, match="lacks the field 'gpu_name'"):
        TensorRTRecord.from_dict({k: v for k, v in record.to_dict().items() if k != "gpu_name"})


@no_gpu
def test_backend_is_registered_and_unavailable_here(tmp_path: Path) -> None:
    assert backend_for_target("tensorrt").name == "tensorrt"
    engine = tmp_path / "image_encoder.engine"
    engine.write_bytes(b"not an engine")
    spec = EncoderSpec(
        engine.name,
        "",
        (TensorSpec("pixels", ("batch", 3, 8, 8), "float32"),),
        (TensorSpec("embeddings", ("batch", 4), "float32"),),
    )
    with pytest.raises(RuntimeUnavailable, match="image_encoder.engine needs an NVIDIA GPU with TensorRT: "):
        TensorRTBackend(engine, spec, RuntimeOptions())


def test_backend_module_is_torch_free() -> None:
    code = (
        "import sys\nfor m in ('torch', 'open_clip', 'timm'): sys.modules[m] = None\n"
        "import edgeclip.runtimes.backends.tensorrt as t\nprint(t.tensorrt_unavailable())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# --- on an NVIDIA GPU ----------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engines_build_run_and_refuse_another_device(
    precision: str, calib_folder: Path, tmp_path: Path, photos
) -> None:
    options = {"max_batch": 8, "workspace": 1024, "timing_cache": tmp_path / "cache.timing"}
    if precision == "int8":
        options["calibration"] = calib_folder
    out = tmp_path / f"{precision}.edgeclip"
    result = export_bundle(
        TINY, output=out, target="tensorrt", precision=precision, random_init=True, target_options=options
    )
    m = result.manifest
    record = TensorRTRecord.from_dict(m.target_info["tensorrt"])
    assert record.batch_profile == (1, 4, 8) and record.gpu_name and record.compute_capability
    floor = {"fp16": 0.999, "int8": 0.99}[precision]
    assert all(p["min_cosine"] >= floor for p in m.target_info["parity_vs_onnxruntime_fp32"].values())
    assert all(e.parity is not None and e.parity.min_cosine >= floor for e in m.encoders.values())
    assert (tmp_path / "cache.timing").stat().st_size > 0
    bundle = load_bundle(out)
    images = list(photos.values()) * 4  # 12 images: more than max_batch, run in pieces
    assert bundle.encode_image(images).shape == (12, m.embed_dim)
    data = json.loads((out / "manifest.json").read_text())
    data["target_info"]["tensorrt"]["gpu_name"] = "Some Other GPU"
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="built for Some Other GPU .* re-export the bundle on this device"):
        load_bundle(out).encode_image(images[:1])
