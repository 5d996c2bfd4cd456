"""ONNX int8 / fp16 export: real quantization with ONNX Runtime, the accuracy gate, bad input, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner

from edgeclip.calibration import build_calibration_set, resolve_calibration
from edgeclip.data.shapes import ShapesDataset, write_image_folder
from edgeclip.errors import ExportError, UsageError
from edgeclip.export import export_bundle
from edgeclip.export.targets.onnx import parse_options
from edgeclip.precision.lower import lower_precision
from edgeclip.precision.recipes import RECIPES
from edgeclip.precision.rewrites import fuse_gelu
from edgeclip.precision.static import quantize_static_int8, quantized_nodes
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.preprocess import PreprocessSpec
from edgeclip.runtimes.tokenizer import Tokenizer

TINY = "EdgeCLIP-Tiny-ViT"


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(ShapesDataset("train", size=64, seed=9), tmp_path_factory.mktemp("q") / "imgs", 72)


@pytest.fixture(scope="module")
def calib_npz(tiny_bundle: Path, calib_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = load_bundle(tiny_bundle).manifest.preprocess
    calib, _ = build_calibration_set(calib_folder, spec, count=72, seed=0)
    return calib.save(tmp_path_factory.mktemp("q") / "calib.npz")


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _lower(tiny_bundle: Path, out_dir: Path, precision: str, calib_npz: Path | None, **options):
    """Run the target's fp16/int8 step on the tiny bundle's fp32 files (no PyTorch export needed)."""
    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    if calib_npz is not None:
        options["calibration"] = calib_npz
    request = parse_options(precision, options)
    calib = resolve_calibration(request.calibration, m.preprocess) if request.calibration else None
    tokenizer = Tokenizer.from_file(tiny_bundle / m.tokenizer.file, m.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = (tiny_bundle / m.encoders["image"].file, tiny_bundle / m.encoders["text"].file)
    out = (out_dir / "image.onnx", out_dir / "text.onnx")
    return lower_precision(fp32, out, request, calib, m.preprocess, tokenizer), out


@pytest.mark.slow
def test_int8_export_from_the_cli_records_calibration_and_gate(
    calib_npz: Path, tmp_path: Path, photo_files: list[Path]
) -> None:
    from edgeclip.calibration import load_calibration_set
    from edgeclip.cli import cli

    out = tmp_path / "int8.edgeclip"
    args = ["export", "-m", TINY, "--random-init", "--precision", "int8", "--calibration", str(calib_npz),
            "-o", str(out), "--max-cosine-drop", "0.05", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # torch.onnx prints progress lines on stdout before the JSON document
    document = result.output[result.output.index("\n{\n") + 1 :] if not result.output.startswith("{") else result.output
    manifest = json.loads(document)["manifest"]
    record = manifest["calibration"]
    assert manifest["precision"] == "int8" and record["mode"] == "static" and record["format"] == "QDQ"
    assert record["set"]["id"] == load_calibration_set(calib_npz).id
    gate = record["gate"]
    assert gate["passed"] and gate["image"]["samples"] > 10 and 0.95 < gate["image"]["mean_cosine"] < 1.0
    assert gate["image"]["p1_cosine"] <= gate["image"]["mean_cosine"] and 0.0 <= gate["top1_agreement"] <= 1.0
    assert 1 <= gate["reference_labels"] <= min(gate["labels"], gate["image"]["samples"])
    assert manifest["encoders"]["image"]["parity"]["min_cosine"] >= 0.99  # the int8 floor against PyTorch
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out / "image_encoder.onnx")
    # the text encoder is dynamic int8 by default (measured faster and closer to fp32 than static)
    assert record["text_int8"] == "dynamic" and "MatMulInteger" in _ops(out / "text_encoder.onnx")
    assert record["recipes"] == {"image": "edgeclip-image"} and "tanh GELU" in record["recipe_details"]["image"]
    assert "QuantizeLinear" not in _ops(out / "text_encoder.onnx") and gate["text"]["mean_cosine"] > 0.95
    bundle = load_bundle(out, verify=True)
    assert bundle.encode_image(photo_files).shape == (3, bundle.embed_dim)


@pytest.mark.slow
def test_cli_export_prints_calibration_warnings_as_single_lines(tmp_path: Path) -> None:
    """A folder calibration's warnings (too few images, an unreadable one) reach the user as `warning:` lines."""
    from edgeclip.cli import cli

    folder = write_image_folder(ShapesDataset(split="train", size=64, seed=0), tmp_path / "imgs", 8)
    (folder / "broken.jpg").write_text("not an image")
    args = ["export", "-m", TINY, "--random-init", "--precision", "int8", "--calibration", str(folder),
            "-o", str(tmp_path / "int8.edgeclip")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("has only 8 images (fewer than 64)" in line for line in warned), result.stderr
    assert any("skipped 1 unreadable images" in line and "broken.jpg" in line for line in warned), result.stderr
    assert "UserWarning" not in result.stderr and "build_calibration_set(" not in result.stderr


def test_fp16_keeps_float32_io(tiny_bundle: Path, tmp_path: Path) -> None:
    record, out = _lower(tiny_bundle, tmp_path, "fp16", None)
    model = onnx.load(str(out[0]))
    dtypes = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    gate = record["gate"]
    assert gate["image"]["mean_cosine"] > 0.999 and gate["text"]["mean_cosine"] > 0.999 and gate["passed"]
    session = onnxruntime.InferenceSession(str(out[1]), providers=["CPUExecutionProvider"])
    assert session.run(None, {"token_ids": np.ones((2, 77), np.int64)})[0].dtype == np.float32


def test_int8_needs_calibration_unless_dynamic(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs --calibration"):
        export_bundle(TINY, output=tmp_path / "a", random_init=True, precision="int8")
    with pytest.raises(UsageError, match="only applies to --precision int8"):
        export_bundle(TINY, output=tmp_path / "b", random_init=True, precision="fp16", target_options={"dynamic": True})
    with pytest.raises(UsageError, match="does not exist"):
        parse_options("int8", {"calibration": [tmp_path / "missing.npz"]})
    with pytest.raises(UsageError, match="calibration_method 'kl': expected one of minmax"):
        parse_options("int8", {"calibration": [tmp_path], "calibration_method": "kl"})
    with pytest.raises(UsageError, match="drop --calibration"):
        parse_options("int8", {"calibration": [tmp_path], "dynamic": True})
    with pytest.raises(UsageError, match="text_int8 'fast': expected one of dynamic, static"):
        parse_options("int8", {"calibration": [tmp_path], "text_int8": "fast"})
    with pytest.raises(UsageError, match="--text-int8 chooses how static int8"):
        parse_options("int8", {"dynamic": True, "text_int8": "static"})
    assert not (tmp_path / "a").exists()


def test_calibration_for_other_preprocessing_is_refused(calib_folder: Path, tmp_path: Path) -> None:
    other = PreprocessSpec((32, 32), "shortest", "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    calib, _ = build_calibration_set(calib_folder, other, count=64)
    path = calib.save(tmp_path / "other.npz")
    with pytest.raises(UsageError, match=r"made for preprocessing 32x32 .* expects 64x64"):
        export_bundle(
            TINY, output=tmp_path / "x", random_init=True, precision="int8", target_options={"calibration": [path]}
        )
    assert not (tmp_path / "x").exists()


def test_dynamic_int8_needs_no_calibration(tiny_bundle: Path, tmp_path: Path) -> None:
    record, out = _lower(tiny_bundle, tmp_path, "int8", None, dynamic=True)
    assert record["mode"] == "dynamic" and record["gate"]["text"]["mean_cosine"] > 0.95
    assert "DynamicQuantizeLinear" in _ops(out[1]) or "MatMulInteger" in _ops(out[1])
    assert record["recipes"] == {"image": "matmul", "text": "edgeclip-dynamic"} and "QAttention" in _ops(out[1])


def test_gate_fails_the_export_when_the_drop_is_too_large(tiny_bundle: Path, calib_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"accuracy gate failed: (image|text) encoder mean cosine"):
        _lower(tiny_bundle, tmp_path, "int8", calib_npz, max_cosine_drop=0.0)


@pytest.mark.slow
def test_auto_exclude_keeps_the_worst_nodes_in_float(tiny_bundle: Path, calib_npz: Path, tmp_path: Path) -> None:
    plain, out = _lower(tiny_bundle, tmp_path / "plain", "int8", calib_npz, text_int8="static")
    assert plain["text_int8"] == "static" and {"QuantizeLinear", "DequantizeLinear"} <= _ops(out[1])
    drop = 1 - plain["gate"]["text"]["mean_cosine"]
    assert drop > 0
    record, out = _lower(
        tiny_bundle,
        tmp_path / "auto",
        "int8",
        calib_npz,
        auto_exclude=True,
        max_cosine_drop=drop / 2,
        text_int8="static",
    )
    assert record["gate"]["passed"] and record["excluded_nodes"]["text"]
    assert 1 - record["gate"]["text"]["mean_cosine"] <= drop / 2
    still = {n.name for n in onnx.load(str(out[1])).graph.node if n.op_type == "DequantizeLinear"}
    assert still  # some nodes are still int8


def test_recipe_quantizes_linear_layers_not_attention_products(
    tiny_bundle: Path, calib_npz: Path, tmp_path: Path
) -> None:
    from edgeclip.calibration import feeds, load_calibration_set

    image = tiny_bundle / "image_encoder.onnx"
    nodes = quantized_nodes(image, RECIPES["edgeclip-image"])
    model = onnx.load(str(image))
    inits = {t.name for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    # Convs and linear layers with constant weights; a ViT's residual Adds stay float (conv residuals: next test).
    assert nodes and all(by_name[n].input[1] in inits for n in nodes)
    assert not any(by_name[n].op_type == "Add" for n in nodes)
    attention = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in inits]
    assert not set(attention) & set(nodes)
    calib = load_calibration_set(calib_npz)
    quantize_static_int8(image, tmp_path / "q.onnx", feeds({"pixels": calib.pixels[:8]}), method="percentile")
    session = onnxruntime.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"pixels": calib.pixels[:2]})[0].shape[0] == 2
    ops = _ops(tmp_path / "q.onnx")
    assert "FastGelu" in ops and "Erf" not in ops  # the image recipe's tanh GELU


def test_image_recipe_takes_conv_residual_adds_not_biases(tmp_path: Path) -> None:
    """In a conv block `x + conv(x)` the Add is quantized (the chain stays int8); `y + bias` and `x + x` are not."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w_dw": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "w_pw": rng.normal(size=(4, 4, 1, 1)).astype(np.float32),
        "bias": rng.normal(size=(1, 4, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w_dw"], ["dw"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["dw", "w_pw"], ["pw"], name="pw"),
        helper.make_node("Add", ["x", "pw"], ["res"], name="residual"),
        helper.make_node("Add", ["res", "bias"], ["biased"], name="bias_add"),
        helper.make_node("Add", ["x", "x"], ["y"], name="plain_add"),
        helper.make_node("Add", ["biased", "y"], ["out"], name="merge"),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    path = tmp_path / "block.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert quantized_nodes(path, RECIPES["edgeclip-image"]) == ["dw", "pw", "residual"]


def test_fuse_gelu_is_exact(tiny_bundle: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_bundle / "text_encoder.onnx"))
    erf_before = sum(n.op_type == "Erf" for n in model.graph.node)
    fused = fuse_gelu(model)
    assert erf_before and fused == erf_before and not any(n.op_type == "Erf" for n in model.graph.node)
    onnx.save(model, str(tmp_path / "fused.onnx"))
    tokens = np.random.default_rng(0).integers(1, 1000, size=(3, 77)).astype(np.int64)
    run = {
        p: onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"token_ids": tokens})
        for p in (tiny_bundle / "text_encoder.onnx", tmp_path / "fused.onnx")
    }
    a, b = run.values()
    assert np.allclose(a[0], b[0], atol=1e-5)


def test_fuse_gelu_tanh_form_is_close_and_bad_form_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_bundle / "text_encoder.onnx"))
    assert fuse_gelu(model, "tanh") and "FastGelu" in {n.op_type for n in model.graph.node}
    onnx.save(model, str(tmp_path / "tanh.onnx"))
    tokens = np.random.default_rng(1).integers(1, 1000, size=(3, 77)).astype(np.int64)
    a, b = (
        onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"token_ids": tokens})[0]
        for p in (tiny_bundle / "text_encoder.onnx", tmp_path / "tanh.onnx")
    )
    assert not np.array_equal(a, b) and float((a * b).sum(1).min()) > 0.9999  # L2-normalized outputs
    with pytest.raises(ValueError, match="GELU form 'cubic' is unknown"):
        fuse_gelu(onnx.load(str(tiny_bundle / "text_encoder.onnx")), "cubic")


def _gelu_block(path: Path, zero_point_type: type = np.uint8) -> Path:
    """uint8 input -> DequantizeLinear -> FastGelu -> QuantizeLinear -> DequantizeLinear -> float output."""
    from onnx import TensorProto, helper, numpy_helper

    zp = np.asarray(0, np.int8) if zero_point_type == np.int8 else np.asarray(128, np.uint8)
    inits = [numpy_helper.from_array(np.asarray(0.03, np.float32), "s_in"), numpy_helper.from_array(zp, "z_in"),
             numpy_helper.from_array(np.asarray(0.02, np.float32), "s_out"),
             numpy_helper.from_array(np.asarray(10, zp.dtype), "z_out")]  # fmt: skip
    nodes = [helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["x"], name="dq"),
             helper.make_node("FastGelu", ["x"], ["g"], name="gelu", domain="com.microsoft"),
             helper.make_node("QuantizeLinear", ["g", "s_out", "z_out"], ["gq"], name="q"),
             helper.make_node("DequantizeLinear", ["gq", "s_out", "z_out"], ["out"], name="dq_out")]  # fmt: skip
    elem = TensorProto.UINT8 if zp.dtype == np.uint8 else TensorProto.INT8
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("xq", elem, [256])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [256])], inits)  # fmt: skip
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(path))
    return path


def test_quick_gelu_runs_in_uint8_and_matches_quick_gelu(tmp_path: Path) -> None:
    from edgeclip.precision.rewrites import QUICK_GELU_ALPHA, quantized_quick_gelu

    model = onnx.load(str(_gelu_block(tmp_path / "gelu.onnx")))
    assert quantized_quick_gelu(model) == 1
    assert {n.op_type for n in model.graph.node} == {"QLinearSigmoid", "QLinearMul", "DequantizeLinear"}
    onnx.save(model, str(tmp_path / "quick.onnx"))
    xq = np.arange(256, dtype=np.uint8)
    got = onnxruntime.InferenceSession(str(tmp_path / "quick.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"xq": xq})[0]  # fmt: skip
    x = 0.03 * (xq.astype(np.float32) - 128)
    want = x / (1 + np.exp(-QUICK_GELU_ALPHA * x))
    # the sigmoid's 1/255 step and the output's 0.02 step: within two output steps everywhere
    assert np.abs(got - np.clip(want, 0.02 * (0 - 10), 0.02 * (255 - 10))).max() < 0.04
    assert np.abs(got - want)[x > 0].max() > 0  # it is quantized, not float


def test_quick_gelu_leaves_int8_activations_alone(tmp_path: Path) -> None:
    from edgeclip.precision.rewrites import quantized_quick_gelu

    model = onnx.load(str(_gelu_block(tmp_path / "gelu8.onnx", np.int8)))
    assert quantized_quick_gelu(model) == 0 and "FastGelu" in {n.op_type for n in model.graph.node}


def _activation_scale(path: Path, tensor: str) -> float:
    """The scale of the QuantizeLinear that reads `tensor`."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(inits[q.input[1]])


def _two_convs(path: Path) -> Path:
    """x -> 1x1 conv (identity) -> h -> 1x1 conv -> y. TensorRT's recipe keeps the first node float; both quantize h."""
    from onnx import TensorProto, helper, numpy_helper

    w = [
        numpy_helper.from_array(np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1), "w1"),
        numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], w)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("huge", [False, True])
def test_fp16_names_clamped_large_weights_in_one_warning_and_drops_the_tiny_ones(tmp_path: Path, huge: bool) -> None:
    """The converter warns per clamped tensor: tiny values (hundreds on random MobileCLIP) and -inf masks are
    dropped, finite values beyond fp16's safe range come back as one warning."""
    import warnings

    from onnx import numpy_helper

    from edgeclip.precision.fp16 import convert_fp16

    src = _two_convs(tmp_path / "convs.onnx")
    model = onnx.load(str(src))
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t).copy()
        w.reshape(-1)[:2] = (1e-9, -1e-9)  # under fp16's smallest normal: clamped to +-1e-7, silently
        if t.name == "w1":
            w.reshape(-1)[2] = -np.inf  # an attention mask's value: clamped to -1e4, which still masks
        if huge and t.name == "w2":
            w.reshape(-1)[2] = 5e4
        t.CopyFrom(numpy_helper.from_array(w, t.name))
    onnx.save(model, str(src))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_fp16(src, tmp_path / "fp16.onnx")
    messages = [str(w.message) for w in caught]
    if huge:
        assert messages == [
            "fp16: 1 weight tensors of convs.onnx hold values beyond +-1e4 and were clamped; the "
            "accuracy gate measures what that costs"
        ]
    else:
        assert messages == []
    x = np.random.default_rng(0).normal(size=(1, 8, 16, 16)).astype(np.float32)
    y = onnxruntime.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    assert y.dtype == np.float32 and y.shape == x.shape


@pytest.mark.parametrize("path", ["onnx", "tensorrt"])
def test_entropy_calibration_clips_outliers_that_minmax_keeps(tmp_path: Path, path: str) -> None:
    """Entropy picks a range narrower than minmax when a few outliers stretch it (ORT's own call gave minmax's)."""
    from edgeclip.calibration import feeds
    from edgeclip.precision.qdq import quantize_for_tensorrt

    rng = np.random.default_rng(0)
    src = _two_convs(tmp_path / "convs.onnx")
    x = rng.normal(size=(16, 8, 16, 16)).astype(np.float32)
    x.reshape(-1)[rng.choice(x.size, 8, replace=False)] = 40.0  # 8 outliers in 32768 values
    calib = feeds({"x": x})
    scales = {}
    for method in ("minmax", "entropy"):
        out = tmp_path / f"{method}.onnx"
        if path == "onnx":
            quantize_static_int8(src, out, calib, recipe="edgeclip-image", method=method)
        else:
            quantize_for_tensorrt(src, out, calib, method=method)
        scales[method] = _activation_scale(out, "h")
    assert scales["entropy"] < 0.5 * scales["minmax"]
    session = onnxruntime.InferenceSession(str(tmp_path / "entropy.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x[:1]})[0].shape == (1, 8, 16, 16)


@pytest.mark.parametrize("method", ["percentile", pytest.param("entropy", marks=pytest.mark.slow)])
def test_histogram_calibration_in_one_batch_chunks_matches_one_chunk(tmp_path: Path, monkeypatch, method: str) -> None:
    """Fed one batch at a time (a big model), the histogram calibrators give about the ranges of a single pass."""
    from edgeclip.calibration import feeds
    from edgeclip.precision import static as quantize

    src = _two_convs(tmp_path / "convs.onnx")
    x = np.random.default_rng(1).normal(size=(16, 8, 16, 16)).astype(np.float32)
    scales = {}
    for memory in (1 << 30, 1):  # one chunk of 16 batches; 16 chunks of one
        monkeypatch.setattr(quantize, "HISTOGRAM_MEMORY", memory)
        out = tmp_path / f"{memory}.onnx"
        quantize_static_int8(src, out, feeds({"x": x}), method=method)
        scales[memory] = _activation_scale(out, "h")
    assert scales[1] == pytest.approx(scales[1 << 30], rel=0.1)


def test_histogram_failure_on_a_near_constant_activation_is_one_line(tmp_path: Path) -> None:
    """ORT's percentile histogram cannot bin a near-constant tensor; the error says so in one line, minmax works."""
    from edgeclip.calibration import feeds

    src = _two_convs(tmp_path / "convs.onnx")
    x = np.full((4, 8, 16, 16), 0.015625, np.float32)
    x += np.random.default_rng(0).integers(0, 4, x.shape).astype(np.float32) * np.spacing(np.float32(0.015625))
    with pytest.raises(ExportError, match=r"convs\.onnx failed: .*\(calibration method percentile; minmax builds "
                                          r"no histograms\)$") as info:  # fmt: skip
        quantize_static_int8(src, tmp_path / "p.onnx", feeds({"x": x}), method="percentile")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "p.onnx").exists()
    quantize_static_int8(src, tmp_path / "m.onnx", feeds({"x": x}), method="minmax")


def _linear_encoders(tmp_path: Path, image_weight: np.ndarray) -> tuple[Path, Path]:
    """An image encoder (flatten, linear) and a text encoder (mean of token embeddings), both 8-d, as ONNX files."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)

    def save(name: str, nodes, inputs, weights) -> Path:
        graph = helper.make_graph(nodes, name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, n) for n, w in weights.items()])  # fmt: skip
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    image = save("image", [helper.make_node("Flatten", ["pixels"], ["f"]),
                           helper.make_node("MatMul", ["f", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                 [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 3, 4, 4])],
                 {"w": image_weight.astype(np.float32), "b": rng.normal(size=8).astype(np.float32)})  # fmt: skip
    text = save("text", [helper.make_node("Gather", ["e", "token_ids"], ["g"]),
                         helper.make_node("ReduceMean", ["g"], ["y"], axes=[1], keepdims=0)],
                [helper.make_tensor_value_info("token_ids", TensorProto.INT64, [None, 5])],
                {"e": rng.normal(size=(20, 8)).astype(np.float32)})  # fmt: skip
    return image, text


@pytest.mark.parametrize("degenerate", [False, True])
def test_gate_records_how_many_labels_fp32_predicts(tmp_path: Path, degenerate: bool) -> None:
    """Top-1 agreement means little when fp32 gives every image one label; the gate says how many it gives."""
    from edgeclip.precision.gate import measure_gate

    rng = np.random.default_rng(0)
    weight = np.zeros((48, 8)) if degenerate else rng.normal(size=(48, 8))  # zero: every image embeds as the bias
    files = _linear_encoders(tmp_path, weight)
    pixels = rng.normal(size=(32, 3, 4, 4)).astype(np.float32)
    texts = rng.integers(0, 20, size=(6, 5))
    labels = [f"l{i}" for i in range(10)]
    label_tokens = rng.integers(0, 20, size=(10, 5))
    report = measure_gate(files, files, pixels, texts, label_tokens, labels=labels)
    assert report.top1_agreement == 1.0 and report.image.mean == pytest.approx(1.0)
    assert report.to_dict()["reference_labels"] == report.reference_labels
    assert (report.reference_labels == 1) == degenerate and 1 <= report.reference_labels <= len(labels)


def test_recipes_are_registered_by_target_and_precision() -> None:
    """ONNX and TensorRT int8 each name their per-encoder recipe in one registry; duplicates and typos refused."""
    from edgeclip.precision.recipes import TARGET_RECIPES, register_target_recipe, target_recipe

    assert {("onnx", "int8"), ("tensorrt", "int8")} <= set(TARGET_RECIPES)
    onnx_int8, trt_int8 = target_recipe("onnx", "int8"), target_recipe("tensorrt", "int8")
    assert onnx_int8.for_role("image") is RECIPES["edgeclip-image"] and onnx_int8.for_role("text").gelu == "exact"
    trt = trt_int8.for_role("image")
    assert trt is trt_int8.for_role("text") and trt.gelu is None and trt.activation_type == "int8"
    with pytest.raises(ValueError, match="registered twice"):
        register_target_recipe("onnx", "int8", image="edgeclip-image", text="edgeclip-text")
    with pytest.raises(ValueError, match="unregistered recipe 'edgeclip-imag'"):
        register_target_recipe("toy", "int8", image="edgeclip-imag", text="edgeclip-text")
    with pytest.raises(ValueError, match="no int8 recipe is registered for target 'coreml'"):
        target_recipe("coreml", "int8")
    with pytest.raises(UsageError, match="quantization recipe 'edgeclip' is unknown"):
        quantize_static_int8(Path("unused.onnx"), Path("unused-q.onnx"), [], recipe="edgeclip")


def _tokens(tiny_bundle: Path) -> np.ndarray:
    m = load_bundle(tiny_bundle).manifest
    tokenizer = Tokenizer.from_file(tiny_bundle / m.tokenizer.file, m.tokenizer)
    return tokenizer.encode(["a red circle on a blue background", "two green squares"])


def test_fuse_attention_replaces_every_attention_block_and_computes_the_same(tiny_bundle: Path, tmp_path: Path) -> None:
    from edgeclip.precision.rewrites import fuse_attention_file

    src, dst = tiny_bundle / "text_encoder.onnx", tmp_path / "fused.onnx"
    softmaxes = sum(n.op_type == "Softmax" for n in onnx.load(str(src)).graph.node)
    assert fuse_attention_file(src, dst) == softmaxes > 0
    fused = onnx.load(str(dst))
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("Attention") == softmaxes and "Softmax" not in ops and "Transpose" not in ops
    tokens = _tokens(tiny_bundle)
    want, got = (
        onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"token_ids": tokens})[0]
        for p in (src, dst)
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_fused_attention_that_does_not_match_is_left_unfused(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeclip.precision.rewrites as rewrites

    monkeypatch.setattr(rewrites, "ATTENTION_TOLERANCE", -1.0)  # no difference is small enough: the check fails
    src, dst = tiny_bundle / "text_encoder.onnx", tmp_path / "fused.onnx"
    with pytest.warns(UserWarning, match="fused attention does not match the graph; left unfused"):
        assert rewrites.fuse_attention_file(src, dst) == 0
    assert "Attention" not in _ops(dst) and "Softmax" in _ops(dst)


def test_dynamic_text_int8_runs_attention_as_qattention(tiny_bundle: Path, tmp_path: Path) -> None:
    from edgeclip.precision.dynamic import quantize_dynamic_int8

    src = tiny_bundle / "text_encoder.onnx"
    assert quantize_dynamic_int8(src, tmp_path / "new.onnx", recipe="edgeclip-dynamic") > 0
    quantize_dynamic_int8(src, tmp_path / "old.onnx", recipe="matmul")
    assert "QAttention" in _ops(tmp_path / "new.onnx") and "QAttention" not in _ops(tmp_path / "old.onnx")
    tokens = _tokens(tiny_bundle)
    run = {
        p: onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"token_ids": tokens})[0]
        for p in (src, tmp_path / "new.onnx", tmp_path / "old.onnx")
    }
    cosine = (run[src] * run[tmp_path / "new.onnx"]).sum(-1) / (
        np.linalg.norm(run[src], axis=-1) * np.linalg.norm(run[tmp_path / "new.onnx"], axis=-1)
    )
    assert cosine.min() > 0.99
    with pytest.raises(UsageError, match="dynamic quantization recipe 'nope' is unknown"):
        quantize_dynamic_int8(src, tmp_path / "x.onnx", recipe="nope")
