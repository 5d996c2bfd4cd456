"""Calibration sets: sampling, storage, bad input, the ORT reader adapter and `edgeclip calibrate`."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeclip.calibration import (
    CalibrationSet,
    OrtCalibrationReader,
    build_calibration_set,
    default_text_strings,
    feeds,
    load_calibration_set,
    select,
    split_held_out,
)
from edgeclip.calibration.sampling import farthest_point
from edgeclip.data.shapes import ShapesDataset, write_image_folder
from edgeclip.errors import UsageError
from edgeclip.runtimes.preprocess import PreprocessSpec

SPEC = PreprocessSpec((32, 32), "shortest", "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 shapes images in class subfolders, plus captions.jsonl."""
    return write_image_folder(ShapesDataset("train", size=48, seed=5), tmp_path_factory.mktemp("calib") / "imgs", 80)


def test_random_draw_is_deterministic_by_seed(shapes_folder: Path) -> None:
    a, skipped = build_calibration_set(shapes_folder, SPEC, count=70, seed=1)
    b, _ = build_calibration_set(shapes_folder, SPEC, count=70, seed=1)
    c, _ = build_calibration_set(shapes_folder, SPEC, count=70, seed=2)
    assert skipped == []
    assert a.pixels.shape == (70, 3, 32, 32) and a.pixels.dtype == np.float32
    assert a.sources == b.sources and a.sha256 == b.sha256
    assert a.sources != c.sources
    assert all("/" in s and not s.startswith("/") for s in a.sources)  # relative to the folder, recursive


def test_diverse_spreads_over_clusters_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8)) * 10
    features = np.concatenate([c + rng.normal(size=(40, 8)) * 0.1 for c in centres])
    picked = farthest_point(features, 5, seed=3)
    assert sorted(set((picked // 40).tolist())) == [0, 1, 2, 3, 4]  # one from every cluster
    assert np.array_equal(picked, farthest_point(features, 5, seed=3))
    assert np.array_equal(select(5, 200, "random", seed=3), select(5, 200, "random", seed=3))
    with pytest.raises(UsageError, match="strategy"):
        select(5, 200, "kmeans", seed=3)


@pytest.mark.filterwarnings("ignore:calibration set from")
def test_diverse_images_cover_more_colours_than_random(shapes_folder: Path) -> None:
    records = [json.loads(line) for line in (shapes_folder / "captions.jsonl").read_text().splitlines()]
    colour = {r["image"]: r["attributes"]["color"] for r in records}
    diverse, _ = build_calibration_set(shapes_folder, SPEC, count=8, strategy="diverse", seed=0)
    again, _ = build_calibration_set(shapes_folder, SPEC, count=8, strategy="diverse", seed=0)
    assert diverse.sources == again.sources
    random_cover = np.mean(
        [
            len({colour[s] for s in build_calibration_set(shapes_folder, SPEC, count=8, seed=s)[0].sources})
            for s in range(4)
        ]
    )
    assert len({colour[s] for s in diverse.sources}) >= random_cover


def test_save_load_round_trip_and_corruption(shapes_folder: Path, tmp_path: Path) -> None:
    calib, _ = build_calibration_set(shapes_folder, SPEC, count=64, texts=["a red circle", "a blue star"])
    path = calib.save(tmp_path / "calib.npz")
    back = load_calibration_set(path, expect=SPEC)
    assert np.array_equal(back.pixels, calib.pixels) and back.sources == calib.sources
    assert back.texts == ("a red circle", "a blue star") and back.id == calib.id == f"calib-{calib.sha256[:16]}"
    with np.load(path) as data:
        arrays = dict(data)
    arrays["pixels"] = arrays["pixels"] + 1
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UsageError, match="corrupt"):
        load_calibration_set(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match=r"junk.npz is not an edgeclip calibration set \(not a .npz archive\)"):
        load_calibration_set(tmp_path / "junk.npz")


def test_other_preprocessing_is_refused_naming_both(shapes_folder: Path, tmp_path: Path) -> None:
    calib, _ = build_calibration_set(shapes_folder, SPEC, count=64)
    path = calib.save(tmp_path / "calib.npz")
    other = PreprocessSpec((48, 48), "shortest", "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(UsageError, match=r"made for preprocessing 32x32 .*expects 48x48"):
        load_calibration_set(path, expect=other)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no images"):
        build_calibration_set(tmp_path / "empty", SPEC)


def test_small_folder_warns_with_the_count_and_unreadable_files_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "few"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(folder / "sub" / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="has only 5 images"):
        calib, skipped = build_calibration_set(folder, SPEC, count=256)
    assert len(calib) == 5 and len(skipped) == 1 and "broken.jpg" in skipped[0]
    with pytest.warns(UserWarning, match="has only 5 images"):
        diverse, skipped = build_calibration_set(folder, SPEC, count=256, strategy="diverse")
    assert len(diverse) == 5 and "broken.jpg" in skipped[0]


def test_captions_file_gives_images_and_text_strings(shapes_folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calib, _ = build_calibration_set(shapes_folder / "captions.jsonl", SPEC, count=10)
    captions = {json.loads(line)["caption"] for line in (shapes_folder / "captions.jsonl").read_text().splitlines()}
    assert len(calib) == 10 and calib.texts and set(calib.texts) <= captions


def test_default_text_strings_mix_labels_and_templates() -> None:
    texts = default_text_strings(["cat", "dog", "car"], count=12)
    assert len(texts) == 12 and len(set(texts)) == 12
    assert {w for w in ("cat", "dog", "car") if any(w in t for t in texts)} == {"cat", "dog", "car"}


def test_feeds_and_the_ort_reader_replay_the_same_batches() -> None:
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    batches = feeds({"x": x}, batch_size=2)
    assert [b["x"].shape[0] for b in batches] == [2, 2, 1]
    reader = OrtCalibrationReader(batches)
    first = [reader.get_next()["x"].tolist() for _ in range(3)]
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["x"].tolist() == first[0] and len(reader) == 3
    keep, held = split_held_out(20, 4, seed=0)
    assert len(held) == 4 and not set(keep) & set(held) and len(keep) + len(held) == 20


def test_calibration_set_validates_its_arrays() -> None:
    with pytest.raises(UsageError, match="float32"):
        CalibrationSet(np.zeros((2, 3, 4, 4), np.float64), SPEC, ("a", "b"), (), "random", 0)
    with pytest.raises(UsageError, match="source names"):
        CalibrationSet(np.zeros((2, 3, 4, 4), np.float32), SPEC, ("a",), (), "random", 0)


def test_calibration_package_imports_without_torch(shapes_folder: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgeclip.calibration import build_calibration_set\n"
        "from edgeclip.runtimes.preprocess import PreprocessSpec\n"
        "spec = PreprocessSpec((32, 32), 'shortest', 'bilinear', (0, 0, 0), (1, 1, 1))\n"
        f"c, _ = build_calibration_set({str(shapes_folder)!r}, spec, count=64, strategy='diverse')\n"
        "print(len(c), [m for m in ('torch', 'open_clip', 'onnx') if sys.modules.get(m)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "64 []"


def test_cli_calibrate_from_a_bundle(tiny_bundle: Path, shapes_folder: Path, tmp_path: Path) -> None:
    from edgeclip.cli import cli

    out = tmp_path / "calib.npz"
    args = ["calibrate", str(shapes_folder), "--model", str(tiny_bundle), "-o", str(out), "-n", "64", "--json"]
    result = CliRunner().invoke(cli, [*args, "--strategy", "diverse"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == 64 and report["strategy"] == "diverse" and report["id"].startswith("calib-")
    from edgeclip.runtimes.bundle import load_bundle

    assert len(load_calibration_set(out, expect=load_bundle(tiny_bundle).manifest.preprocess)) == 64
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "exists" in again.output
    (tmp_path / "none").mkdir()
    empty = CliRunner().invoke(
        cli, ["calibrate", str(tmp_path / "none"), "-m", str(tiny_bundle), "-o", str(tmp_path / "x.npz")]
    )
    assert empty.exit_code == 2 and "holds no images" in empty.output


def test_cli_calibrate_help_has_an_example() -> None:
    from edgeclip.cli import cli

    result = CliRunner().invoke(cli, ["calibrate", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "edgeclip calibrate " in result.output
