"""The bundle reader and zero-shot classification, on a real exported bundle and real onnxruntime sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.errors import BundleError, ImageError, UsageError
from edgeclip.runtimes import Head, ZeroShotClassifier, build_zero_shot_head, load_bundle


def test_encode_image_accepts_paths_pil_and_arrays(tiny_bundle: Path, photo_files: list[Path], photos) -> None:
    bundle = load_bundle(tiny_bundle)
    astronaut = photos["astronaut"]
    mixed = [photo_files[0], astronaut, np.asarray(astronaut)]
    emb = bundle.encode_image(mixed)
    assert emb.shape == (3, bundle.embed_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[1], emb[2], atol=1e-6)  # PIL image and its array are the same input
    assert float(emb[0] @ emb[1]) > 0.99  # the JPEG of the same photo embeds close to the original


def test_batching_does_not_change_results(tiny_bundle: Path, photos) -> None:
    bundle = load_bundle(tiny_bundle, threads=1)
    images = list(photos.values()) * 3
    np.testing.assert_allclose(
        bundle.encode_image(images, batch_size=1), bundle.encode_image(images, batch_size=4), atol=1e-5
    )
    texts = [f"a photo of number {i}" for i in range(70)]
    np.testing.assert_allclose(
        bundle.encode_text(texts, batch_size=64), bundle.encode_text(texts, batch_size=7), atol=1e-5
    )
    assert bundle.encode_text("one string").shape == (1, bundle.embed_dim)


def test_unavailable_provider_is_a_usage_error(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle, providers=["NoSuchExecutionProvider"])
    with pytest.raises(UsageError, match="NoSuchExecutionProvider is not available here: expected one of"):
        bundle.encode_text("x")


@pytest.mark.parametrize("missing", ["image_encoder.onnx", "tokenizer.json", "manifest.json"])
def test_a_missing_file_is_named(tiny_bundle_copy: Path, missing: str) -> None:
    (tiny_bundle_copy / missing).unlink()
    with pytest.raises(BundleError, match=missing):
        load_bundle(tiny_bundle_copy)


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_newer_schema_is_refused(tiny_bundle_copy: Path) -> None:
    _edit_manifest(tiny_bundle_copy, lambda d: d.__setitem__("format_version", "9.0"))
    with pytest.raises(BundleError, match="newer than this edgeclip reads"):
        load_bundle(tiny_bundle_copy)


def test_manifest_path_escaping_the_bundle_is_refused(tiny_bundle_copy: Path) -> None:
    _edit_manifest(tiny_bundle_copy, lambda d: d["encoders"]["text"].__setitem__("file", "../../etc/passwd"))
    with pytest.raises(BundleError, match="escapes the bundle"):
        load_bundle(tiny_bundle_copy)


def test_symlink_out_of_the_bundle_is_refused(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    (tiny_bundle_copy / "image_encoder.onnx").rename(outside)
    os.symlink(outside, tiny_bundle_copy / "image_encoder.onnx")
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        load_bundle(tiny_bundle_copy)


def test_verify_catches_a_changed_file(tiny_bundle_copy: Path) -> None:
    with open(tiny_bundle_copy / "text_encoder.onnx", "ab") as f:
        f.write(b"\0")
    load_bundle(tiny_bundle_copy, verify=False)  # opted out: the file is only checked for existence
    with pytest.raises(BundleError, match="text encoder changed or corrupt"):
        load_bundle(tiny_bundle_copy).verify()
    with pytest.raises(BundleError, match="text encoder changed or corrupt"):  # verified as it is read, by default
        load_bundle(tiny_bundle_copy).encode_text(["a"])


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_zero_shot_head_is_the_prompt_ensemble(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    head = build_zero_shot_head(bundle, ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}."], "pets")
    emb = bundle.encode_text(["a photo of a cat.", "a drawing of a cat.", "a photo of a dog.", "a drawing of a dog."])
    expected = emb.reshape(2, 2, -1).mean(axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(head.embeddings, expected, atol=1e-6)
    assert head.labels == ("cat", "dog") and head.model_id == bundle.model_id
    assert len(build_zero_shot_head(bundle, ["cat"], "openai").templates) == 80
    assert len(build_zero_shot_head(bundle, ["cat"], "simple").templates) == 7


def test_classifier_ranks_labels_with_probabilities(tiny_bundle: Path, photos) -> None:
    bundle = load_bundle(tiny_bundle)
    clf = ZeroShotClassifier(bundle, labels=["cat", "dog", "hamster", "coffee"], templates="simple")
    ranked = clf.predict(photos["chelsea"], top_k=None)
    probs = [p for _, p in ranked]
    assert sorted(label for label, _ in ranked) == ["cat", "coffee", "dog", "hamster"]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    logits = clf.logits([photos["chelsea"]])[0]
    assert ranked[0][0] == clf.labels[int(np.argmax(logits))]
    assert len(clf.predict(photos["chelsea"], top_k=2)) == 2


def test_heads_are_stored_and_bound_to_their_model(tiny_bundle_copy: Path, photos) -> None:
    bundle = load_bundle(tiny_bundle_copy)
    head = build_zero_shot_head(bundle, ["cat", "dog"], "simple", "pets")
    bundle.save_head(head)
    assert bundle.head_names() == ["pets"]
    with pytest.raises(BundleError, match="exists: pass --force"):
        bundle.save_head(head)
    stored = bundle.load_head("pets")
    np.testing.assert_array_equal(stored.embeddings, head.embeddings)
    assert stored.templates == head.templates
    by_labels = ZeroShotClassifier(bundle, labels=["cat", "dog"], templates="simple").predict(photos["coffee"])
    by_head = ZeroShotClassifier(bundle, head="pets").predict(photos["coffee"])
    assert [lab for lab, _ in by_labels] == [lab for lab, _ in by_head]

    alien = Head("alien", "zero-shot", ("a",), ("{}",), "OtherModel@0000", np.ones((1, bundle.embed_dim), np.float32))
    alien.save(tiny_bundle_copy / "heads" / "alien.npz")  # written by hand: not in the manifest's checksums
    with pytest.raises(BundleError, match="alien.npz is not covered by the manifest's checksums"):
        bundle.load_head("alien")
    with pytest.raises(BundleError, match="was built for model OtherModel@0000, not this bundle's"):
        load_bundle(tiny_bundle_copy, verify=False).load_head("alien")
    with pytest.raises(BundleError, match="has no head 'nope'"):
        bundle.load_head("nope")
    bundle.remove_head("alien")
    assert bundle.head_names() == ["pets"]


@pytest.mark.parametrize(
    ("labels", "message"),
    [([], "label list is empty"), (["cat", " "], "label number 2 is blank"), (["cat", "cat"], "appears twice")],
)
def test_bad_labels(tiny_bundle: Path, labels, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ZeroShotClassifier(load_bundle(tiny_bundle), labels=labels)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 65])
def test_head_names_cannot_become_paths(tiny_bundle: Path, name: str) -> None:
    with pytest.raises(UsageError, match="head name"):
        build_zero_shot_head(load_bundle(tiny_bundle), ["cat"], "simple", name)


def test_bad_templates(tiny_bundle: Path) -> None:
    with pytest.raises(UsageError, match="unknown template set 'imagenet'"):
        build_zero_shot_head(load_bundle(tiny_bundle), ["cat"], "imagenet")
    with pytest.raises(UsageError, match="exactly one"):
        build_zero_shot_head(load_bundle(tiny_bundle), ["cat"], ["no placeholder"])


def test_predict_many_stops_at_or_skips_bad_images(tiny_bundle: Path, photo_files: list[Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo_files[0].read_bytes()[:200])
    clf = ZeroShotClassifier(load_bundle(tiny_bundle), labels=["cat", "dog"], templates="simple")
    inputs = [photo_files[0], empty, photo_files[1], truncated, photo_files[2]]
    with pytest.raises(ImageError, match="empty.jpg"):
        clf.predict_many(inputs)
    results = clf.predict_many(inputs, skip_bad=True, batch_size=2)
    assert [r.source for r in results] == [str(p) for p in inputs]
    assert [r.error is not None for r in results] == [False, True, False, True, False]
    assert all(len(r.ranked) == 2 for r in results if r.error is None)


NO_TORCH = """
import sys
for name in ("torch", "open_clip", "timm", "torchvision"):
    sys.modules[name] = None
import numpy as np
import edgeclip
from edgeclip.runtimes import load_bundle, ZeroShotClassifier
bundle = edgeclip.load_bundle(sys.argv[1])
emb = bundle.encode_image([np.zeros((40, 50, 3), np.uint8)])
probs = edgeclip.ZeroShotClassifier(bundle, labels=["cat", "dog"]).predict(np.zeros((40, 50, 3), np.uint8))
assert emb.shape == (1, bundle.embed_dim) and len(probs) == 2
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "timm") and sys.modules[m])
print("OK", heavy)
"""


def test_runtime_side_runs_with_torch_blocked(tiny_bundle: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tiny_bundle)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK []"


def test_import_edgeclip_is_light() -> None:
    code = "import sys, edgeclip.runtimes; print([m for m in ('torch', 'open_clip', 'timm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_dynamic_batch_in_the_raw_session(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    for n in (1, 5):
        assert bundle.encode_image([image] * n).shape == (n, bundle.embed_dim)
