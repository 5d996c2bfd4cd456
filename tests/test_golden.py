"""Golden files for app ports and `edgeclip check-port`: a port written the way an app developer would (numpy, PIL,
the `tokenizers` library on the bundle's tokenizer.json, ONNX Runtime) passes, and the classic mistakes are caught
at the stage that makes them."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import ftfy
import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner
from PIL import Image
from tokenizers import Tokenizer as HFTokenizer

from benchmarks.port_resize_errors import naive_bilinear
from edgeclip.cli import cli
from edgeclip.errors import BundleError, UsageError
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.golden import (
    DUMP_FORMAT,
    GOLDEN_DIR,
    INDEX_NAME,
    RESIZE_MEAN_ABS_LEVELS,
    check_port_dump,
    load_golden,
)
from tests.conftest import TINY


def _index(bundle: Path) -> dict:
    return json.loads((bundle / GOLDEN_DIR / INDEX_NAME).read_text(encoding="utf-8"))


def _bin(bundle: Path, name: str) -> np.ndarray:
    """A golden array read the way a Swift or Kotlin port would: the index's shape and dtype over raw bytes."""
    entry = _index(bundle)["arrays"][name]
    raw = (bundle / GOLDEN_DIR / entry["file"]).read_bytes()
    return np.frombuffer(raw, dtype=np.dtype(entry["dtype"]).newbyteorder("<")).reshape(entry["shape"])


# --- a port, written without edgeclip --------------------------------------------------------------------------


_naive_bilinear = naive_bilinear  # what many hand-written resizers and GPU samplers do: no antialiasing


def _port_resize(rgb: np.ndarray, size: int, antialias: bool, interpolation: str) -> np.ndarray:
    """Short side to `size` (long side truncated, as torchvision does), the manifest's filter, a centre crop."""
    h, w = rgb.shape[:2]
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if antialias:
        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interpolation]
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), resample))
    else:
        resized = _naive_bilinear(rgb, new_h, new_w)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return resized[top : top + size, left : left + size]


def _port_tokenize(bundle: Path, texts: list[str], lowercase: bool) -> np.ndarray:
    """CLIP BPE through the `tokenizers` library: clean (ftfy, HTML entities, whitespace), lowercase, wrap, pad."""
    spec = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["tokenizer"]
    bpe = HFTokenizer.from_file(str(bundle / spec["file"]))
    out = np.full((len(texts), spec["context_length"]), spec["pad_id"], dtype=np.int64)
    for row, text in enumerate(texts):
        text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split())
        if lowercase:
            text = text.lower()
        ids = [spec["sot_id"], *bpe.encode(text, add_special_tokens=False).ids, spec["eot_id"]]
        ids = ids[: spec["context_length"]]
        ids[-1] = spec["eot_id"]
        out[row, : len(ids)] = ids
    return out


def write_port_dump(
    bundle: Path, folder: Path, *, antialias: bool = True, lowercase: bool = True, as_bin: bool = False
) -> Path:
    """Every stage as an app port computes it, dumped as NAME.npy files (or raw .bin with an index.json)."""
    index = _index(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    pre = manifest["preprocess"]
    size = pre["image_size"][0]
    arrays: dict[str, np.ndarray] = {}
    resized = []
    for i, image in enumerate(index["images"]):
        rgb = np.asarray(Image.open(bundle / GOLDEN_DIR / image["file"]).convert("RGB"))
        arrays[f"decode.{i}"] = rgb
        resized.append(_port_resize(rgb, size, antialias, pre["interpolation"]))
    arrays["resize"] = np.stack(resized)
    pixels = (arrays["resize"].astype(np.float32) / 255 - np.float32(pre["mean"])) / np.float32(pre["std"])
    arrays["normalize"] = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
    arrays["tokenize"] = _port_tokenize(bundle, index["texts"], lowercase)
    # The encoders run on the golden inputs, so this stage tests the runtime alone.
    for role, name in (("image", "normalize"), ("text", "tokenize")):
        spec = manifest["encoders"][role]
        session = onnxruntime.InferenceSession(str(bundle / spec["file"]), providers=["CPUExecutionProvider"])
        arrays[f"encode.{role}"] = session.run(None, {spec["inputs"][0]["name"]: _bin(bundle, name)})[0]
    folder.mkdir(parents=True, exist_ok=True)
    if as_bin:
        entries = {}
        for name, array in arrays.items():
            (folder / f"{name}.bin").write_bytes(
                np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            )
            entries[name] = {"file": f"{name}.bin", "shape": list(array.shape), "dtype": array.dtype.name}
        (folder / INDEX_NAME).write_text(json.dumps({"format": DUMP_FORMAT, "version": 1, "arrays": entries}))
    else:
        for name, array in arrays.items():
            np.save(folder / f"{name}.npy", array)
    return folder


# --- the golden set in the bundle ------------------------------------------------------------------------------


def test_every_bundle_carries_a_small_checksummed_golden_set(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    bundle.verify()  # golden/ is covered by the manifest's checksums
    assert GOLDEN_DIR in bundle.manifest.checksums
    golden = load_golden(bundle.path, bundle.manifest)
    assert golden is not None
    assert golden.size_bytes() < 1_000_000
    index = _index(tiny_bundle)
    assert index["byte_order"] == "little" and len(index["images"]) == 3
    texts = index["texts"]
    assert "" in texts and any(t != t.lower() for t in texts) and any(not t.isascii() for t in texts)
    # The stored stages are the runtime's own: decoded PNG, tokens, and the written encoder's embeddings.
    tokens = _bin(tiny_bundle, "tokenize")
    assert tokens.dtype == np.int64 and np.array_equal(tokens, bundle.tokenizer.encode(texts))
    assert tokens[texts.index(max(texts, key=len)), -1] == bundle.manifest.tokenizer.eot_id  # cut at 77, eot last
    png = Image.open(tiny_bundle / GOLDEN_DIR / index["images"][0]["file"])
    assert png.format == "PNG" and np.array_equal(np.asarray(png.convert("RGB")), _bin(tiny_bundle, "decode.0"))
    images = [Image.open(tiny_bundle / GOLDEN_DIR / item["file"]) for item in index["images"]]
    assert np.allclose(bundle.encode_image(images), _bin(tiny_bundle, "encode.image"), atol=1e-5)
    assert np.allclose(bundle.encode_text(texts), _bin(tiny_bundle, "encode.text"), atol=1e-5)
    assert index["embeddings_from"].startswith("the written encoder files run by onnxruntime")
    contract = index["input_contract"]
    assert contract["image"]["layout"] == "NCHW" and contract["text"]["dtype"] == "int64"
    assert _bin(tiny_bundle, "normalize").shape == (3, 3, 64, 64)


def test_a_correct_port_passes_every_stage(tiny_bundle: Path, tmp_path: Path) -> None:
    report = check_port_dump(tiny_bundle, write_port_dump(tiny_bundle, tmp_path / "dump"))
    assert report.ok, report.to_dict()
    assert [s.stage for s in report.stages] == ["decode", "resize", "normalize", "tokenize", "encode"]
    assert all(s.status == "pass" for s in report.stages)
    encode = report.stages[-1]
    assert encode.error is not None and encode.error > 0.9999


def test_a_resize_without_antialiasing_is_caught_at_the_resize_stage(tiny_bundle: Path, tmp_path: Path) -> None:
    report = check_port_dump(tiny_bundle, write_port_dump(tiny_bundle, tmp_path / "dump", antialias=False))
    first = report.first_failure
    assert first is not None and first.stage == "resize"
    assert (
        first.error is not None and first.error > RESIZE_MEAN_ABS_LEVELS and first.tolerance == RESIZE_MEAN_ABS_LEVELS
    )
    assert report.stages[0].status == "pass"  # decoding was right
    normalize = report.stages[2]
    assert normalize.status == "pass" and "own resize" in normalize.metric  # normalizing itself was right


def test_a_tokenizer_without_lowercasing_is_caught_at_the_tokenize_stage(tiny_bundle: Path, tmp_path: Path) -> None:
    report = check_port_dump(tiny_bundle, write_port_dump(tiny_bundle, tmp_path / "dump", lowercase=False))
    first = report.first_failure
    assert first is not None and first.stage == "tokenize"
    assert "'A DOG Playing In The SNOW'" in first.detail and "ids differ from position 1" in first.detail
    assert [s.status for s in report.stages[:3]] == ["pass", "pass", "pass"]


def test_raw_bin_dumps_with_an_index_are_read_like_npy(tiny_bundle: Path, tmp_path: Path) -> None:
    report = check_port_dump(tiny_bundle, write_port_dump(tiny_bundle, tmp_path / "dump", as_bin=True))
    assert report.ok, report.to_dict()


def test_wrong_shape_or_dtype_names_the_stage_and_the_expected_shape(tiny_bundle: Path, tmp_path: Path) -> None:
    dump = write_port_dump(tiny_bundle, tmp_path / "dump")
    np.save(dump / "normalize.npy", np.load(dump / "normalize.npy").transpose(0, 2, 3, 1))  # NHWC, not NCHW
    np.save(dump / "tokenize.npy", np.load(dump / "tokenize.npy").astype(np.int32))
    report = check_port_dump(tiny_bundle, dump)
    stages = {s.stage: s for s in report.stages}
    assert report.first_failure is stages["normalize"]
    assert "normalize is [3, 64, 64, 3] float32: expected [3, 3, 64, 64] float32" in stages["normalize"].detail
    assert "tokenize is [8, 77] int32: expected [8, 77] int64" in stages["tokenize"].detail
    (dump / INDEX_NAME).write_text(json.dumps({"format": DUMP_FORMAT, "arrays": {"resize": {"file": "r.bin"}}}))
    with pytest.raises(UsageError, match="needs file, shape and dtype"):
        check_port_dump(tiny_bundle, dump)


def test_a_missing_stage_is_reported_not_failed(tiny_bundle: Path, tmp_path: Path) -> None:
    dump = write_port_dump(tiny_bundle, tmp_path / "dump")
    for name in ("resize", "normalize", "encode.image", "encode.text"):
        (dump / f"{name}.npy").unlink()
    report = check_port_dump(tiny_bundle, dump)
    assert report.ok and [s.status for s in report.stages] == ["pass", "missing", "missing", "pass", "missing"]
    with pytest.raises(UsageError, match="does not exist"):
        check_port_dump(tiny_bundle, tmp_path / "nowhere")


def test_changed_golden_files_fail_the_checksum(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    tokens = tiny_bundle_copy / GOLDEN_DIR / "tokenize.bin"
    data = bytearray(tokens.read_bytes())
    data[8] ^= 1
    tokens.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="golden files changed or corrupt"):
        check_port_dump(tiny_bundle_copy, tmp_path)


def test_a_bundle_written_before_goldens_still_loads(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(tiny_bundle_copy / GOLDEN_DIR)
    manifest = tiny_bundle_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["checksums"][GOLDEN_DIR]
    manifest.write_text(json.dumps(data))
    bundle = load_bundle(tiny_bundle_copy)
    bundle.verify()
    assert load_golden(bundle.path, bundle.manifest) is None
    assert bundle.encode_text(["a cat"]).shape == (1, 64)
    runner = CliRunner()
    result = runner.invoke(cli, ["info", str(tiny_bundle_copy)])
    assert result.exit_code == 0 and "no golden files" in result.output
    result = runner.invoke(cli, ["check-port", str(tiny_bundle_copy), str(tmp_path)])
    assert result.exit_code == 1 and "has no golden files" in result.output


def test_check_port_cli_names_the_first_stage_that_differs(tiny_bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    good = write_port_dump(tiny_bundle, tmp_path / "good")
    result = runner.invoke(cli, ["check-port", str(tiny_bundle), str(good)])
    assert result.exit_code == 0, result.output
    assert "matches the golden files at every stage" in result.output
    bad = write_port_dump(tiny_bundle, tmp_path / "bad", antialias=False)
    result = runner.invoke(cli, ["check-port", str(tiny_bundle), str(bad)])
    assert result.exit_code == 1
    assert "resize     fail" in result.output and "the port first differs at stage resize" in result.output
    result = runner.invoke(cli, ["check-port", str(tiny_bundle), str(bad), "--json"])
    data = json.loads(result.output[: result.output.rindex("}") + 1])
    assert data["first_failure"] == "resize" and data["ok"] is False
    result = runner.invoke(cli, ["info", str(tiny_bundle)])
    assert "golden     3 images, 8 texts" in result.output


def test_where_the_files_cannot_run_the_embeddings_come_from_pytorch(tiny_bundle: Path, tmp_path: Path) -> None:
    """CoreML on Linux: golden embeddings from the reparameterized PyTorch encoders, and the index says so."""
    import torch

    from edgeclip.export import _reparameterized_copy
    from edgeclip.export.golden import write_golden
    from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders
    from edgeclip.models.encoders import ImageEncoder, TextEncoder
    from edgeclip.models.loading import load_model

    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    deploy = _reparameterized_copy(load_model(TINY, random_init=True).model)  # the bundle's weights (seed 0)
    encoders = Encoders(
        image=ImageEncoder(deploy).eval(),
        text=TextEncoder(deploy).eval(),
        image_example=torch.zeros(1, 3, 64, 64),
        text_example=torch.zeros(1, 77, dtype=torch.int64),
        preprocess=m.preprocess,
        tokenizer=m.tokenizer,
    )
    files = EncoderFiles(
        *(EncoderFile(enc.file, enc.inputs, enc.outputs) for enc in (m.encoders["image"], m.encoders["text"]))
    )
    index = write_golden(tmp_path, encoders, files, bundle.tokenizer, {"image": None, "text": None}, "coreml")
    assert index["embeddings_from"].startswith("PyTorch ") and "cannot run here" in index["embeddings_from"]
    for role in ("image", "text"):
        from_torch = np.fromfile(tmp_path / GOLDEN_DIR / f"encode.{role}.bin", dtype="<f4").reshape(-1, m.embed_dim)
        cos = (from_torch * _bin(tiny_bundle, f"encode.{role}")).sum(-1)  # both L2-normalized
        assert cos.min() > 0.9999, role


def test_golden_images_are_not_photos_of_a_folder_that_holds_the_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from edgeclip.data.images import list_images

    shutil.copytree(tiny_bundle, tmp_path / "model.edgeclip")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    (tmp_path / "album" / "golden").mkdir(parents=True)  # a folder merely named golden is still scanned
    Image.new("RGB", (8, 8)).save(tmp_path / "album" / "golden" / "g.png")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["album/golden/g.png", "photo.png"]
