"""LiteRT target and backend: real litert-torch conversions of the tiny model, run by ai-edge-litert's Interpreter."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeclip.cli import cli
from edgeclip.errors import BundleError, UsageError
from edgeclip.export import export_bundle
from edgeclip.export.targets.litert import DYNAMIC_RECIPE
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.backends import RuntimeOptions
from edgeclip.runtimes.manifest import MANIFEST_NAME
from edgeclip.runtimes.placement import placement_of
from tests.conftest import TINY

pytest.importorskip("ai_edge_litert", reason="LiteRT runtime not installed (pip install 'edgeclip[litert]')")
pytest.importorskip("litert_torch", reason="LiteRT converter not installed (pip install 'edgeclip[litert]')")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def litert_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as an fp32 LiteRT bundle (same seeded random weights as the session's ONNX bundle)."""
    out = tmp_path_factory.mktemp("litert") / "tiny-litert.edgeclip"
    export_bundle(TINY, output=out, target="litert", random_init=True)
    return out


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("litert") / "tiny-litert-dyn.edgeclip"
    export_bundle(
        TINY, output=out, target="litert", precision="int8", random_init=True, target_options={"dynamic": True}
    )
    return out


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))


def test_manifest_records_the_input_contract_and_parity_of_the_written_files(litert_bundle: Path) -> None:
    m = _manifest(litert_bundle)
    image, text = m["encoders"]["image"], m["encoders"]["text"]
    assert image["file"] == "image_encoder.tflite" and text["file"] == "text_encoder.tflite"
    assert image["inputs"] == [{"name": "pixels", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert text["inputs"][0]["name"] == "token_ids" and text["inputs"][0]["dtype"] == "int32"
    assert m["target_info"]["layout"] == "NCHW" and m["target_info"]["token_ids_dtype"] == "int32"
    # the tiny ViT has no depthwise conv over XNNPACK's 25 taps: the rewrite ran and replaced nothing
    assert m["target_info"]["module_rewrites"] == {"image": {"depthwise-bands": 0}, "text": {"depthwise-bands": 0}}
    for role in ("image", "text"):  # parity measured by the Interpreter on the written file, photos and strings
        assert m["encoders"][role]["parity"]["min_cosine"] >= 0.9999
    assert m["encoders"]["image"]["parity"]["samples"] >= 4 and m["encoders"]["text"]["parity"]["samples"] >= 10


def test_bundle_embeds_photos_and_strings_like_the_onnx_bundle(
    litert_bundle: Path, tiny_bundle: Path, photo_files: list[Path]
) -> None:
    lite, ref = load_bundle(litert_bundle, threads=2), load_bundle(tiny_bundle)
    texts = ["a photo of a cat", "café crème — 2 €", "", "word " * 100]
    pairs = [(lite.encode_image(photo_files), ref.encode_image(photo_files))]
    pairs.append((lite.encode_text(texts), ref.encode_text(texts)))
    for a, b in pairs:
        assert a.shape == b.shape
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cos.min() >= 0.9999, cos


def test_threads_are_always_set_and_batches_run_row_by_row(litert_bundle: Path) -> None:
    from edgeclip.runtimes.backends.litert import LiteRTBackend, default_threads

    spec = load_bundle(litert_bundle).manifest.encoders["image"]
    path = litert_bundle / spec.file
    assert LiteRTBackend(path, spec, RuntimeOptions(threads=3)).threads == 3
    backend = LiteRTBackend(path, spec, RuntimeOptions())
    assert backend.threads == default_threads() >= 1
    batch = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    together = backend.run({"pixels": batch})[0]
    alone = np.concatenate([backend.run({"pixels": batch[i : i + 1]})[0] for i in range(3)])
    assert together.shape == (3, 64) and np.array_equal(together, alone)


def test_placement_reports_xnnpack_coverage_from_the_execution_plan(litert_bundle: Path) -> None:
    from edgeclip.runtimes.backends.litert import delegate_coverage, make_interpreter

    bundle = load_bundle(litert_bundle, threads=1)
    image, text = placement_of(bundle.encoder("image")), placement_of(bundle.encoder("text"))
    assert image is not None and text is not None
    assert image.delegate == "XNNPACK" and image.pieces >= 1 and image.fraction == 1.0 and not image.fallback
    # Token ids index an embedding table and are argmax-pooled: integer ops XNNPACK does not take.
    assert 0.8 < text.fraction < 1.0 and {"EMBEDDING_LOOKUP", "ARG_MAX"} <= set(text.fallback)
    assert text.total_ops == text.delegated_ops + sum(text.fallback.values())
    # The same graph without XNNPACK: no partition, every op left out (the report can say "not delegated").
    plain = make_interpreter(litert_bundle / "image_encoder.tflite", 1, xnnpack=False)
    total, delegated, pieces, fallback = delegate_coverage(plain._get_ops_details())
    assert (total, delegated, pieces) == (image.total_ops, 0, 0) and sum(fallback.values()) == total


def test_dynamic_int8_quantizes_weights_and_passes_the_gate(litert_bundle: Path, dynamic_bundle: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    m = _manifest(dynamic_bundle)
    record = m["calibration"]
    assert m["precision"] == "int8" and record["mode"] == "dynamic" and record["gate"]["passed"]
    assert record["recipes"] == {"image": DYNAMIC_RECIPE, "text": DYNAMIC_RECIPE}
    assert record["gate"]["image"]["mean_cosine"] >= 0.99 and record["gate"]["text"]["mean_cosine"] >= 0.99
    for role in ("image", "text"):
        assert m["encoders"][role]["parity"]["mean_cosine"] >= 0.99
        path = dynamic_bundle / f"{role}_encoder.tflite"
        assert path.stat().st_size < (litert_bundle / f"{role}_encoder.tflite").stat().st_size
        dtypes = {d["dtype"] for d in Interpreter(model_path=str(path)).get_tensor_details()}
        assert np.int8 in dtypes
    assert placement_of(load_bundle(dynamic_bundle).encoder("image")).fraction == 1.0  # type: ignore[union-attr]


@pytest.mark.slow
def test_static_int8_from_a_calibration_set(tmp_path: Path, litert_bundle: Path) -> None:
    from edgeclip.calibration import build_calibration_set
    from edgeclip.data.shapes import ShapesDataset, write_image_folder
    from edgeclip.export.targets.litert import STATIC_RECIPE

    spec = load_bundle(litert_bundle).manifest.preprocess
    folder = write_image_folder(ShapesDataset("train", size=64, seed=9), tmp_path / "imgs", 40)
    calib = build_calibration_set(folder, spec, count=40, seed=0)[0].save(tmp_path / "calib.npz")
    out = tmp_path / "static.edgeclip"
    options = {"calibration": calib}
    export_bundle(TINY, output=out, target="litert", precision="int8", random_init=True, target_options=options)
    record = _manifest(out)["calibration"]
    assert record["mode"] == "static" and record["text_int8"] == "dynamic" and record["gate"]["passed"]
    assert record["recipes"] == {"image": STATIC_RECIPE, "text": DYNAMIC_RECIPE}
    assert record["set"]["images"] == 40 and _manifest(out)["encoders"]["image"]["parity"]["mean_cosine"] >= 0.99
    image = load_bundle(out)
    assert image.encoder("image").interpreter.get_input_details()[0]["dtype"] == np.float32  # float I/O kept
    placement = placement_of(image.encoder("image"))
    assert placement is not None and placement.fraction == 1.0 and placement.pieces == 1, placement


def test_int8_without_calibration_or_dynamic_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs --calibration .* or --dynamic") as err:
        export_bundle(TINY, output=tmp_path / "x", target="litert", precision="int8", random_init=True)
    assert "\n" not in str(err.value) and not (tmp_path / "x").exists()


def test_a_missing_converter_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # how Python marks a module as not importable
    result = CliRunner().invoke(cli, ["export", "-m", TINY, "--random-init", "-t", "litert", "-o", str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert "litert-torch" in line and "edgeclip[litert]" in line and not (tmp_path / "b").exists()


def test_a_file_that_is_not_a_tflite_is_a_bundle_error(litert_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bad.edgeclip"
    shutil.copytree(litert_bundle, copy)
    (copy / "image_encoder.tflite").write_bytes(b"not a flatbuffer" * 64)
    bundle = load_bundle(copy, verify=False)
    with pytest.raises(BundleError, match="image_encoder.tflite could not be loaded by the LiteRT interpreter"):
        bundle.encoder("image")
    with pytest.raises(UsageError, match="XNNPACK"):
        load_bundle(litert_bundle, providers=["CUDAExecutionProvider"]).encoder("image")
