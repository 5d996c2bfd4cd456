"""Issue 18: what is verified is what runs, nothing escapes a bundle, nothing is lost, no traceback reaches a user.

Each test here failed on the code before the fix (the closing note of issue 18 lists what each did then).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeclip.cli import cli
from edgeclip.errors import BundleError, DatasetError, ImageError, ModelError, UsageError
from edgeclip.runtimes import ZeroShotClassifier, load_bundle
from edgeclip.runtimes.checksums import DigestCache, sha256_file
from edgeclip.runtimes.heads import Head
from tests.conftest import TINY


def run(*args: object):
    """The CLI as a user runs it; an exception escaping the boundary is kept (it would be a traceback)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def fails_in_one_line(result, *fragments: str) -> str:
    """Exit != 0, no traceback, exactly one `Error:` line, holding every fragment."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"traceback: {result.exception!r}"
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture()
def red_jpg(tmp_path: Path) -> Path:
    path = tmp_path / "red.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    return path


# --- 1. every file that changes an output is covered by the manifest's checksums --------------------------------


def _swap_two_tokens(bundle: Path) -> None:
    path = bundle / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(data))


def test_a_swapped_tokenizer_is_caught_by_info_and_at_load(tiny_bundle_copy: Path) -> None:
    _swap_two_tokens(tiny_bundle_copy)
    fails_in_one_line(run("info", tiny_bundle_copy), "tokenizer.json", "tokenizer changed or corrupt")
    with pytest.raises(BundleError, match="tokenizer changed or corrupt"):
        load_bundle(tiny_bundle_copy).encode_text(["a photo of a cat"])


def test_heads_are_covered_added_and_removed_with_the_manifest(tiny_bundle_copy: Path) -> None:
    edit_manifest(tiny_bundle_copy, lambda d: d.__setitem__("added_by_a_later_minor", {"kept": True}))
    assert run("heads", "add", tiny_bundle_copy, "--name", "pets", "--labels", "cat,dog", "-q").exit_code == 0
    manifest = json.loads((tiny_bundle_copy / "manifest.json").read_text())
    assert manifest["added_by_a_later_minor"] == {"kept": True}  # rewriting the manifest keeps what it cannot read
    assert manifest["checksums"]["heads/pets.npz"] == sha256_file(tiny_bundle_copy / "heads/pets.npz")
    assert run("info", tiny_bundle_copy).exit_code == 0
    # a head replaced by another valid head (other labels) is refused: it would change every answer
    bundle = load_bundle(tiny_bundle_copy)
    other = bundle.load_head("pets")
    swapped = Head("pets", other.kind, ("car", "tree"), other.templates, other.model_id, other.embeddings[::-1].copy())
    swapped.save(tiny_bundle_copy / "heads/pets.npz")
    with pytest.raises(BundleError, match="pets.npz: sha256"):
        load_bundle(tiny_bundle_copy).load_head("pets")
    # a head dropped in by hand is not covered
    shutil.copy(tiny_bundle_copy / "heads/pets.npz", tiny_bundle_copy / "heads/extra.npz")
    with pytest.raises(BundleError, match="extra.npz is not covered"):
        load_bundle(tiny_bundle_copy).load_head("extra")
    fails_in_one_line(run("info", tiny_bundle_copy), "heads/pets.npz")
    assert run("heads", "remove", tiny_bundle_copy, "pets").exit_code == 0
    assert "heads/pets.npz" not in json.loads((tiny_bundle_copy / "manifest.json").read_text())["checksums"]


# --- 2. run commands verify what they load, by default, with an opt-out --------------------------------------------


def test_classify_verifies_by_default_and_no_verify_opts_out(tiny_bundle_copy: Path, red_jpg: Path) -> None:
    # the file no longer matches the manifest (as after a swap); the file itself still loads
    edit_manifest(tiny_bundle_copy, lambda d: d["encoders"]["image"].__setitem__("sha256", "0" * 64))
    fails_in_one_line(
        run("classify", tiny_bundle_copy, red_jpg, "--labels", "cat,dog"), "image encoder changed or corrupt"
    )
    assert run("classify", tiny_bundle_copy, red_jpg, "--labels", "cat,dog", "--no-verify").exit_code == 0


def test_bench_verifies_by_default_and_no_verify_opts_out(tiny_bundle_copy: Path) -> None:
    edit_manifest(tiny_bundle_copy, lambda d: d["encoders"]["image"].__setitem__("sha256", "0" * 64))
    quick = ("--runs", "2", "--warmup", "0", "--eval-images", "4", "--threads", "1", "--quiet", "--json", "-")
    checked = run("bench", "run", tiny_bundle_copy, "--no-isolate", *quick)
    assert checked.exit_code == 0, checked.output
    (row,) = json.loads(checked.output)["entries"]
    assert row["status"] == "failed_checks" and "image encoder changed or corrupt" in row["reason"]
    trusted = run("bench", "run", tiny_bundle_copy, *quick, "--no-verify")  # a row subprocess: the flag travels
    assert trusted.exit_code == 0, trusted.output
    (row,) = json.loads(trusted.output)["entries"]
    assert row["status"] == "ok" and row["latency"]["image"], row


def test_bench_search_verifies_by_default_and_no_verify_opts_out(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    edit_manifest(tiny_bundle_copy, lambda d: d["encoders"]["image"].__setitem__("sha256", "0" * 64))
    quick = ("--entries", "50", "--images", "4", "--image-size", "32", "--runs", "2", "--warmup", "0", "--quiet")
    fails_in_one_line(run("bench", "search", tiny_bundle_copy, *quick), "image encoder changed or corrupt")
    out = run("bench", "search", tiny_bundle_copy, *quick, "--no-verify", "--json", tmp_path / "search.json")
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "search.json").read_text())["entries"][0]["status"] == "ok"


def test_the_digest_cache_is_not_fooled_by_a_same_size_rewrite_in_the_same_second(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"A" * 4096)
    time.sleep(2.1)  # older than the settling time, so the digest is cached
    cache = DigestCache()
    first = cache.digest(path)
    st = path.stat()
    assert cache.digest(path) == first and len(cache._digests) == 1
    with open(path, "r+b") as f:  # same inode, same size, and mtime forged back to the old value
        f.write(b"B")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    assert cache.digest(path) == sha256_file(path) != first


# --- 3. no path escapes a bundle ---------------------------------------------------------------------------------


def test_heads_add_and_remove_through_a_symlinked_heads_folder_refuse(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.npz").write_bytes(b"keep me")
    (tiny_bundle_copy / "heads").symlink_to(outside)
    fails_in_one_line(run("heads", "add", tiny_bundle_copy, "--name", "x", "--labels", "a,b", "-q"), "symlink")
    fails_in_one_line(run("heads", "remove", tiny_bundle_copy, "victim"), "symlink")
    assert sorted(p.name for p in outside.iterdir()) == ["victim.npz"]
    assert (outside / "victim.npz").read_bytes() == b"keep me"


def test_a_head_symlinked_outside_is_refused(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    assert run("heads", "add", tiny_bundle_copy, "--name", "pets", "--labels", "cat,dog", "-q").exit_code == 0
    (tmp_path / "elsewhere.npz").write_bytes((tiny_bundle_copy / "heads/pets.npz").read_bytes())
    (tiny_bundle_copy / "heads/pets.npz").unlink()
    (tiny_bundle_copy / "heads/pets.npz").symlink_to(tmp_path / "elsewhere.npz")
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        load_bundle(tiny_bundle_copy).load_head("pets")


@pytest.mark.parametrize("path", [".", "image_encoder.onnx\0x", "", "a/../../x"])
def test_manifest_paths_that_are_not_a_file_inside(tiny_bundle_copy: Path, path: str) -> None:
    edit_manifest(tiny_bundle_copy, lambda d: d["encoders"]["image"].__setitem__("file", path))
    fails_in_one_line(run("info", tiny_bundle_copy), "escapes the bundle")


# --- 4. export --force replaces only what it can prove is a bundle -------------------------------------------------


def test_export_force_refuses_a_bundle_folder_holding_anything_else(tiny_bundle_copy: Path) -> None:
    (tiny_bundle_copy / "notes.txt").write_text("precious")
    result = run("export", "-m", TINY, "--random-init", "-o", tiny_bundle_copy, "--force")
    fails_in_one_line(result, "notes.txt", "refusing")
    assert (tiny_bundle_copy / "notes.txt").read_text() == "precious"


def test_export_force_refuses_a_folder_whose_manifest_is_not_one(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"name": "my web app"}')
    (folder / "index.js").write_text("precious")
    fails_in_one_line(run("export", "-m", TINY, "--random-init", "-o", folder, "--force"), "not an edgeclip manifest")
    assert (folder / "index.js").read_text() == "precious"


def test_export_force_refuses_a_symlink(tiny_bundle: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.edgeclip"
    link.symlink_to(tiny_bundle)
    fails_in_one_line(run("export", "-m", TINY, "--random-init", "-o", link, "--force"), "symlink")


# --- bad input: one line naming the thing and what was expected ----------------------------------------------------


@pytest.mark.parametrize("command", [["classify", "--labels", "a,b"], ["quality"], ["liveness", "--detector", "none"]])
def test_an_empty_image_folder(tiny_bundle: Path, tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "empty").mkdir()
    result = run(command[0], tiny_bundle, tmp_path / "empty", *command[1:])
    fails_in_one_line(result, "empty", "holds no images")


def test_a_nan_logit_scale_is_refused(tiny_bundle_copy: Path, red_jpg: Path) -> None:
    edit_manifest(tiny_bundle_copy, lambda d: d.__setitem__("logit_scale", float("nan")))
    fails_in_one_line(run("classify", tiny_bundle_copy, red_jpg, "--labels", "a,b"), "logit_scale", "finite")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.__setitem__("embed_dim", 7), "embed_dim"),
        (lambda d: d["tokenizer"].__setitem__("context_length", 5), "text encoder"),
        (lambda d: d["preprocess"].__setitem__("image_size", [32, 32]), "image encoder"),
        (lambda d: d["encoders"]["image"]["inputs"][0].__setitem__("name", "nope"), "expected ['nope']"),
    ],
    ids=["embed_dim", "context_length", "image_size", "input_name"],
)
def test_manifest_values_that_disagree_with_the_encoder(tiny_bundle_copy: Path, red_jpg: Path, change, fragment):
    edit_manifest(tiny_bundle_copy, change)
    fails_in_one_line(run("classify", tiny_bundle_copy, red_jpg, "--labels", "a,b", "--no-verify"), fragment)


def test_an_encoder_replaced_by_another_valid_model(tiny_bundle_copy: Path, red_jpg: Path) -> None:
    shutil.copy(tiny_bundle_copy / "text_encoder.onnx", tiny_bundle_copy / "image_encoder.onnx")
    fails_in_one_line(run("classify", tiny_bundle_copy, red_jpg, "--labels", "a,b"), "image encoder changed")
    result = run("classify", tiny_bundle_copy, red_jpg, "--labels", "a,b", "--no-verify")
    # whichever backend `auto` runs (its choice may be cached for this bundle), the error names the file and inputs
    fails_in_one_line(result, "image_encoder.onnx: the", "encoder takes inputs ['token_ids']")


def test_a_head_of_the_wrong_dimension_and_heads_list(tiny_bundle_copy: Path, red_jpg: Path) -> None:
    assert run("heads", "add", tiny_bundle_copy, "--name", "good", "--labels", "a,b", "-q").exit_code == 0
    good = load_bundle(tiny_bundle_copy).load_head("good")
    bad = Head("bad", good.kind, good.labels, good.templates, good.model_id, np.ones((2, 5), np.float32))
    load_bundle(tiny_bundle_copy).save_head(bad)
    fails_in_one_line(run("classify", tiny_bundle_copy, red_jpg, "--head", "bad"), "5-dim", "expected 64")
    listed = run("heads", "list", tiny_bundle_copy)
    assert listed.exit_code == 0 and listed.exception is None
    assert "good" in listed.output and "bad" in listed.output and "5-dim" in listed.output


@pytest.mark.parametrize("template", ["a {} photo of {0}", "a {} photo in {place}", "a {} photo {", "{} and {}"])
def test_templates_that_cannot_take_one_label(tiny_bundle: Path, red_jpg: Path, tmp_path: Path, template: str):
    (tmp_path / "t.txt").write_text(template + "\n")
    result = run("classify", tiny_bundle, red_jpg, "--labels", "a,b", "--templates", f"@{tmp_path / 't.txt'}")
    fails_in_one_line(result, repr(template), "expected exactly one '{}'")


def test_literal_braces_in_a_template_are_fine(tiny_bundle: Path, red_jpg: Path, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("a {{curly}} photo of a {}\n")
    result = run("classify", tiny_bundle, red_jpg, "--labels", "a,b", "--templates", f"@{tmp_path / 't.txt'}")
    assert result.exit_code == 0, result.output


def test_labels_file_in_utf16_and_in_latin1(tiny_bundle: Path, red_jpg: Path, tmp_path: Path) -> None:
    (tmp_path / "utf16.txt").write_bytes("chat\nchien\n".encode("utf-16"))
    result = run("classify", tiny_bundle, red_jpg, "--labels", f"@{tmp_path / 'utf16.txt'}", "--jsonl")
    assert result.exit_code == 0, result.output
    assert {p["label"] for p in json.loads(result.output)["predictions"]} == {"chat", "chien"}
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    result = run("classify", tiny_bundle, red_jpg, "--labels", f"@{tmp_path / 'latin1.txt'}")
    fails_in_one_line(result, "latin1.txt", "is not UTF-8")


def test_a_string_of_labels_is_not_a_list_of_letters(tiny_bundle: Path) -> None:
    with pytest.raises(UsageError, match="labels is the string 'cat'"):
        ZeroShotClassifier(load_bundle(tiny_bundle), labels="cat")


def test_skip_bad_fails_when_every_input_was_bad(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    result = run("classify", tiny_bundle, tmp_path / "bad.jpg", "--labels", "a,b", "--skip-bad")
    fails_in_one_line(result, "none of the 1 images could be read")


def test_a_deeply_nested_manifest(tiny_bundle_copy: Path) -> None:
    (tiny_bundle_copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    fails_in_one_line(run("info", tiny_bundle_copy), "manifest.json", "nested too deeply")


def test_a_checkpoint_with_a_tensor_of_the_wrong_shape(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from edgeclip.models.loading import load_model

    state = {k: v.contiguous() for k, v in load_model(TINY, random_init=True).model.state_dict().items()}
    state["positional_embedding"] = torch.zeros(77, 32)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelError, match="bad.safetensors does not match EdgeCLIP-Tiny-ViT"):
        load_model(TINY, str(tmp_path / "bad.safetensors"))


def test_train_quality_on_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run(
        "train-quality", "-m", TINY, "--random-init", "--images", tmp_path / "empty", "-o", tmp_path / "q.safetensors"
    )
    fails_in_one_line(result, "holds no images")


def test_a_captions_file_that_is_not_utf8(tmp_path: Path) -> None:
    from edgeclip.distill.sources import open_source

    Image.new("RGB", (32, 32)).save(tmp_path / "red.jpg")
    (tmp_path / "caps.jsonl").write_bytes(b'{"image": "red.jpg", "caption": "\xff\xfe bad"}\n')
    with pytest.raises(DatasetError, match="caps.jsonl is not UTF-8"):
        open_source(str(tmp_path / "caps.jsonl"))


def test_a_brace_pattern_of_billions_is_refused_before_expanding() -> None:
    from edgeclip.distill.tario import expand_pattern

    start = time.perf_counter()
    with pytest.raises(DatasetError, match="names more than 1,000,000 files"):
        expand_pattern("shards/{0000000000..9999999999}.tar")
    with pytest.raises(DatasetError, match="names more than"):
        expand_pattern("{" + "9" * 5000 + "..1}")
    assert time.perf_counter() - start < 1


def test_distill_refuses_a_runaway_shard_pattern_before_loading_a_model(tmp_path: Path) -> None:
    # the architecture does not exist: had the model been looked at first, the error would name it instead
    args = ("--model", "No-Such-Architecture", "--output", tmp_path / "run", "--steps", "1")
    start = time.perf_counter()
    line = fails_in_one_line(run("distill", "--data", "shards/{0000000000..9999999999}.tar", *args), "names more than")
    assert "No-Such-Architecture" not in line and time.perf_counter() - start < 5
    assert not (tmp_path / "run").exists()


def test_a_large_photo_can_be_allowed(tiny_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from edgeclip.data import images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100 * 100)
    Image.new("RGB", (128, 128)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="--max-pixels 16384 allows it"):
        images.load_image(tmp_path / "big.png")
    with images.pixel_limit(128 * 128):
        assert images.load_image(tmp_path / "big.png").size == (128, 128)
    fails_in_one_line(run("classify", tiny_bundle, tmp_path / "big.png", "--labels", "a,b"), "--max-pixels")
    result = run("classify", tiny_bundle, tmp_path / "big.png", "--labels", "a,b", "--max-pixels", 16384)
    assert result.exit_code == 0, result.output


def test_written_files_honour_the_umask(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    from edgeclip.bench.results import write_atomic
    from edgeclip.calibration import build_calibration_set

    before = os.umask(0o022)
    try:
        assert run("heads", "add", tiny_bundle_copy, "--name", "u", "--labels", "a,b", "-q").exit_code == 0
        images = tmp_path / "images"
        images.mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), (i * 90, 0, 0)).save(images / f"{i}.png")
        calib, _ = build_calibration_set(images, load_bundle(tiny_bundle_copy).manifest.preprocess, count=2)
        calib.save(tmp_path / "calib.npz")
        write_atomic(tmp_path / "results.json", "{}")
    finally:
        os.umask(before)
    for path in (tiny_bundle_copy / "heads/u.npz", tmp_path / "calib.npz", tmp_path / "results.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tiny_bundle_copy / "manifest.json").stat().st_mode) == 0o644


# --- 7. classify streams ------------------------------------------------------------------------------------------


def test_classify_prints_each_batch_as_it_finishes(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(9):
        Image.new("RGB", (48, 48), (i * 25, 100, 0)).save(folder / f"{i}.jpg")
    (folder / "9.jpg").write_bytes(b"broken")  # the last batch stops the run: earlier batches are already out
    result = run("classify", tiny_bundle, folder, "--labels", "a,b", "--batch-size", "4", "--jsonl")
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [Path(r["source"]).name for r in lines] == [f"{i}.jpg" for i in range(8)]
    fails_in_one_line(result, "9.jpg")


def test_classify_json_and_jsonl_hold_the_same_results(tiny_bundle: Path, photo_files: list[Path]) -> None:
    as_json = run("classify", tiny_bundle, *photo_files, "--labels", "a,b", "--json")
    as_jsonl = run("classify", tiny_bundle, *photo_files, "--labels", "a,b", "--jsonl")
    assert json.loads(as_json.output) == [json.loads(line) for line in as_jsonl.output.splitlines()]


def test_the_quality_checkpoint_honours_the_umask(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from edgeclip.train.quality import save_checkpoint

    model = torch.nn.Linear(3, 2)
    before = os.umask(0o027)  # neither mkstemp's 0600 nor the usual 0644: the umask itself decides
    try:
        path = save_checkpoint(model, tmp_path / "out" / "quality.safetensors", {"kind": "test"})
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert torch.equal(load_file(path)["weight"], model.weight.detach())
    assert [p.name for p in path.parent.iterdir()] == ["quality.safetensors"]  # no temporary file left behind
