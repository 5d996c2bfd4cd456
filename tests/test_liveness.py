"""Face detection, the liveness wrapper and `edgeclip liveness` / `eval liveness` on a real exported bundle.

The tiny bundle has random weights: these tests check the pipeline's behaviour (faces found or not, class order,
probabilities, thresholds, errors), not that it detects attacks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeclip.cli import cli
from edgeclip.data.attacks import apply_attack
from edgeclip.errors import BundleError, ImageError, UsageError
from edgeclip.runtimes import Head, load_bundle
from edgeclip.runtimes.faces import FaceBox, crop_face, get_face_detector
from edgeclip.runtimes.liveness import (
    BONA_FIDE,
    LIVENESS_SPECIES,
    LivenessDetector,
    build_liveness_head,
    species_from_mapping,
)


@pytest.fixture(scope="module")
def astronaut(photos) -> Image.Image:
    return photos["astronaut"]


@pytest.fixture(scope="module")
def lfw_faces() -> list[Image.Image]:
    """Real face crops from scikit-image's LFW subset (25 x 25 grey), upscaled to 96 px."""
    from skimage import data

    faces = data.lfw_subset()[:8]
    return [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB").resize((96, 96), Image.BICUBIC) for f in faces]


def test_haar_finds_the_astronaut_and_no_face_in_coffee(astronaut, photos) -> None:
    detector = get_face_detector("haar", 40)
    (box,) = detector.detect(astronaut)
    assert abs(box.x - 177) <= 6 and abs(box.y - 66) <= 6 and 85 <= box.width <= 105
    assert detector.detect(photos["coffee"]) == []


def test_several_faces_are_each_found_largest_first(astronaut) -> None:
    face = astronaut.crop((140, 30, 310, 200))
    scene = Image.new("RGB", (400, 220), (128, 128, 128))
    scene.paste(face, (10, 25))
    scene.paste(face.resize((150, 150)), (230, 35))
    boxes = get_face_detector("haar", 40).detect(scene)
    assert len(boxes) == 2 and boxes[0].x < 200 < boxes[1].x and boxes[0].area > boxes[1].area


def test_faces_below_the_minimum_size_are_not_reported(astronaut) -> None:
    small = astronaut.resize((128, 128))  # the face is about 27 px
    assert get_face_detector("haar", 40).detect(small) == []
    assert len(get_face_detector("haar", 20).detect(small)) == 1
    assert get_face_detector("none", 200).detect(small) == []  # whole-image "face" under the minimum


def test_crop_face_adds_the_margin_and_clamps(astronaut) -> None:
    assert crop_face(astronaut, FaceBox(200, 200, 100, 100), 0.25).size == (150, 150)
    assert crop_face(astronaut, FaceBox(0, 0, 100, 100), 0.5).size == (150, 150)  # clamped at the corner
    with pytest.raises(UsageError, match="margin"):
        crop_face(astronaut, FaceBox(0, 0, 10, 10), 3.0)
    with pytest.raises(UsageError, match="unknown face detector 'yolo'"):
        get_face_detector("yolo")


def test_scores_a_face_and_says_when_there_is_none(tiny_bundle: Path, astronaut, photos) -> None:
    det = LivenessDetector(load_bundle(tiny_bundle), threshold=0.0)
    r = det.score(astronaut)
    assert r.face_found and r.face_box is not None and len(r.faces) == 1
    probs = r.species_probabilities
    assert list(probs) == [s.name for s in LIVENESS_SPECIES]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    # liveness = P(bona fide) = 1 - sum of P(attack species)
    assert r.live_probability == pytest.approx(1 - sum(v for k, v in probs.items() if k != BONA_FIDE), abs=1e-5)
    assert r.is_live  # threshold 0 accepts every face
    none = det.score(photos["coffee"])
    assert not none.face_found and none.live_probability is None and not none.is_live
    assert none.to_dict()["face_found"] is False


def test_threshold_decides(tiny_bundle: Path, astronaut) -> None:
    bundle = load_bundle(tiny_bundle)
    p = LivenessDetector(bundle).score(astronaut).live_probability
    assert LivenessDetector(bundle, threshold=p).score(astronaut).is_live
    assert not LivenessDetector(bundle, threshold=min(1.0, p + 1e-4)).score(astronaut).is_live
    with pytest.raises(UsageError, match="threshold"):
        LivenessDetector(bundle, threshold=1.5)


def test_class_order_cannot_invert_the_score(tiny_bundle: Path, lfw_faces) -> None:
    bundle = load_bundle(tiny_bundle)
    head = build_liveness_head(bundle)
    order = np.random.default_rng(0).permutation(len(head.labels))
    shuffled = Head(
        head.name,
        head.kind,
        tuple(head.labels[i] for i in order),
        (),
        head.model_id,
        head.embeddings[order],
        positives=head.positives,
        prompts=tuple(head.prompts[i] for i in order),
    )
    a = LivenessDetector(bundle, head, detector="none").score_many(lfw_faces)
    b = LivenessDetector(bundle, shuffled, detector="none").score_many(lfw_faces)
    np.testing.assert_allclose([r.live_probability for r in a], [r.live_probability for r in b], atol=1e-6)


def test_stored_head_is_used_and_bound_to_its_model(tiny_bundle_copy: Path, lfw_faces) -> None:
    bundle = load_bundle(tiny_bundle_copy)
    built = LivenessDetector(bundle, detector="none").score_many(lfw_faces[:3])
    result = CliRunner().invoke(cli, ["heads", "add-liveness", str(tiny_bundle_copy)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = bundle.load_head("liveness")
    assert stored.kind == "liveness" and stored.positives == (BONA_FIDE,) and len(stored.prompts) == 9
    det = LivenessDetector(load_bundle(tiny_bundle_copy), detector="none")
    assert det.head.name == "liveness"
    np.testing.assert_allclose(
        [r.live_probability for r in det.score_many(lfw_faces[:3])], [r.live_probability for r in built], atol=1e-6
    )
    alien = Head(
        "x",
        "liveness",
        ("bona_fide", "print"),
        (),
        "Other@00",
        np.eye(2, bundle.embed_dim, dtype=np.float32),
        positives=("bona_fide",),
    )
    with pytest.raises(UsageError, match="belongs to Other@00"):
        LivenessDetector(bundle, alien)


def test_species_configuration_and_its_errors(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    species = species_from_mapping({"live": ["a real face"], "spoof": {"description": "x", "prompts": ["a print"]}})
    head = build_liveness_head(bundle, species, bona_fide="live")
    assert head.labels == ("live", "spoof") and head.positives == ("live",)
    with pytest.raises(UsageError, match="no bona fide class 'bona_fide'"):
        build_liveness_head(bundle, species)
    with pytest.raises(UsageError, match="needs a list of prompt strings"):
        species_from_mapping({"live": "a real face"})
    with pytest.raises(UsageError, match="non-blank prompt"):
        build_liveness_head(bundle, species_from_mapping({"bona_fide": [" "], "x": ["y"]}))
    emb = np.eye(2, bundle.embed_dim, dtype=np.float32)
    quality = Head("q", "quality", ("a:good", "a:bad"), (), bundle.model_id, emb)
    with pytest.raises(UsageError, match="is a quality head: expected a liveness head"):
        LivenessDetector(bundle, quality)


def test_bad_images_stop_or_are_skipped(tiny_bundle: Path, astronaut, tmp_path: Path) -> None:
    good = tmp_path / "a.jpg"
    astronaut.save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    det = LivenessDetector(load_bundle(tiny_bundle))
    with pytest.raises(ImageError, match="b.jpg"):
        det.score_many([good, bad])
    results = det.score_many([good, bad, good], skip_bad=True)
    assert [r.error is None for r in results] == [True, False, True] and results[2].face_found


def _eval_folder(root: Path, faces: list[Image.Image], species=("print", "screen_replay")) -> Path:
    for split, chunk in (("dev", faces[:4]), ("test", faces[4:8])):
        (root / split / BONA_FIDE).mkdir(parents=True)
        for i, face in enumerate(chunk):
            face.save(root / split / BONA_FIDE / f"{i}.png")
            for s in species:
                (root / split / s).mkdir(exist_ok=True)
                Image.fromarray(apply_attack(face, s, seed=i)).save(root / split / s / f"{i}.png")
    return root


def test_eval_liveness_cli(tiny_bundle: Path, lfw_faces, tmp_path: Path) -> None:
    data = _eval_folder(tmp_path / "fas", lfw_faces)
    result = CliRunner().invoke(
        cli, ["eval", "liveness", str(tiny_bundle), str(data), "--detector", "none", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["counts"]["test"] == {"bona_fide": 4, "print": 4, "screen_replay": 4}
    assert set(report["test"]["apcer"]) == {"print", "screen_replay"}
    assert report["threshold"] == report["dev"]["threshold"] == report["test"]["threshold"]
    assert 0 <= report["test_eer"] <= 1 and 0 <= report["test_auc"] <= 1
    assert set(report["test_bpcer_at_apcer"]) == {"0.01", "0.05"}
    text = CliRunner().invoke(cli, ["eval", "liveness", str(tiny_bundle), str(data), "--detector", "none"])
    assert text.exit_code == 0 and "APCER print" in text.output and "ACER" in text.output and "EER" in text.output


@pytest.mark.parametrize(
    ("remove", "message"),
    [("test/bona_fide", "has no bona fide samples"), ("dev/print", None), ("test", "has no test/ folder")],
)
def test_eval_folder_errors(tiny_bundle: Path, lfw_faces, tmp_path: Path, remove: str, message: str | None) -> None:
    import shutil

    data = _eval_folder(tmp_path / "fas", lfw_faces, species=("print",))
    shutil.rmtree(data / remove)
    result = CliRunner().invoke(cli, ["eval", "liveness", str(tiny_bundle), str(data), "--detector", "none"])
    assert result.exit_code == 2
    assert (message or "has no attack samples") in result.output and "Traceback" not in result.output


def test_liveness_cli(tiny_bundle: Path, astronaut, photos, tmp_path: Path) -> None:
    paths = []
    for name, image in (("astronaut", astronaut), ("coffee", photos["coffee"])):
        paths.append(tmp_path / f"{name}.jpg")
        image.save(paths[-1])
    result = CliRunner().invoke(cli, ["liveness", str(tiny_bundle), *map(str, paths), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["face_found"] and rows[0]["faces"][0]["face_box"]["width"] > 80
    assert rows[1]["face_found"] is False and rows[1]["live_probability"] is None
    text = CliRunner().invoke(cli, ["liveness", str(tiny_bundle), *map(str, paths)])
    assert "P(bona fide)" in text.output and "no face found" in text.output
    missing = CliRunner().invoke(cli, ["liveness", str(tiny_bundle), str(tmp_path / "nope.jpg")])
    assert missing.exit_code == 1 and "nope.jpg: no such file" in missing.output


@pytest.mark.parametrize(
    "command",
    [
        ["liveness"],
        ["quality"],
        ["eval"],
        ["eval", "liveness"],
        ["eval", "quality"],
        ["adapt"],
        ["train-quality"],
        ["heads", "add-liveness"],
        ["heads", "add-quality"],
    ],
)
def test_task_commands_have_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "edgeclip " in result.output


NO_TORCH = """
import sys
for name in ("torch", "open_clip", "timm", "torchvision"):
    sys.modules[name] = None
from skimage import data
import edgeclip
bundle = edgeclip.load_bundle(sys.argv[1])
r = edgeclip.LivenessDetector(bundle).score(data.astronaut())
q = edgeclip.QualityScorer(bundle).score(data.coffee())
assert r.face_found and 0 <= r.live_probability <= 1 and 0 <= q.score <= 1
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "timm") and sys.modules[m])
print("OK", heavy)
"""


def test_wrappers_run_with_torch_blocked(tiny_bundle: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tiny_bundle)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK []"


def test_a_corrupt_stored_head_is_a_bundle_error(tiny_bundle_copy: Path) -> None:
    bundle = load_bundle(tiny_bundle_copy)
    head = build_liveness_head(bundle)
    path = bundle.save_head(head)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["positives"] = np.array(["not_a_label"])
    np.savez(path, **arrays)
    with pytest.raises(BundleError, match="liveness.npz: sha256"):  # changed after `save_head` recorded it
        bundle.load_head("liveness")
    with pytest.raises(BundleError, match="inconsistent.*not_a_label"):
        load_bundle(tiny_bundle_copy, verify=False).load_head("liveness")


def test_without_opencv_the_cli_says_what_to_install(tiny_bundle: Path, astronaut, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.jpg"
    astronaut.save(path)
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv-python-headless were not installed
    result = CliRunner().invoke(cli, ["liveness", str(tiny_bundle), str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "Error: face detection needs OpenCV: pip install 'edgeclip[liveness]' (or use --detector none for face crops)"
    ]
    assert CliRunner().invoke(cli, ["liveness", str(tiny_bundle), str(path), "--detector", "none"]).exit_code == 0
