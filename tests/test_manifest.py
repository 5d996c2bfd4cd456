"""The manifest: round trip, schema versions, unsafe paths and clear errors on malformed input."""

from __future__ import annotations

import json

import pytest

from edgeclip.errors import BundleError
from edgeclip.runtimes.manifest import (
    BundleManifest,
    EncoderSpec,
    ParityReport,
    SourceModel,
    TensorSpec,
    check_relative_path,
)
from edgeclip.runtimes.preprocess import PreprocessSpec
from edgeclip.runtimes.tokenizer import TokenizerSpec


def make_manifest(**changes) -> BundleManifest:
    parity = ParityReport("pytorch", 8, 0.99999, 0.999995, 1e-6)
    enc = {
        "image": EncoderSpec(
            "image_encoder.onnx",
            "ab" * 32,
            (TensorSpec("pixels", ("batch", 3, 64, 64), "float32"),),
            (TensorSpec("embeddings", ("batch", 64), "float32"),),
            parity,
        ),
        "text": EncoderSpec(
            "text_encoder.onnx",
            "cd" * 32,
            (TensorSpec("token_ids", ("batch", 77), "int64"),),
            (TensorSpec("embeddings", ("batch", 64), "float32"),),
            None,
        ),
    }
    fields = dict(
        source=SourceModel("EdgeCLIP-Tiny-ViT", "w.safetensors", "ef" * 32, "01" * 32, False),
        target="onnx",
        precision="fp32",
        embed_dim=64,
        logit_scale=100.0,
        encoders=enc,
        preprocess=PreprocessSpec((64, 64), "shortest", "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        tokenizer=TokenizerSpec(kind="clip-bpe", context_length=77, sot_id=49406, eot_id=49407),
        edgeclip_version="0.1.0",
        created="2026-11-28T12:00:00+00:00",
        preprocess_source="open_clip pretrained config",
    )
    fields.update(changes)
    return BundleManifest(**fields)


def test_round_trip_keeps_every_field() -> None:
    m = make_manifest()
    again = BundleManifest.from_json(m.to_json())
    assert again == m
    assert again.model_id == "EdgeCLIP-Tiny-ViT@" + "01" * 8
    assert json.loads(m.to_json())["model_id"] == m.model_id


def test_newer_major_version_is_refused_and_newer_minor_read() -> None:
    data = make_manifest().to_dict()
    data["format_version"] = "2.0"
    with pytest.raises(BundleError, match=r"newer than this edgeclip reads"):
        BundleManifest.from_dict(data)
    data["format_version"] = "1.7"
    data["some_future_field"] = {"x": 1}
    assert BundleManifest.from_dict(data).format_version == "1.7"


@pytest.mark.parametrize("path", ["../escape.onnx", "/etc/passwd", "a/../../b.onnx", "..", "", "C:/x.onnx", "a\\..\\b"])
def test_paths_that_escape_the_bundle_are_refused(path: str) -> None:
    with pytest.raises(BundleError, match="escapes the bundle"):
        check_relative_path(path, "encoders.image.file")
    data = make_manifest().to_dict()
    data["encoders"]["image"]["file"] = path
    with pytest.raises(BundleError, match="escapes the bundle"):
        BundleManifest.from_dict(data)


def test_paths_inside_are_accepted() -> None:
    assert check_relative_path("sub/dir/model.onnx", "x") == "sub/dir/model.onnx"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("embed_dim"), "lacks the field 'embed_dim'"),
        (lambda d: d.__setitem__("embed_dim", "64"), r"embed_dim is '64': expected int"),
        (lambda d: d["encoders"].pop("text"), "lacks the 'text' encoder"),
        (lambda d: d["encoders"]["image"]["inputs"][0].__setitem__("shape", [1.5]), "expected ints or axis names"),
        (lambda d: d["source"].__setitem__("random_init", "no"), "random_init"),
        (lambda d: d.__setitem__("format_version", "one"), "MAJOR.MINOR"),
    ],
)
def test_malformed_fields_name_the_field(mutate, message: str) -> None:
    data = make_manifest().to_dict()
    mutate(data)
    with pytest.raises(BundleError, match=message):
        BundleManifest.from_dict(data)


def test_invalid_json_names_the_file_and_line() -> None:
    with pytest.raises(BundleError, match=r"x/manifest.json is not valid JSON \(line 2"):
        BundleManifest.from_json('{\n  "format_version": ,\n}', "x/manifest.json")
