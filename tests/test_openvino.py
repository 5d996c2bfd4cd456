"""The OpenVINO backend and target on the tiny model (real OpenVINO sessions), and the `auto` backend choice."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeclip.bench.run import parse_targets
from edgeclip.cli import cli
from edgeclip.errors import BundleError, UsageError
from edgeclip.export import export_bundle
from edgeclip.export.targets import get_target
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.backends import RuntimeOptions, backend_for_target
from edgeclip.runtimes.backends.auto import Candidate, cache_key, candidates, choose
from edgeclip.runtimes.backends.openvino import cpu_has_bf16, resolve_hint
from edgeclip.runtimes.bundle import encoder_bytes, encoder_files
from edgeclip.runtimes.manifest import MANIFEST_NAME, BundleManifest
from edgeclip.runtimes.placement import placement_of
from tests.conftest import TINY, cosine_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["a photo of a cat", "a diagram of a circuit", "two red squares"]


@pytest.fixture(scope="module")
def bf16_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a `--target openvino --precision bf16` bundle (f32 IR, bf16 runtime hint)."""
    out = tmp_path_factory.mktemp("openvino") / "tiny-bf16.edgeclip"
    export_bundle(TINY, output=out, target="openvino", precision="bf16", random_init=True)
    return out


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The auto choice's cache folder, private to the test (XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "edgeclip" / "backend-choice"


def test_openvino_runs_the_onnx_bundle_like_onnxruntime(tiny_bundle: Path, photos) -> None:
    exact = load_bundle(tiny_bundle, backend="openvino", precision_hint="f32", threads=1)
    ref = load_bundle(tiny_bundle, threads=1)
    assert ref.backend_info.name == "onnxruntime"  # the onnx target's own backend stays the default
    images = list(photos.values())
    assert cosine_rows(exact.encode_image(images), ref.encode_image(images)).min() > 0.9999
    assert cosine_rows(exact.encode_text(TEXTS), ref.encode_text(TEXTS)).min() > 0.9999
    summary = exact.runtime_summary()
    assert summary["backend"] == "openvino" and summary["runs"].startswith("CPU f32 (asked)")
    placement = placement_of(exact.encoder("image"))
    assert placement is not None and placement.backend == "openvino" and placement.delegate == "CPU plugin (f32)"
    assert 0 < placement.delegated_ops <= placement.total_ops and placement.fraction > 0.8


def test_bf16_bundle_records_its_hint_and_runs_it(bf16_bundle: Path, tiny_bundle: Path, photos) -> None:
    manifest = BundleManifest.from_json((bf16_bundle / MANIFEST_NAME).read_text(), str(bf16_bundle))
    assert manifest.target == "openvino" and manifest.precision == "bf16"
    info = manifest.target_info["openvino"]
    assert info["precision_hint"] == "bf16" and info["weights"] == "fp32"
    assert {"image_encoder.bin", "text_encoder.bin", "image_encoder.xml"} <= set(manifest.checksums)
    # The weights are in the .bin: what an app ships (export's and bench's sizes) counts it with the .xml.
    xml, weights = (bf16_bundle / f"image_encoder.{ext}" for ext in ("xml", "bin"))
    assert encoder_files(manifest, "image") == ("image_encoder.xml", "image_encoder.bin")
    assert encoder_bytes(bf16_bundle, manifest, "image") == xml.stat().st_size + weights.stat().st_size
    assert weights.stat().st_size > xml.stat().st_size
    gate = manifest.calibration["gate"]
    assert gate["passed"] and gate["image"]["mean_cosine"] > 0.999 and gate["text"]["mean_cosine"] > 0.999
    bundle = load_bundle(bf16_bundle, threads=1)
    runs = bundle.runtime_summary()["runs"]
    assert runs.startswith("CPU bf16 (recorded in the IR)" if cpu_has_bf16() else "CPU f32 (bf16 recorded")
    ref = load_bundle(tiny_bundle, threads=1)
    images = list(photos.values())
    assert cosine_rows(bundle.encode_image(images), ref.encode_image(images)).min() > 0.999
    exact = load_bundle(bf16_bundle, threads=1, precision_hint="f32")  # the user who asks for exact gets it
    assert exact.runtime_summary()["runs"] == "CPU f32 (asked)"
    result = CliRunner().invoke(cli, ["info", str(bf16_bundle), "--verify", "--precision-hint", "f32"])
    assert result.exit_code == 0 and "verified" in result.output and "CPU f32 (asked)" in result.output, result.output


def test_a_changed_ir_weights_file_is_refused_at_load(bf16_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b.edgeclip"
    shutil.copytree(bf16_bundle, copy)
    weights = copy / "image_encoder.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"image_encoder\.bin: sha256 .* differs") as err:
        load_bundle(copy).encode_image([np.zeros((32, 32, 3), np.uint8)])
    assert "\n" not in str(err.value)


def test_an_ir_whose_inputs_differ_from_the_manifest_is_refused_at_load(bf16_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b.edgeclip"
    shutil.copytree(bf16_bundle, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    data["encoders"]["text"]["inputs"][0]["name"] = "input_ids"
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError) as err:
        load_bundle(copy).encode_text(["a cat"])
    message = str(err.value)
    assert "text_encoder.xml" in message and "['token_ids']" in message and "input_ids" in message
    assert "\n" not in message
    data["encoders"]["text"]["inputs"][0]["name"] = "token_ids"
    data["encoders"]["text"]["inputs"][0]["shape"] = ["batch", 7]
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"input 'token_ids' has shape \[\?, \d+\]: expected \['batch', 7\]"):
        load_bundle(copy).encode_text(["a cat"])


def test_bf16_on_a_cpu_without_it_runs_f32_and_says_so() -> None:
    assert resolve_hint("bf16", None, has_bf16=False) == (
        "f32",
        "bf16 asked, but this CPU has no AVX512_BF16/AMX: ran f32",
    )
    hint, why = resolve_hint(None, "bf16", has_bf16=False)
    assert hint == "f32" and "recorded in the IR" in why and "ran f32" in why
    assert resolve_hint("auto", None, has_bf16=True)[0] == "bf16"  # OpenVINO's own default where the CPU has it
    assert resolve_hint("auto", "f32", has_bf16=True) == ("f32", "recorded in the IR")
    assert resolve_hint("f32", "bf16", has_bf16=True) == ("f32", "asked")


def test_bad_runtime_requests_are_one_line(tiny_bundle: Path) -> None:
    with pytest.raises(UsageError, match="bf16 needs --backend openvino"):
        load_bundle(tiny_bundle, precision_hint="bf16").encode_text(["x"])
    with pytest.raises(UsageError, match="OpenVINO takes no execution providers"):
        load_bundle(tiny_bundle, backend="openvino", providers=["CPUExecutionProvider"]).encode_text(["x"])
    with pytest.raises(UsageError, match="precision hint 'fp8': expected one of auto, f32, bf16"):
        RuntimeOptions(precision_hint="fp8")
    with pytest.raises(UsageError, match="cannot run 'openvino' bundles"):
        backend_for_target("openvino", "onnxruntime")
    result = CliRunner().invoke(cli, ["info", str(tiny_bundle), "--backend", "openvinoo"])
    assert result.exit_code != 0 and "unknown backend 'openvinoo': expected one of auto," in result.output


def test_int8_without_calibration_and_openvino_missing_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="--target openvino --precision int8 needs --calibration"):
        get_target("openvino").parse_options({}, "int8")
    result = CliRunner().invoke(cli, ["export", "-m", TINY, "--random-init", "-o", "unused", "-t", "openvino",
                                      "--precision", "int8"])  # fmt: skip
    assert result.exit_code != 0 and "needs --calibration" in result.output and not Path("unused").exists()
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: `import openvino` raises ImportError
    with pytest.raises(UsageError, match=r'needs OpenVINO: pip install "edgeclip\[openvino\]"'):
        export_bundle(TINY, output="unused", target="openvino", random_init=True)
    from edgeclip.runtimes.backends.openvino import import_openvino

    with pytest.raises(UsageError, match=r'OpenVINO is not installed: pip install "edgeclip\[openvino\]"'):
        import_openvino()


def test_bench_rows_for_each_openvino_precision(tmp_path: Path) -> None:
    calib = tmp_path / "c.npz"
    calib.write_bytes(b"")
    rows = parse_targets(["openvino:fp32", "openvino:bf16", "openvino:fp16", f"openvino:int8+calibration={calib}"])
    assert [r.name for r in rows][:3] == ["openvino:fp32", "openvino:bf16", "openvino:fp16"]
    assert all(r.target == "openvino" and r.invalid is None for r in rows)


# --- auto ------------------------------------------------------------------------------------------------------------


def test_auto_candidates_and_the_chooser_on_given_timings() -> None:
    onnx = candidates("onnx", None)
    assert onnx[0] == Candidate("onnxruntime") and {Candidate("openvino", "f32"), Candidate("openvino", "bf16")} <= set(
        onnx
    )
    assert Candidate("openvino", "bf16") not in candidates("onnx", "f32")  # asked for exact: exact candidates only
    assert candidates("onnx", "bf16") == [Candidate("openvino", "bf16")]
    own, ov16, ov32 = Candidate("onnxruntime"), Candidate("openvino", "bf16"), Candidate("openvino", "f32")
    pick, why = choose({own: 40.0, ov16: 19.0, ov32: 50.0}, own)
    assert pick == ov16 and why.startswith("probe (image+text, batch 1): openvino bf16 19.0 ms, onnxruntime 40.0 ms")
    pick, why = choose({own: 20.0, ov16: 19.5}, own)  # within the margin: the bundle's own backend is kept
    assert pick == own and "within 5%" in why
    with pytest.raises(Exception, match="no backend could run this bundle"):
        choose({}, own)


def test_auto_cache_key_changes_with_the_bundle_and_the_request(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    names = ["onnxruntime", "openvino"]
    key = cache_key(manifest, RuntimeOptions(threads=2), names)
    assert key == cache_key(manifest, RuntimeOptions(threads=2), names)
    assert key != cache_key(manifest, RuntimeOptions(threads=1), names)
    assert key != cache_key(manifest, RuntimeOptions(threads=2, precision_hint="f32"), names)
    changed = dataclasses.replace(manifest, checksums={**manifest.checksums, "x": "0" * 64})
    assert key != cache_key(changed, RuntimeOptions(threads=2), names)


def test_auto_probes_once_caches_outside_the_bundle_and_says_why(tiny_bundle: Path, cache: Path) -> None:
    before = sorted(p.name for p in tiny_bundle.iterdir())
    first = load_bundle(tiny_bundle, backend="auto", threads=1)
    assert first.choice is not None and not first.choice.cached
    assert first.backend_info.name == first.choice.candidate.backend
    assert set(first.choice.timings) >= {"onnxruntime", "openvino f32"}
    assert len(list(cache.glob("*.json"))) == 1 and sorted(p.name for p in tiny_bundle.iterdir()) == before
    again = load_bundle(tiny_bundle, backend="auto", threads=1)
    assert again.choice is not None and again.choice.cached and again.choice.candidate == first.choice.candidate
    assert again.encode_text(TEXTS).shape == (3, again.embed_dim)
    exact = load_bundle(tiny_bundle, backend="auto", threads=1, precision_hint="f32")
    assert exact.choice is not None and exact.choice.candidate.hint in (None, "f32")
    result = CliRunner().invoke(cli, ["info", str(tiny_bundle), "--backend", "auto", "--threads", "1"])
    assert result.exit_code == 0 and "picked: auto: probe (image+text, batch 1)" in result.output, result.output
    for entry in cache.glob("*.json"):
        entry.write_text("{broken")  # a broken cache entry is probed again, not trusted
    assert not load_bundle(tiny_bundle, backend="auto", threads=1).choice.cached  # type: ignore[union-attr]


@pytest.mark.slow
def test_int8_bundle_through_nncf_passes_its_gate(tmp_path: Path, tiny_bundle: Path) -> None:
    from PIL import Image

    from edgeclip.data.shapes import ShapesDataset

    calib = tmp_path / "calib"
    calib.mkdir()
    shapes = ShapesDataset("train", size=64, seed=1)
    for i in range(20):
        Image.fromarray(shapes[i].image).save(calib / f"{i}.png")
    out = tmp_path / "int8.edgeclip"
    export_bundle(TINY, output=out, target="openvino", precision="int8", random_init=True,
                  target_options={"calibration": calib})  # fmt: skip
    manifest = BundleManifest.from_json((out / MANIFEST_NAME).read_text(), str(out))
    record = manifest.calibration
    assert record["quantizer"].startswith("nncf") and record["text_int8"] == "dynamic" and record["gate"]["passed"]
    assert record["gate"]["image"]["mean_cosine"] > 0.99 and record["gate"]["text"]["mean_cosine"] > 0.99
    assert manifest.target_info["openvino"]["weights"] == "int8"
    bundle = load_bundle(out, threads=1)
    assert cosine_rows(bundle.encode_text(TEXTS), load_bundle(tiny_bundle).encode_text(TEXTS)).min() > 0.99
    quantized = placement_of(bundle.encoder("image"))
    assert quantized is not None and ("i8" in quantized.note or "u8" in quantized.note)  # int8 layers really run
