"""The `edgeclip` command line through click's CliRunner: exit codes, one-line errors, JSON, help examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeclip import __version__
from edgeclip.cli import cli
from tests.conftest import TINY


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["export"],
        ["info"],
        ["heads"],
        ["heads", "add"],
        ["heads", "list"],
        ["heads", "remove"],
        ["classify"],
        ["targets"],
    ],
)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and "edgeclip " in result.output


@pytest.mark.slow
def test_export_info_heads_classify_round_trip(tmp_path: Path, photo_files: list[Path]) -> None:
    out = tmp_path / "tiny.edgeclip"
    result = run("export", "--model", TINY, "--random-init", "--output", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "parity vs PyTorch: min cosine" in result.output and "random weights" in result.output

    info = run("info", out)
    assert info.exit_code == 0 and "files verified" in info.output and TINY in info.output
    data = json.loads(run("info", out, "--json").output)
    assert data["source"]["architecture"] == TINY and data["heads"] == []

    added = run("heads", "add", out, "--name", "pets", "--labels", "cat,dog,hamster", "--templates", "simple", "-q")
    assert added.exit_code == 0 and "3 labels x 7 templates" in added.output
    listed = json.loads(run("heads", "list", out, "--json").output)
    assert listed == [{"name": "pets", "kind": "zero-shot", "labels": ["cat", "dog", "hamster"], "templates": 7}]

    by_head = run("classify", out, *photo_files, "--head", "pets", "--json", "--top-k", "2")
    assert by_head.exit_code == 0, by_head.output
    rows = json.loads(by_head.output)
    assert [r["source"] for r in rows] == [str(p) for p in photo_files]
    assert all(len(r["predictions"]) == 2 for r in rows)

    by_labels = run("classify", out, tmp_path, "--labels", "cat,dog,hamster", "--templates", "simple", "--top-k", "1")
    assert by_labels.exit_code == 0, by_labels.output
    assert len(by_labels.output.strip().splitlines()) == len(photo_files)  # the folder was expanded to its images

    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("cat\ndog\n\n")
    from_file = run("classify", out, photo_files[0], "--labels", f"@{labels_file}", "--json")
    assert [p["label"] for p in json.loads(from_file.output)[0]["predictions"]].__len__() == 2

    removed = run("heads", "remove", out, "pets")
    assert removed.exit_code == 0 and json.loads(run("heads", "list", out, "--json").output) == []


def test_classify_bad_files_stop_or_are_skipped(tiny_bundle: Path, photo_files: list[Path], tmp_path: Path) -> None:
    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    stopped = run("classify", tiny_bundle, photo_files[0], empty, "--labels", "cat,dog")
    assert stopped.exit_code == 1
    assert "zero.jpg" in one_line_error(stopped)
    skipped = run("classify", tiny_bundle, photo_files[0], empty, text, "--labels", "cat,dog", "--skip-bad", "--json")
    assert skipped.exit_code == 0
    rows = json.loads(skipped.stdout)
    assert ["error" in r for r in rows] == [False, True, True]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (
            ["export", "--model", "MobilCLIP2-S0", "--random-init", "--output", "{tmp}/x"],
            2,
            "did you mean MobileCLIP2-S0",
        ),
        (["export", "--model", TINY, "--output", "{tmp}/x"], 2, "no weights given"),
        (
            ["export", "--model", TINY, "--pretrained", "{tmp}/missing.safetensors", "--output", "{tmp}/x"],
            1,
            "does not exist",
        ),
        (["export", "--model", TINY, "--random-init", "--output", "{bundle}"], 2, "exists: pass --force"),
        (
            ["export", "--model", TINY, "--random-init", "--output", "{tmp}/x", "--mean", "0.1,0.2"],
            2,
            "expected 1 or 3",
        ),
        (
            ["export", "--model", TINY, "--random-init", "--output", "{tmp}/x", "--image-size", "big"],
            2,
            "is not a size",
        ),
        (
            ["export", "--model", TINY, "--random-init", "--output", "{tmp}/x", "--target", "onx"],
            2,
            "did you mean 'onnx'",
        ),
        (["info", "{tmp}/nowhere"], 1, "does not exist"),
        (["classify", "{bundle}", "{tmp}/a.jpg"], 2, "give --head NAME or --labels"),
        (["classify", "{bundle}", "{tmp}/a.jpg", "--labels", ""], 2, "label"),
        (["classify", "{bundle}", "{tmp}/a.jpg", "--head", "nope"], 1, "has no head 'nope'"),
        (["classify", "{bundle}", "{tmp}/a.jpg", "--labels", "cat", "--threads", "0"], 2, "--threads"),
        (["heads", "add", "{bundle}", "--name", "../x", "--labels", "cat"], 2, "head name"),
    ],
)
def test_bad_input_is_one_line_with_the_right_exit_code(
    args: list[str], code: int, needle: str, tiny_bundle: Path, tmp_path: Path, photo_files: list[Path]
) -> None:
    (tmp_path / "a.jpg").write_bytes(photo_files[0].read_bytes())
    filled = [a.format(tmp=tmp_path, bundle=tiny_bundle) for a in args]
    result = run(*filled)
    assert result.exit_code == code, result.output
    assert needle in one_line_error(result)


@pytest.mark.slow
def test_export_json_output(tmp_path: Path) -> None:
    result = run("export", "--model", TINY, "--random-init", "--output", tmp_path / "b", "--json", "-q")
    data = json.loads(result.stdout)  # what a pipe gets; warnings go to stderr
    assert data["manifest"]["encoders"]["image"]["parity"]["min_cosine"] >= 0.9999
    assert set(data["timings"]) >= {"load", "convert", "parity"}


def test_targets_lists_the_registry() -> None:
    data = {t["name"]: t for t in json.loads(run("targets", "--json").output)}
    assert sorted(data) == ["coreml", "executorch", "litert", "onnx", "openvino", "tensorrt"]
    assert data["onnx"]["precisions"] == ["fp32", "fp16", "int8"]
