"""Fuzzing every reader of untrusted input: each gives a result or an EdgeclipError, nothing else.

Property-based (hypothesis) over the manifest reader, head files, templates, label lists, brace patterns and
image decoding, plus a corpus of hostile bundles built here. CI runs the `ci` profile (few examples, seconds);
`EDGECLIP_FUZZ_PROFILE=nightly` runs the long one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgeclip.cli import cli
from edgeclip.data.images import load_image
from edgeclip.distill.tario import expand_pattern
from edgeclip.errors import EdgeclipError
from edgeclip.runtimes.heads import Head, check_labels
from edgeclip.runtimes.manifest import BundleManifest
from edgeclip.runtimes.templates import resolve_templates

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
settings.register_profile("ci", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("nightly", max_examples=3000, **_COMMON)
settings.load_profile(os.environ.get("EDGECLIP_FUZZ_PROFILE", "ci"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def result_or_edgeclip_error(fn, *args, **kwargs):
    """Call `fn`: an EdgeclipError is an answer; any other exception fails the property."""
    try:
        return fn(*args, **kwargs)
    except EdgeclipError:
        return None


# --- the manifest reader ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_manifest(tiny_bundle: Path) -> dict:
    return json.loads((tiny_bundle / "manifest.json").read_text())


@given(text=st.text(max_size=300))
def test_manifest_from_any_text(text: str) -> None:
    result_or_edgeclip_error(BundleManifest.from_json, text)


@given(data=json_values)
def test_manifest_from_any_json(data) -> None:
    result_or_edgeclip_error(BundleManifest.from_json, json.dumps(data))


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


@given(st.data())
def test_a_valid_manifest_with_one_value_replaced(valid_manifest: dict, data) -> None:
    manifest = json.loads(json.dumps(valid_manifest))
    path = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
    target = manifest
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()):
        target[path[-1]] = data.draw(json_values)
    elif isinstance(target, dict):
        del target[path[-1]]
    else:
        target.pop(path[-1])
    result_or_edgeclip_error(BundleManifest.from_json, json.dumps(manifest))


# --- head files ---------------------------------------------------------------------------------------------------

_HEAD_KEYS = ("format_version", "name", "kind", "labels", "templates", "model_id", "embeddings", "groups",
              "positives", "prompts", "prompt_counts", "adapter_weight", "adapter_bias", "adapter_alpha")  # fmt: skip

arrays = st.one_of(
    st.just(np.array(1)),
    st.text(max_size=10).map(np.array),
    st.lists(st.text(max_size=6), max_size=4).map(lambda x: np.array(x, dtype=str)),
    st.lists(st.floats(allow_nan=True), max_size=8).map(lambda x: np.array(x, dtype=np.float32)),
    st.tuples(st.integers(0, 4), st.integers(0, 4)).map(lambda s: np.ones(s, dtype=np.float32)),
    st.lists(st.integers(-3, 10), max_size=4).map(lambda x: np.array(x, dtype=np.int64)),
)


def _load_head_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h.npz"
        path.write_bytes(data)
        return result_or_edgeclip_error(Head.load, path)


@given(raw=st.binary(max_size=400))
def test_head_from_any_bytes(raw: bytes) -> None:
    _load_head_bytes(raw)


@given(content=st.dictionaries(st.sampled_from(_HEAD_KEYS), arrays, max_size=len(_HEAD_KEYS)))
def test_head_from_any_arrays(content: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **content)
    _load_head_bytes(buffer.getvalue())


# --- templates, label lists, brace patterns --------------------------------------------------------------------------


@given(templates=st.lists(st.text(alphabet="{}a 0:!r.x", max_size=12), max_size=4), label=st.text(max_size=8))
def test_templates(templates: list[str], label: str) -> None:
    resolved = result_or_edgeclip_error(resolve_templates, templates)
    if resolved:
        assert all(isinstance(t.format(label), str) for t in resolved)  # a valid template takes any label


@given(labels=st.one_of(st.text(max_size=6), st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=5)))
def test_label_lists(labels) -> None:
    result = result_or_edgeclip_error(check_labels, labels)
    if result is not None:
        assert len(set(result)) == len(result) and all(result)


@given(pattern=st.text(alphabet="{}.,0123456789ab/", max_size=40))
def test_brace_patterns(pattern: str) -> None:
    result = result_or_edgeclip_error(expand_pattern, pattern)
    if result is not None:
        assert 1 <= len(result) <= 1_000_000


# --- image decoding -----------------------------------------------------------------------------------------------


def _sample_image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).save(buffer, format=fmt)
    return buffer.getvalue()


_SAMPLES = {fmt: _sample_image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


def _decode_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.img"
        path.write_bytes(data)
        image = result_or_edgeclip_error(load_image, path)
        if image is not None:
            assert image.mode == "RGB" and min(image.size) >= 1


@given(raw=st.binary(max_size=300))
def test_decode_any_bytes(raw: bytes) -> None:
    _decode_bytes(raw)


@given(
    fmt=st.sampled_from(sorted(_SAMPLES)), cut=st.integers(0, 2000), flips=st.lists(st.integers(0, 2000), max_size=6)
)
def test_decode_truncated_or_corrupted_images(fmt: str, cut: int, flips: list[int]) -> None:
    data = bytearray(_SAMPLES[fmt][: max(cut, 1)] if cut < len(_SAMPLES[fmt]) else _SAMPLES[fmt])
    for position in flips:
        data[position % len(data)] ^= 0xFF
    _decode_bytes(bytes(data))


@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from([np.uint8, np.float32, np.int16, np.bool_]),
)
def test_decode_any_array(shape: list[int], dtype) -> None:
    image = result_or_edgeclip_error(load_image, np.zeros(shape, dtype=dtype))
    if image is not None:
        assert image.mode == "RGB"


# --- a corpus of hostile bundles ----------------------------------------------------------------------------------


def _edit(bundle: Path, change) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    change(data)
    (bundle / "manifest.json").write_text(json.dumps(data))


def _link(bundle: Path, name: str, target: Path) -> None:
    (bundle / name).unlink()
    (bundle / name).symlink_to(target)


HOSTILE = {
    "encoder symlinked outside": lambda b, out: _link(b, "image_encoder.onnx", out / "secret.bin"),
    "tokenizer symlinked outside": lambda b, out: _link(b, "tokenizer.json", out / "secret.bin"),
    "absolute encoder path": lambda b, out: _edit(
        b, lambda d: d["encoders"]["image"].__setitem__("file", "/etc/passwd")
    ),
    "climbing encoder path": lambda b, out: _edit(b, lambda d: d["encoders"]["text"].__setitem__("file", "../x.onnx")),
    "tokenizer path outside": lambda b, out: _edit(b, lambda d: d["tokenizer"].__setitem__("file", "../secret.bin")),
    "checksums naming a path outside": lambda b, out: _edit(b, lambda d: d["checksums"].__setitem__("../x", "0" * 64)),
    "manifest is a list": lambda b, out: (b / "manifest.json").write_text("[1, 2]"),
    "manifest is not JSON": lambda b, out: (b / "manifest.json").write_bytes(b"\xff\xfe{"),
    "manifest nested deeply": lambda b, out: (b / "manifest.json").write_text("{" * 50_000),
    "manifest is a folder": lambda b, out: ((b / "manifest.json").unlink(), (b / "manifest.json").mkdir()),
    "manifest symlinked outside": lambda b, out: _link(b, "manifest.json", out / "secret.bin"),
    "empty encoder file": lambda b, out: (b / "image_encoder.onnx").write_bytes(b""),
    "encoder is a folder": lambda b, out: ((b / "text_encoder.onnx").unlink(), (b / "text_encoder.onnx").mkdir()),
    "tokenizer is garbage": lambda b, out: (b / "tokenizer.json").write_text('{"model": 1}'),
    "heads folder symlinked outside": lambda b, out: (b / "heads").symlink_to(out),
    "heads folder is a file": lambda b, out: (b / "heads").write_bytes(b"x"),
    "head is garbage": lambda b, out: ((b / "heads").mkdir(), (b / "heads/pets.npz").write_bytes(b"PK\x03\x04junk")),
    "huge embed_dim": lambda b, out: _edit(b, lambda d: d.__setitem__("embed_dim", 10**12)),
    "negative logit_scale": lambda b, out: _edit(b, lambda d: d.__setitem__("logit_scale", -1)),
    "format from the future": lambda b, out: _edit(b, lambda d: d.__setitem__("format_version", "99.0")),
    "format not a version": lambda b, out: _edit(b, lambda d: d.__setitem__("format_version", "1.x")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bundles_give_one_line_and_touch_nothing_outside(tiny_bundle: Path, tmp_path: Path, case: str):
    bundle = tmp_path / "hostile.edgeclip"
    shutil.copytree(tiny_bundle, bundle)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"secret")
    HOSTILE[case](bundle, outside)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(photo)
    commands = [
        ["info", bundle],
        ["classify", bundle, photo, "--labels", "a,b"],
        ["classify", bundle, photo, "--head", "pets"],
        ["heads", "add", bundle, "--name", "pets", "--labels", "a,b", "-q"],
        ["heads", "list", bundle],
        ["heads", "remove", bundle, "pets"],
    ]
    failures = 0
    for command in commands:
        result = CliRunner().invoke(cli, [str(c) for c in command])
        assert result.exception is None or isinstance(result.exception, SystemExit), (command, result.exception)
        assert "Traceback" not in result.output
        if result.exit_code != 0:
            failures += 1
            assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1, result.output
    assert failures >= 1  # a hostile bundle is refused by at least one command, never silently used by all
    assert sorted(p.name for p in outside.iterdir()) == ["secret.bin"]
    assert (outside / "secret.bin").read_bytes() == b"secret"
