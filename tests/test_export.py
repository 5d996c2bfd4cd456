"""Export: real ONNX files from real (tiny) open_clip models, checkpoints the tests write, and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeclip.errors import ExportError, ModelError, UsageError
from edgeclip.export import export_bundle
from edgeclip.export.parity import SAMPLE_TEXTS, sample_text_names
from edgeclip.metrics.parity import PARITY_FLOORS
from edgeclip.models.loading import _hub_reachable, load_model, read_state_dict
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.bundle import sha256_file
from tests.conftest import TINY


def test_bundle_layout_manifest_and_onnx_graphs(tiny_bundle: Path) -> None:
    names = sorted(p.name for p in tiny_bundle.iterdir())
    assert names == ["golden", "image_encoder.onnx", "manifest.json", "text_encoder.onnx", "tokenizer.json"]
    m = load_bundle(tiny_bundle).manifest
    assert m.source.random_init and m.source.architecture == TINY
    assert m.target == "onnx" and m.precision == "fp32" and m.embed_dim == 64
    for role, enc in m.encoders.items():
        assert enc.sha256 == sha256_file(tiny_bundle / enc.file)
        assert enc.parity.min_cosine >= 0.9999 and enc.parity.samples >= 8, role
        graph = onnx.load(tiny_bundle / enc.file)
        onnx.checker.check_model(graph)
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param, f"{role} encoder has no dynamic batch axis"
    assert m.encoders["text"].inputs[0].dtype in ("int64", "int32")
    # The temporary folder was renamed into place; nothing else was left beside the bundle.
    assert [p.name for p in tiny_bundle.parent.iterdir()] == [tiny_bundle.name]


def test_random_init_is_reproducible_and_identifies_the_weights() -> None:
    a = load_model(TINY, random_init=True, seed=0).weights_sha256()
    b = load_model(TINY, random_init=True, seed=0).weights_sha256()
    c = load_model(TINY, random_init=True, seed=1).weights_sha256()
    assert a == b != c


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return load_model(TINY, random_init=True, seed=3).model.state_dict()


def _save(kind: str, state: dict[str, torch.Tensor], path: Path) -> Path:
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif kind == "state_dict":
        torch.save(state, path)
    elif kind == "training":  # open_clip's training checkpoints: DDP prefixes under 'state_dict'
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "suffix"), [("safetensors", ".safetensors"), ("state_dict", ".pt"), ("training", ".pt")]
)
def test_checkpoint_formats_load_the_same_weights(kind: str, suffix: str, tiny_state, tmp_path: Path) -> None:
    path = _save(kind, tiny_state, tmp_path / f"ckpt{suffix}")
    loaded = load_model(TINY, str(path))
    for k, v in tiny_state.items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert loaded.checkpoint_sha256 == sha256_file(path)
    assert not loaded.model.training


def test_loading_a_checkpoint_does_not_log_that_the_model_is_random(tiny_state, tmp_path: Path, caplog) -> None:
    """open_clip logs 'initialized randomly' for pretrained=None; edgeclip loads the file next, so it is dropped."""
    import logging

    path = _save("safetensors", tiny_state, tmp_path / "ckpt.safetensors")
    with caplog.at_level(logging.INFO):
        load_model(TINY, str(path))
        load_model(TINY, random_init=True)
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()], caplog.text
    logging.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")  # filter removed after
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]


@pytest.mark.slow
def test_export_from_checkpoint_records_the_file(tiny_state, tmp_path: Path) -> None:
    ckpt = _save("safetensors", tiny_state, tmp_path / "tiny.safetensors")
    out = export_bundle(TINY, str(ckpt), tmp_path / "b.edgeclip", preprocess={"interpolation": "bilinear"})
    src = out.manifest.source
    assert (src.pretrained, src.checkpoint_sha256, src.random_init) == ("tiny.safetensors", sha256_file(ckpt), False)
    assert out.manifest.preprocess.interpolation == "bilinear"
    assert "overridden: interpolation" in out.manifest.preprocess_source


def test_checkpoint_for_another_architecture_says_how_many_keys(tiny_state, tmp_path: Path) -> None:
    state = dict(tiny_state)
    state.pop("text_projection")
    state["extra.weight"] = torch.zeros(2)
    state["token_embedding.weight"] = torch.zeros(10, 64)
    path = _save("safetensors", state, tmp_path / "wrong.safetensors")
    with pytest.raises(ModelError) as err:
        load_model(TINY, str(path))
    message = str(err.value)
    assert "does not match EdgeCLIP-Tiny-ViT" in message and "\n" not in message
    assert "1 missing (e.g. text_projection)" in message
    assert "1 unexpected (e.g. extra.weight)" in message
    assert "1 of the wrong shape (e.g. token_embedding.weight)" in message


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (None, ".safetensors", "does not exist"),
        (b"", ".safetensors", r"is empty \(0 bytes\)"),
        (b"not a safetensors file at all", ".safetensors", "could not be read as a safetensors file"),
        (b"PK\x03\x04 truncated zip", ".pt", r"could not be read as a torch \(weights only\) file"),
    ],
)
def test_bad_checkpoints_give_one_line_errors(content, suffix: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / f"ckpt{suffix}"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Path("x")}, path)
    with pytest.raises(ModelError, match="weights only"):
        read_state_dict(path)


def test_unknown_model_suggests_close_names(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="did you mean MobileCLIP2-S0"):
        export_bundle("MobilCLIP2-S0", output=tmp_path / "x", random_init=True)
    assert not any(tmp_path.iterdir())


def test_weights_must_be_chosen(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no weights given"):
        export_bundle(TINY, output=tmp_path / "x")
    with pytest.raises(UsageError, match="exclude each other"):
        export_bundle(TINY, "a.safetensors", tmp_path / "x", random_init=True)


def test_unknown_tag_lists_the_real_ones() -> None:
    with pytest.raises(UsageError, match="tags: dfndr2b"):
        load_model("MobileCLIP2-S0", "openai")


@pytest.mark.skipif(_hub_reachable(), reason="the hub is reachable here, so the offline message cannot be shown")
def test_pretrained_tag_offline_says_to_pass_a_local_file() -> None:
    with pytest.raises(ModelError, match=r"not reachable from here.*--pretrained ./weights.safetensors"):
        load_model("MobileCLIP2-S0", "dfndr2b")


@pytest.mark.slow
def test_existing_output_needs_force_and_force_only_replaces_bundles(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    before = (tiny_bundle_copy / "manifest.json").read_text()
    with pytest.raises(UsageError, match="exists: pass --force"):
        export_bundle(TINY, output=tiny_bundle_copy, random_init=True)
    assert (tiny_bundle_copy / "manifest.json").read_text() == before
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(UsageError, match="is not a bundle"):
        export_bundle(TINY, output=precious, random_init=True, force=True)
    assert (precious / "thesis.txt").exists()
    result = export_bundle(
        TINY, output=tiny_bundle_copy, random_init=True, force=True, preprocess={"resize_mode": "squash"}
    )
    assert result.manifest.preprocess.resize_mode == "squash"
    assert sorted(p.name for p in tiny_bundle_copy.parent.iterdir()) == [tiny_bundle_copy.name, "precious"]


def test_an_input_size_the_model_cannot_take_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"image encoder cannot run at image size 48x48: The size of tensor"):
        export_bundle(TINY, output=tmp_path / "b.edgeclip", random_init=True, preprocess={"image_size": (48, 48)})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_fails_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot write the output"):
        export_bundle(TINY, output=blocker / "sub" / "b.edgeclip", random_init=True)


def test_failure_midway_leaves_nothing_behind(tiny_state, tmp_path: Path) -> None:
    state = dict(tiny_state)
    state.pop("logit_scale")
    ckpt = _save("safetensors", state, tmp_path / "broken.safetensors")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ModelError):
        export_bundle(TINY, str(ckpt), out_dir / "b.edgeclip")
    assert list(out_dir.iterdir()) == []


def test_unknown_target_and_precision_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown export target 'onx'.*did you mean 'onnx'"):
        export_bundle(TINY, output=tmp_path / "x", random_init=True, target="onx")
    with pytest.raises(UsageError, match="does not support precision 'fp8'"):
        export_bundle(TINY, output=tmp_path / "x", random_init=True, precision="fp8")


def test_exported_embeddings_match_open_clip_on_photos(tiny_bundle: Path, photos) -> None:
    import open_clip
    from timm.utils.model import reparameterize_model

    bundle = load_bundle(tiny_bundle)
    model = reparameterize_model(load_model(TINY, random_init=True, seed=0).model.eval())
    p = bundle.manifest.preprocess
    transform = open_clip.image_transform(
        p.image_size, is_train=False, mean=p.mean, std=p.std, resize_mode=p.resize_mode, interpolation=p.interpolation
    )
    images = list(photos.values())
    with torch.no_grad():
        ref = model.encode_image(torch.stack([transform(im) for im in images]), normalize=True).numpy()
    got = bundle.encode_image(images)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() >= 0.9999


def test_a_missed_parity_floor_names_the_furthest_sample_and_leaves_nothing(monkeypatch, tmp_path: Path) -> None:
    """The floor raised past reach (cosine is at most 1): the real export fails its parity check, in one line that
    names which input the written file reproduced worst, and no bundle is left behind."""
    monkeypatch.setitem(PARITY_FLOORS, "fp32", 1.01)
    with pytest.raises(ExportError, match=r"image encoder parity failed: min cosine") as err:
        export_bundle(TINY, output=tmp_path / "b", random_init=True)
    message = str(err.value)
    assert re.search(r"furthest: (photo [a-z_]+|shapes eval image \d) \(\d\.\d{6}\)\)$", message), message
    assert "\n" not in message and not (tmp_path / "b").exists()
    names = sample_text_names()
    assert len(names) == len(SAMPLE_TEXTS) and names[0] == "text 'a photo of a cat'"
    assert max(len(n) for n in names) < 60  # the 500-character string is cut
