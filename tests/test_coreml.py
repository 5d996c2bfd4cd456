"""CoreML target: real conversions with coremltools, checked on Linux as far as Linux allows.

What Linux can check is checked here from the saved packages themselves: input/output names, shapes and
types, that fp16 was applied, that compression happened (weights decompressed by coremltools against the
PyTorch weights, package sizes against fp32), the baked-in pixel normalization, and the metadata. Running a
package needs macOS, so the prediction-parity tests skip elsewhere with a one-line reason.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeclip.cli import cli
from edgeclip.errors import ExportError, RuntimeUnavailable, UsageError
from edgeclip.export import export_bundle, list_targets
from edgeclip.export.options import Encoders, ExportOptions
from edgeclip.export.targets.coreml import COMPRESSIONS, SPEC, WEIGHT_THRESHOLD
from edgeclip.models.encoders import ImageEncoder, TextEncoder
from edgeclip.models.loading import load_model
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.backends.coreml import _batch_pieces, pixels_to_images
from edgeclip.runtimes.bundle import sha256_path, size_path
from tests.conftest import TINY, cosine_rows

ct = pytest.importorskip("coremltools", reason="the coreml extra is not installed")

# coremltools' torch frontend calls its own deprecated registry API on every op it converts.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:coremltools.*")
ON_MAC = sys.platform == "darwin"
needs_mac = pytest.mark.skipif(not ON_MAC, reason="CoreML runs models only on macOS; coremltools cannot predict here")
WEIGHT_ONLY = [name for name, c in COMPRESSIONS.items() if not c.needs_calibration]


# --- helpers that read a saved package ------------------------------------------------------------------------


def mlmodel(bundle: Path, role: str):
    return ct.models.MLModel(str(bundle / f"{role}_encoder.mlpackage"), skip_model_load=True)


def mil_ops(bundle: Path, role: str) -> list:
    """The operations of the saved package's ML program, loaded back by coremltools."""
    from coremltools.converters.mil.frontend.milproto.load import load

    model = mlmodel(bundle, role)
    spec = model.get_spec()
    program = load(spec, spec.specificationVersion, model.weights_dir)
    return list(program.functions["main"].operations)


def dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def weights_bytes(bundle: Path) -> int:
    return sum(size_path(bundle / f"{role}_encoder.mlpackage") for role in ("image", "text"))


_COMPRESSED = re.compile(r"^p_(?:encoder_)?(.+?)(?:_to_fp16)?_(quantized|palettized)$")


def torch_weights(model) -> dict[str, dict[str, np.ndarray]]:
    """The encoders' parameters by the names torch.export gives them (dots become underscores)."""
    out = {}
    for role, encoder in (("image", ImageEncoder(model)), ("text", TextEncoder(model))):
        named = ((n, p) for n, p in encoder.named_parameters() if not n.startswith("clip.visual."))
        out[role] = {n.replace(".", "_"): p.detach().float().numpy() for n, p in named}
    return out


def large_weights(weights: dict[str, np.ndarray]) -> int:
    """How many values the tensors big enough to be compressed hold."""
    return sum(w.size for w in weights.values() if w.size > WEIGHT_THRESHOLD)


def nearest_distance(values: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Distance from each value to the closest entry of a sorted palette."""
    right = np.clip(np.searchsorted(palette, values), 0, len(palette) - 1)
    left = np.clip(right - 1, 0, len(palette) - 1)
    return np.minimum(np.abs(values - palette[left]), np.abs(values - palette[right]))


def check_decompressed(bundle: Path, role: str, reference: dict[str, np.ndarray], compression: str) -> int:
    """Every compressed weight, decompressed by coremltools, within the quantization step of the PyTorch weight.

    Returns how many weight values were checked against PyTorch.
    """
    checked = 0
    compressed_ops = [op for op in mil_ops(bundle, role) if op.op_type.startswith("constexpr")]
    assert compressed_ops, f"{role}: no compressed weights in the package"
    for op in compressed_ops:
        match = _COMPRESSED.match(op.name)
        if not match or match.group(1) not in reference:
            continue  # constants torch.export folded (a transposed projection, the attention mask)
        weight = reference[match.group(1)]
        w16 = weight.astype(np.float16).astype(np.float64)  # the package's weights are fp16 before compressing
        dense = np.asarray(op.materialized_val_inference(), dtype=np.float64)
        assert dense.shape == weight.shape, op.name
        err = np.abs(dense - w16)
        if compression == "int8":
            data = np.asarray(op.inputs["quantized_data" if "quantized_data" in op.inputs else "data"].val)
            assert data.dtype == np.int8, op.name
            # Symmetric per output channel: each row uses the full int8 range and its own step max|w|/127.
            rows = np.abs(w16.reshape(len(w16), -1)).max(axis=1)
            step = rows / 127.0
            used = np.abs(data.reshape(len(data), -1)).max(axis=1)
            assert (used[rows > 0] >= 126).all(), op.name  # (an all-zero row has scale 0: its ints mean nothing)
            bound = step.reshape(-1, *([1] * (w16.ndim - 1))) * 0.5 * (1 + 2e-3) + np.abs(w16) * 2**-10
            assert (err <= bound + 1e-7).all(), f"{op.name}: max error {err.max():.3g} over the int8 step"
        else:
            bits = COMPRESSIONS[compression].detail["nbits"]
            lut = np.unique(np.asarray(op.inputs["lut"].val, dtype=np.float64))
            assert len(lut) <= 2**bits, op.name
            # k-means assigns each weight to its nearest palette entry: no entry may be closer than the chosen one
            # (up to the fp16 rounding of the palette itself).
            nearest = nearest_distance(w16, lut)
            assert (err <= nearest + np.abs(lut).max() * 2**-10).all(), f"{op.name}: not the nearest palette entry"
        checked += weight.size
    return checked


# --- bundles, exported once per module --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, dict[str, np.ndarray]]:
    return torch_weights(load_model(TINY, random_init=True).model)


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coreml") / "fp16.edgeclip"
    export_bundle(TINY, output=out, target="coreml", random_init=True)
    return out


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coreml") / "fp32.edgeclip"
    export_bundle(TINY, output=out, target="coreml", precision="fp32", random_init=True)
    return out


@pytest.fixture(scope="module", params=WEIGHT_ONLY)
def compressed_bundle(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("coreml") / f"{request.param}.edgeclip"
    export_bundle(TINY, output=out, target="coreml", random_init=True, target_options={"compress": request.param})
    return request.param, out


@pytest.fixture(scope="module")
def pixels_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Through the CLI: RGB image input, enumerated text batch sizes, iOS18 ops, int8 weights."""
    out = tmp_path_factory.mktemp("coreml") / "pixels.edgeclip"
    args = [
        "export",
        "-m",
        TINY,
        "--random-init",
        "-t",
        "coreml",
        "--image-input",
        "pixels",
        "--batch-sizes",
        "4,1",
        "--deployment-target",
        "iOS18",
        "--compress",
        "int8",
        "-o",
        str(out),
        "-q",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


# --- the spec ---------------------------------------------------------------------------------------------------


def test_spec_is_the_one_table_behind_choices_and_defaults() -> None:
    assert SPEC in list_targets()
    assert SPEC.default_precision == "fp16" and set(SPEC.precisions) == {"fp16", "fp32"}
    assert SPEC.compressions == tuple(COMPRESSIONS) and {"int8", "palettize4", "w8a8"} <= set(SPEC.compressions)
    assert SPEC.image_inputs == ("tensor", "pixels") and "iOS17" in SPEC.deployment_targets
    listed = json.loads(CliRunner().invoke(cli, ["targets", "--json"]).output)
    coreml = next(t for t in listed if t["name"] == "coreml")
    assert coreml["compressions"] == list(SPEC.compressions) and coreml["default_precision"] == "fp16"


# --- the default export: fp16, tensor input, dynamic batch ------------------------------------------------------


@pytest.mark.slow
def test_default_export_is_fp16_mlprogram_with_the_recorded_interface(fp16_bundle: Path) -> None:
    bundle = load_bundle(fp16_bundle, verify=True)  # loads on Linux: only running needs macOS
    m = bundle.manifest
    assert (m.target, m.precision) == ("coreml", "fp16")
    assert sorted(p.name for p in fp16_bundle.iterdir()) == [
        "golden",
        "image_encoder.mlpackage",
        "manifest.json",
        "text_encoder.mlpackage",
        "tokenizer.json",
    ]
    info = m.target_info
    assert info["format"] == "mlprogram" and info["minimum_deployment_target"] == "iOS17"
    assert info["batch"] == {role: {"kind": "range", "min": 1, "max": 64} for role in ("image", "text")}
    assert info["image_input"] == {"kind": "tensor"} and info["compression"] is None
    if not ON_MAC:
        assert info["parity_skipped"].startswith("CoreML runs only on Apple platforms (macOS/iOS)")
        assert all(enc.parity is None for enc in m.encoders.values())

    image, text = m.encoders["image"], m.encoders["text"]
    assert (image.inputs[0].name, image.inputs[0].shape, image.inputs[0].dtype) == (
        "pixels",
        ("batch", 3, 64, 64),
        "float32",
    )
    assert (text.inputs[0].name, text.inputs[0].shape, text.inputs[0].dtype) == ("token_ids", ("batch", 77), "int32")
    for role, enc in m.encoders.items():
        assert enc.sha256 == sha256_path(fp16_bundle / enc.file)
        assert enc.outputs[0].name == "embeddings" and enc.outputs[0].shape == ("batch", m.embed_dim)
        # The package's own spec says the same.
        spec = mlmodel(fp16_bundle, role).get_spec()
        assert spec.WhichOneof("Type") == "mlProgram"
        (inp,), (out,) = spec.description.input, spec.description.output
        array = inp.type.multiArrayType
        assert inp.name == enc.inputs[0].name
        assert list(array.shape)[1:] == list(enc.inputs[0].shape[1:])
        assert array.dataType == (array.FLOAT32 if role == "image" else array.INT32)
        batch_range = array.shapeRange.sizeRanges[0]
        assert (batch_range.lowerBound, batch_range.upperBound) == (1, 64)
        assert out.name == "embeddings" and out.type.multiArrayType.dataType == out.type.multiArrayType.FLOAT32


@pytest.mark.slow
def test_fp16_was_applied_and_fp32_kept(fp16_bundle: Path, fp32_bundle: Path) -> None:
    for bundle, want in ((fp16_bundle, "fp16"), (fp32_bundle, "fp32")):
        for role in ("image", "text"):
            ops = mil_ops(bundle, role)
            float_weights = [
                dtype_name(op.outputs[0])
                for op in ops
                if op.op_type == "const" and op.name.startswith("p_") and dtype_name(op.outputs[0]).startswith("fp")
            ]
            assert float_weights and set(float_weights) == {want}, (bundle.name, role, set(float_weights))
            compute = {dtype_name(op.outputs[0]) for op in ops if op.op_type in ("linear", "conv", "matmul")}
            assert compute == {want}, (bundle.name, role)
            # The L2 norm sums squares: it stays fp32 so a large embedding cannot overflow fp16.
            norms = [op for op in ops if op.op_type == "reduce_l2_norm"]
            assert len(norms) == 1 and dtype_name(norms[0].inputs["x"]) == "fp32"
    assert load_bundle(fp32_bundle).manifest.precision == "fp32"
    # fp16 weights take half the bytes.
    assert 1.9 < weights_bytes(fp32_bundle) / weights_bytes(fp16_bundle) < 2.05


@pytest.mark.slow
def test_metadata_says_what_the_model_is(fp16_bundle: Path) -> None:
    m = load_bundle(fp16_bundle).manifest
    for role in ("image", "text"):
        model = mlmodel(fp16_bundle, role)
        assert model.short_description.startswith(f"{role.capitalize()} encoder of {m.model_id}")
        assert model.author.startswith("edgeclip ") and model.license and model.version == m.model_id
        name = m.encoders[role].inputs[0].name
        assert model.input_description[name] and "L2-normalized" in model.output_description["embeddings"]
        meta = model.user_defined_metadata
        assert meta["edgeclip.model_id"] == m.model_id and meta["edgeclip.role"] == role
        assert (meta["edgeclip.precision"], meta["edgeclip.compression"]) == ("fp16", "none")
        assert json.loads(meta["edgeclip.input"]) == m.encoders[role].inputs[0].to_dict()
        assert json.loads(meta["edgeclip.batch"]) == m.target_info["batch"][role]
    image_meta = mlmodel(fp16_bundle, "image").user_defined_metadata
    assert json.loads(image_meta["edgeclip.preprocess"]) == m.preprocess.to_dict()
    assert json.loads(mlmodel(fp16_bundle, "text").user_defined_metadata["edgeclip.tokenizer"]) == m.tokenizer.to_dict()


# --- compression ------------------------------------------------------------------------------------------------


# Package size against fp32 weights: about 4x for int8 and 32/bits for a palette (tensors under
# WEIGHT_THRESHOLD values, per-row scales and palettes cost a little).
SHRINK = {"int8": (3.5, 4.05), "palettize8": (3.5, 4.05), "palettize6": (4.7, 5.4), "palettize4": (6.8, 8.1)}


@pytest.mark.slow
def test_compression_happened_and_matches_the_pytorch_weights(
    compressed_bundle: tuple[str, Path], fp32_bundle: Path, tiny_weights
) -> None:
    name, bundle = compressed_bundle
    m = load_bundle(bundle).manifest
    assert m.source.weights_sha256 == load_bundle(fp32_bundle).manifest.source.weights_sha256
    assert m.target_info["compression"]["name"] == name
    assert m.target_info["compression"]["weight_threshold"] == WEIGHT_THRESHOLD
    for role in ("image", "text"):
        assert mlmodel(bundle, role).user_defined_metadata["edgeclip.compression"] == name
        checked = check_decompressed(bundle, role, tiny_weights[role], name)
        # The token embedding, the patch conv and every transformer matrix were compressed and checked.
        assert checked >= 0.9 * large_weights(tiny_weights[role]), (role, checked)
    low, high = SHRINK[name]
    ratio = weights_bytes(fp32_bundle) / weights_bytes(bundle)
    assert low <= ratio <= high, f"{name}: {ratio:.2f}x smaller than fp32"


@pytest.mark.slow
def test_pixels_input_carries_the_normalization(pixels_bundle) -> None:
    bundle, output = pixels_bundle
    m = load_bundle(bundle).manifest
    assert "parity not measured here" in output or ON_MAC
    spec = mlmodel(bundle, "image").get_spec()
    (inp,) = spec.description.input
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    image = inp.type.imageType
    assert (image.width, image.height, image.colorSpace) == (64, 64, image.RGB)
    assert m.encoders["image"].inputs[0].to_dict() == {"name": "image", "shape": [1, 3, 64, 64], "dtype": "uint8"}
    assert m.target_info["image_input"]["kind"] == "pixels" and m.target_info["image_input"]["color_layout"] == "RGB"

    # Apply what the package does to 0-255 pixels, read from its own program, and compare with the manifest's
    # preprocessing: ImageType's scale and per-channel bias, then the per-channel 1/std layer.
    ops = {op.name: op for op in mil_ops(bundle, "image")}
    scale = float(ops["image__scaled__"].inputs["y"].val)
    bias = np.asarray(ops["image__biased__"].inputs["y"].val, dtype=np.float64).reshape(3)
    channel = next(op for op in ops.values() if op.op_type == "mul" and "channel_scale" in op.inputs["y"].name)
    channel_scale = np.asarray(channel.inputs["y"].val, dtype=np.float64).reshape(3)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8)).astype(np.float64)
    baked = (pixels * scale + bias.reshape(3, 1, 1)) * channel_scale.reshape(3, 1, 1)
    mean, std = (np.asarray(v).reshape(3, 1, 1) for v in (m.preprocess.mean, m.preprocess.std))
    expected = (pixels / 255.0 - mean) / std
    assert np.abs(baked - expected).max() < 2e-3  # the per-channel 1/std constant is stored in fp16
    recorded = m.target_info["image_input"]
    assert recorded["scale"] == pytest.approx(scale) and recorded["bias"] == pytest.approx(bias.tolist())
    assert recorded["channel_scale"] == pytest.approx(channel_scale.tolist(), rel=1e-3)

    # Text batch sizes are enumerated; an image input takes one image per prediction.
    assert m.target_info["batch"] == {
        "image": {"kind": "fixed", "sizes": [1]},
        "text": {"kind": "enumerated", "sizes": [1, 4]},
    }
    text = mlmodel(bundle, "text").get_spec().description.input[0].type.multiArrayType
    assert sorted(list(s.shape) for s in text.enumeratedShapes.shapes) == [[1, 77], [4, 77]]
    # iOS18 stores int8 weights as blockwise shift/scale ops; they still decompress to the PyTorch weights.
    assert m.target_info["minimum_deployment_target"] == "iOS18"
    assert any(op.op_type.startswith("constexpr_blockwise_shift_scale") for op in ops.values())


def test_pixels_to_images_undoes_preprocessing_exactly(photos) -> None:
    from edgeclip.models.preprocess import preprocess_spec_for
    from edgeclip.runtimes.preprocess import preprocess

    spec, _ = preprocess_spec_for(TINY, None, {"image_size": (48, 40)})
    pixels = preprocess(list(photos.values()), spec)
    images = pixels_to_images(pixels, spec.mean, spec.std)
    assert [im.size for im in images] == [(40, 48)] * len(photos)
    assert np.array_equal(preprocess(images, spec), pixels)


def _plain_encoders(spec) -> Encoders:
    """Encoders with the model's preprocessing, as export hands them to the target (modules unused here)."""
    h, w = spec.image_size
    return Encoders(
        torch.nn.Identity(),
        torch.nn.Identity(),
        torch.rand(1, 3, h, w),
        torch.zeros(1, 10, dtype=torch.int64),
        preprocess=spec,
    )


@pytest.mark.parametrize("image_input", ["tensor", "pixels"])
def test_w8a8_takes_the_calibration_set_the_other_targets_take(photo_files, tmp_path: Path, image_input) -> None:
    """A .npz from `edgeclip calibrate` gives w8a8 the very samples its image files give, and the manifest its id."""
    from edgeclip.calibration import build_calibration_set
    from edgeclip.export.targets.coreml import _calibration, _calibration_samples, _image_plan, parse_options
    from edgeclip.models.preprocess import preprocess_spec_for

    spec, _ = preprocess_spec_for(TINY, None, {"image_size": (48, 40)})
    with pytest.warns(UserWarning, match="only 3 images"):
        calib, _ = build_calibration_set(photo_files[0].parent, spec)
    npz = calib.save(tmp_path / "calib.npz")
    files = tuple(photo_files[0].parent / name for name in calib.sources)
    encoders = _plain_encoders(spec)
    from_set, from_files = (
        parse_options({"compress": "w8a8", "calibration": c, "image_input": image_input})
        for c in (str(npz), [str(f) for f in files])
    )
    assert from_set.calibration == (npz,) and from_files.calibration == files
    plan = _image_plan(ct, encoders, from_set)
    a, b = (
        _calibration_samples(plan, _calibration(o.calibration, encoders).pixels, encoders)
        for o in (from_set, from_files)
    )
    assert len(a) == len(b) == len(photo_files)
    for x, y in zip(a, b, strict=True):
        value = x[plan.input_name]
        assert type(value) is type(y[plan.input_name])
        assert np.array_equal(np.asarray(value), np.asarray(y[plan.input_name]))
    if image_input == "tensor":
        assert a[0]["pixels"].shape == (1, 3, 48, 40) and a[0]["pixels"].dtype == np.float32
    else:
        assert a[0]["image"].size == (40, 48) and a[0]["image"].mode == "RGB"
    info = _calibration(from_set.calibration, encoders).info
    assert info["set"]["id"] == calib.id and info["images"] == len(photo_files) and info["encoders"] == ["image"]
    # one folder is drawn into the same set as `edgeclip calibrate` (and the onnx target) draws from it
    from_folder = parse_options({"compress": "w8a8", "calibration": str(photo_files[0].parent)})
    assert from_folder.calibration == (photo_files[0].parent,)
    with pytest.warns(UserWarning, match="only 3 images"):
        assert _calibration(from_folder.calibration, encoders).info["set"]["id"] == calib.id


def test_w8a8_calibration_set_for_other_preprocessing_names_both(photo_files, tmp_path: Path) -> None:
    from edgeclip.calibration import build_calibration_set
    from edgeclip.export.targets.coreml import _calibration
    from edgeclip.models.preprocess import preprocess_spec_for

    made_for, _ = preprocess_spec_for(TINY, None, {"image_size": (32, 32)})
    model, _ = preprocess_spec_for(TINY, None, {"image_size": (48, 40)})
    with pytest.warns(UserWarning, match="only 3 images"):
        npz = build_calibration_set(photo_files[0].parent, made_for, count=8)[0].save(tmp_path / "calib.npz")
    with pytest.raises(UsageError) as err:
        _calibration((npz,), _plain_encoders(model))
    message = str(err.value)
    assert "32x32" in message and "48x40" in message and str(npz) in message and "\n" not in message


def test_w8a8_calibration_arguments_fail_in_one_line_before_the_model_loads(photo_files, tmp_path: Path) -> None:
    from edgeclip.export.targets.coreml import validate_options

    def check(calibration) -> str:
        options = ExportOptions(
            target="coreml", precision="fp16", target_options={"compress": "w8a8", "calibration": calibration}
        )
        with pytest.raises(UsageError) as err:
            validate_options(options)
        assert "\n" not in str(err.value)
        return str(err.value)

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip")
    assert "not an edgeclip calibration set" in check(str(corrupt)) and str(corrupt) in check(str(corrupt))
    assert "pass it alone" in check([str(corrupt), str(photo_files[0])])
    assert "does not exist" in check(str(tmp_path / "missing.npz"))


def test_batch_pieces_fit_the_sizes_a_package_accepts() -> None:
    assert _batch_pieces(100, {"kind": "range", "min": 1, "max": 64}) == [(0, 64, 64), (64, 100, 36)]
    assert _batch_pieces(6, {"kind": "enumerated", "sizes": [1, 4]}) == [(0, 4, 4), (4, 5, 1), (5, 6, 1)]
    assert _batch_pieces(3, {"kind": "enumerated", "sizes": [4, 8]}) == [(0, 3, 4)]  # padded up to 4
    assert _batch_pieces(2, {"kind": "fixed", "sizes": [1]}) == [(0, 1, 1), (1, 2, 1)]


# --- on Linux: the bundle loads, running it says why not ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(ON_MAC, reason="on macOS CoreML bundles run")
def test_running_off_macos_says_coreml_needs_apple_platforms(fp16_bundle: Path, photos, photo_files) -> None:
    bundle = load_bundle(fp16_bundle)
    for call in (lambda: bundle.encode_image(list(photos.values())), lambda: bundle.encode_text(["a cat"])):
        with pytest.raises(RuntimeUnavailable) as err:
            call()
        message = str(err.value)
        assert message.startswith("CoreML runs only on Apple platforms (macOS/iOS)") and "\n" not in message
    result = CliRunner().invoke(cli, ["classify", str(fp16_bundle), str(photo_files[0]), "--labels", "cat,dog"])
    assert result.exit_code == 1 and "Error: CoreML runs only on Apple platforms (macOS/iOS)" in result.output
    info = CliRunner().invoke(cli, ["info", str(fp16_bundle)])
    assert info.exit_code == 0 and "image_encoder.mlpackage" in info.output and "(0.0 MB)" not in info.output


# --- bad input: refused before any work ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"compress": "palettize5"}, UsageError, ["int8, palettize4, palettize6, palettize8, w8a8", "palettize"]),
        ({"compress": "w8a8"}, UsageError, ["needs calibration images", "--calibration"]),
        ({"image_input": "bgr"}, UsageError, ["tensor, pixels"]),
        ({"deployment_target": "iOS12"}, UsageError, ["iOS17"]),
        ({"batch_sizes": [0, 4]}, UsageError, ["between 1 and"]),
        ({"batch_sizes": ["1.5"]}, UsageError, ["whole numbers"]),
        ({"quantize": "int8"}, UsageError, ["has no option 'quantize'", "compress"]),
        ({"calibration": "."}, UsageError, ["only by --compress w8a8"]),
    ],
)
def test_bad_options_stop_before_the_model_loads(options, error, words, tmp_path: Path) -> None:
    out = tmp_path / "out" / "b.edgeclip"
    with pytest.raises(error) as err:
        export_bundle(TINY, output=out, target="coreml", random_init=True, target_options=options)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no staging folder was made


@pytest.mark.skipif(ON_MAC, reason="w8a8 runs on macOS")
def test_w8a8_off_macos_stops_before_converting(tmp_path: Path) -> None:
    from edgeclip.data.shapes import ShapesDataset, write_image_folder

    calib = write_image_folder(ShapesDataset(split="train", size=64, seed=0), tmp_path / "calib", 4)
    out = tmp_path / "out" / "b.edgeclip"
    with pytest.raises(RuntimeUnavailable, match=r"only on macOS .*use --compress int8 here"):
        export_bundle(
            TINY,
            output=out,
            target="coreml",
            random_init=True,
            target_options={"compress": "w8a8", "calibration": calib},
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_onnx_refuses_coreml_options_and_cli_exits_2(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="target 'onnx' has no option 'compress'"):
        export_bundle(TINY, output=tmp_path / "b", random_init=True, target_options={"compress": "int8"})
    result = CliRunner().invoke(
        cli, ["export", "-m", TINY, "--random-init", "-t", "coreml", "--compress", "int4", "-o", str(tmp_path / "c")]
    )
    assert result.exit_code == 2 and "expected one of int8, palettize4" in result.output


@pytest.mark.slow
def test_existing_output_needs_force(fp16_bundle: Path) -> None:
    with pytest.raises(UsageError, match="--force"):
        export_bundle(TINY, output=fp16_bundle, target="coreml", random_init=True)


def test_unconvertible_op_names_the_op_and_module_and_suggests_onnx(tmp_path: Path) -> None:
    from edgeclip.export.targets.coreml import export

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(12, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.erfinv(torch.tanh(self.proj(x)))  # coremltools has no erfinv

    class Image(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = Block()

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.head(pixels.mean(dim=(2, 3)).repeat(1, 4))

    class Text(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return ids.float()[:, :8]

    encoders = Encoders(Image().eval(), Text().eval(), torch.rand(2, 3, 16, 16), torch.zeros(2, 10, dtype=torch.int64))
    with pytest.raises(ExportError) as err:
        export(encoders, tmp_path, ExportOptions(target="coreml", precision="fp16"))
    message = str(err.value)
    assert "erfinv" in message and "module head (Block)" in message and "--target onnx" in message, message
    assert "\n" not in message


# --- one real architecture --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mobileclip2_s0_pixels_int8(tmp_path: Path) -> None:
    """MobileCLIP2-S0 (random weights): torch.export path, uniform std folded into one scale, int8 weights."""
    from timm.utils.model import reparameterize_model

    out = tmp_path / "mc2s0.edgeclip"
    result = export_bundle(
        "MobileCLIP2-S0",
        output=out,
        target="coreml",
        random_init=True,
        target_options={"image_input": "pixels", "compress": "int8"},
    )
    m = result.manifest
    image_input = m.target_info["image_input"]
    # MobileCLIP: mean 0, std 1 -> ImageType scale 1/255, zero bias, no per-channel layer.
    assert image_input["scale"] == pytest.approx(1 / 255) and image_input["bias"] == [0.0, 0.0, 0.0]
    assert image_input["channel_scale"] is None
    image = mlmodel(out, "image").get_spec().description.input[0].type.imageType
    assert (image.width, image.height) == (256, 256)
    deploy = reparameterize_model(load_model("MobileCLIP2-S0", random_init=True).model.eval(), inplace=False)
    weights = torch_weights(deploy)
    # coremltools folds BatchNorm and layer scales into some image convs: those weights have no PyTorch twin.
    for role, share in (("image", 0.5), ("text", 0.9)):
        checked = check_decompressed(out, role, weights[role], "int8")
        assert checked >= share * large_weights(weights[role]), (role, checked, large_weights(weights[role]))
    # About 1 byte per weight: 4x smaller than fp32 weights would be.
    params = sum(w.size for role in ("image", "text") for w in weights[role].values())
    assert weights_bytes(out) < 0.3 * 4 * params


# --- macOS only: predictions ------------------------------------------------------------------------------------


def _reference(bundle: Path):
    """The PyTorch fp32 model the bundle was exported from (random weights, the export's default seed)."""
    loaded = load_model(TINY, random_init=True)
    assert load_bundle(bundle).manifest.source.weights_sha256 == loaded.weights_sha256()
    return loaded.model.eval()


@pytest.mark.slow
@needs_mac
def test_fp16_predictions_match_pytorch(fp16_bundle: Path, photos) -> None:
    from edgeclip.runtimes.preprocess import preprocess

    bundle = load_bundle(fp16_bundle)
    model = _reference(fp16_bundle)
    images = list(photos.values())
    texts = ["a photo of a cat", "a cup of coffee", "an astronaut", ""]
    with torch.no_grad():
        ref_img = ImageEncoder(model)(torch.from_numpy(preprocess(images, bundle.manifest.preprocess))).numpy()
        ref_txt = TextEncoder(model)(torch.from_numpy(bundle.tokenizer.encode(texts))).numpy()
    assert cosine_rows(ref_img, bundle.encode_image(images)).min() >= 0.999
    assert cosine_rows(ref_txt, bundle.encode_text(texts)).min() >= 0.999
    assert all(enc.parity.min_cosine >= 0.999 for enc in bundle.manifest.encoders.values())


@pytest.mark.slow
@needs_mac
def test_pixels_and_enumerated_batches_match_pytorch(pixels_bundle, photos) -> None:
    from edgeclip.runtimes.preprocess import preprocess

    bundle_path, _ = pixels_bundle
    bundle = load_bundle(bundle_path)
    model = _reference(bundle_path)
    images = list(photos.values())
    texts = ["a", "b c", "a photo of a dog", "x", "y", "zz"]  # 6 rows: runs as 4 + 1 + 1
    with torch.no_grad():
        ref_img = ImageEncoder(model)(torch.from_numpy(preprocess(images, bundle.manifest.preprocess))).numpy()
        ref_txt = TextEncoder(model)(torch.from_numpy(bundle.tokenizer.encode(texts))).numpy()
    assert cosine_rows(ref_img, bundle.encode_image(images)).min() >= COMPRESSIONS["int8"].parity_floor
    assert cosine_rows(ref_txt, bundle.encode_text(texts)).min() >= COMPRESSIONS["int8"].parity_floor


@needs_mac
@pytest.mark.parametrize("source", ["folder", "npz"])
def test_w8a8_calibrates_on_images_and_passes_its_parity_floor(tmp_path: Path, source: str) -> None:
    from edgeclip.calibration import build_calibration_set
    from edgeclip.data.shapes import ShapesDataset, write_image_folder
    from edgeclip.models.preprocess import preprocess_spec_for

    calib = write_image_folder(ShapesDataset(split="train", size=64, seed=0), tmp_path / "calib", 16)
    if source == "npz":
        calib = build_calibration_set(calib, preprocess_spec_for(TINY, None)[0], count=16)[0].save(tmp_path / "c.npz")
    result = export_bundle(
        TINY,
        output=tmp_path / "w8a8.edgeclip",
        target="coreml",
        random_init=True,
        target_options={"compress": "w8a8", "calibration": calib},
    )
    assert result.manifest.target_info["compression"]["name"] == "w8a8"
    assert result.manifest.calibration["images"] == 16 and result.manifest.calibration["encoders"] == ["image"]
    assert result.manifest.calibration["set"]["images"] == 16  # a folder is drawn into a set as onnx draws it
    ops = mil_ops(result.path, "image")
    assert any(op.op_type == "quantize" for op in ops) and any(op.op_type == "dequantize" for op in ops)
    floor = COMPRESSIONS["w8a8"].parity_floor
    assert all(enc.parity.min_cosine >= floor for enc in result.manifest.encoders.values())
