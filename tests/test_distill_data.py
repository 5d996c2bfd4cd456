"""Image–caption sources, reinforced shards (writer, manifest, reader) and their bad inputs, on real files."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.distill.augment import AugmentConfig, apply_params, to_tensor
from edgeclip.distill.shards import MANIFEST_NAME, DatasetManifest, ReinforcedShards, SampleError, reinforce
from edgeclip.distill.sources import open_source
from edgeclip.distill.tario import expand_pattern
from edgeclip.errors import DatasetError, UsageError
from tests.conftest import write_random_checkpoint

TEACHER = "EdgeCLIP-Tiny-ViT"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("teachers")
    return tuple(write_random_checkpoint(folder / f"t{seed}.safetensors", TEACHER, seed) for seed in (0, 1))


@pytest.fixture(scope="module")
def syn_captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeclip.distill.quickstart import write_paraphrases

    return write_paraphrases("shapes:train:30", tmp_path_factory.mktemp("syn") / "syn.jsonl", 3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, teacher_files: tuple[Path, Path], syn_captions: Path) -> Path:
    out = tmp_path_factory.mktemp("reinforced") / "shards"
    reinforce(
        "shapes:train:30", [f"{TEACHER}:{teacher_files[0]}", f"{TEACHER}:{teacher_files[1]}"], out,
        augmentations=3, synthetic_captions=2, captions_file=syn_captions, samples_per_shard=12, batch_size=8,
        augment=AugmentConfig(scale=(0.5, 1.0)),
    )  # fmt: skip
    return out


# --- sources -----------------------------------------------------------------------------------------------


def test_captions_jsonl_and_csv_resolve_paths_and_report_missing_images(tmp_path: Path) -> None:
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    lines = [{"image": f"{i}.png", "caption": f"red {i}"} for i in range(4)]
    lines += [{"image": f"gone{i}.jpg", "caption": "lost"} for i in range(7)]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(DatasetError) as e:
        open_source(jsonl)
    message = str(e.value)
    assert "7 of 11 images are missing" in message and "gone0.jpg, gone1.jpg" in message and "gone6" not in message
    assert "--skip-missing" in message and "\n" not in message
    source = open_source(jsonl, skip_missing=True)
    assert len(source) == 4 and source.skipped_missing == 7
    record, image = source.item(2)
    assert record.caption == "red 2" and image.getpixel((0, 0)) == (80, 0, 0)
    csv = tmp_path / "c.csv"
    csv.write_text("path,text\n" + "".join(f"{i}.png,caption {i}\n" for i in range(4)))
    assert [open_source(csv).record(i).caption for i in range(4)] == [f"caption {i}" for i in range(4)]
    (tmp_path / "bad.jsonl").write_text('{"image": "0.png"}\n')
    with pytest.raises(DatasetError, match="line 1: expected an image column"):
        open_source(tmp_path / "bad.jsonl")


def test_folder_with_sidecar_captions(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a", "sub/b", "c"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "sub" / "b.txt").write_text("second")
    with pytest.raises(DatasetError, match=r"1 of 3 caption files are missing \(first: c.txt\)"):
        open_source(tmp_path)
    source = open_source(tmp_path, skip_missing=True)
    assert [source.record(i).caption for i in range(len(source))] == ["first", "second"]


def test_img2dataset_shards_read_with_a_corrupt_shard_counted(tmp_path: Path) -> None:
    import webdataset as wds

    for n in range(2):
        with wds.TarWriter(str(tmp_path / f"{n:05d}.tar")) as sink:
            for i in range(3):
                buf = io.BytesIO()
                Image.new("RGB", (10, 12), (n * 100, i * 50, 0)).save(buf, "JPEG")
                sink.write(
                    {
                        "__key__": f"{n}{i:04d}",
                        "jpg": buf.getvalue(),
                        "txt": f"img {n} {i}",
                        "json": {"url": f"http://x/{n}/{i}.jpg", "uid": f"u{n}{i}"},
                    }
                )
    (tmp_path / "00002.tar").write_bytes(b"this is not a tar file" * 40)
    source = open_source(str(tmp_path / "{00000..00002}.tar"))
    assert len(source) == 6 and list(source.corrupt) == [str(tmp_path / "00002.tar")]
    record, image = source.item(4)
    assert (record.uid, record.url, record.caption) == ("u11", "http://x/1/1.jpg", "img 1 1")
    assert image.size == (10, 12)
    assert source.find(uid="u02") == 2 and source.find(url="http://x/1/2.jpg") == 5


def test_shapes_source_and_patterns() -> None:
    source = open_source("shapes:eval:5:32")
    record, image = source.item(3)
    assert len(source) == 5 and image.size == (32, 32) and record.uid == "shapes-eval-0000003"
    assert source.find(uid="shapes-eval-0000003") == 3 and source.find(uid="shapes-train-0000003") is None
    assert expand_pattern("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_pattern("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    with pytest.raises(UsageError, match="not one edgeclip reads"):
        open_source(__file__)


# --- reinforced shards -----------------------------------------------------------------------------------


def test_shards_hold_the_datacompdr_layout_and_webdataset_reads_them(shards: Path) -> None:
    import webdataset as wds

    manifest = DatasetManifest.read(shards / MANIFEST_NAME)
    assert manifest.dims == (64, 64) and manifest.total_dim == 128 and manifest.augmentations == 3
    assert manifest.synthetic_captions == 2 and manifest.samples == 30 and manifest.shards == 3
    assert all(t.logit_scale == pytest.approx(1 / 0.07, rel=1e-5) for t in manifest.teachers)
    assert sorted(p.name for p in shards.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    samples = list(wds.WebDataset(str(shards / "{00000..00002}.tar"), shardshuffle=False))
    assert len(samples) == 30
    first = samples[0]
    assert {"url.txt", "json", "syn.json", "paug.json", "npz"} <= set(first)
    with np.load(io.BytesIO(first["npz"])) as z:
        assert z["image_emb"].shape == (3, 128) and z["image_emb"].dtype == np.float32
        assert z["text_emb"].shape == (3, 128)
    assert len(json.loads(first["syn.json"])["syn_text"]) == 2
    assert len(json.loads(json.loads(first["paug.json"])["param_aug"])) == 3


def test_stored_embeddings_are_the_teachers_on_the_replayed_views(shards: Path, teacher_files) -> None:
    """Replay a stored augmentation, run the teacher again: the same embedding as stored (pixel-exact replay)."""
    from edgeclip.models.loading import load_model

    reader = ReinforcedShards(shards)
    source = open_source(reader.manifest.image_source)
    teacher = load_model(TEACHER, str(teacher_files[1])).model
    sample = reader.read(17)
    image = source.image(source.find(sample.uid))
    views = [apply_params(image, p, (64, 64), "bilinear") for p in sample.params]
    info = reader.manifest.teachers[1]
    from edgeclip.models.preprocess import preprocess_spec_for

    spec, _ = preprocess_spec_for(TEACHER, None)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(teacher.encode_image(to_tensor(views, spec.mean, spec.std)), dim=-1)
    assert info.embed_dim == 64
    np.testing.assert_allclose(emb.numpy(), sample.image_emb[:, 64:], atol=1e-5)
    assert len({v.tobytes() for v in views}) == 3


def test_reinforce_resumes_skips_finished_shards_and_refuses_other_teachers(
    shards: Path, teacher_files, syn_captions: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    before = (copy / "00001.tar").read_bytes()
    (copy / "00001.tar").unlink()
    refs = [f"{TEACHER}:{teacher_files[0]}", f"{TEACHER}:{teacher_files[1]}"]
    kwargs = dict(augmentations=3, synthetic_captions=2, captions_file=syn_captions, samples_per_shard=12,
                  batch_size=8, augment=AugmentConfig(scale=(0.5, 1.0)))  # fmt: skip
    result = reinforce("shapes:train:30", refs, copy, **kwargs)
    assert result.written == ("00001.tar",) and result.skipped_existing == ("00000.tar", "00002.tar")
    assert (copy / "00001.tar").read_bytes() == before  # deterministic: same samples, same bytes
    # Per-rank shards: rank 1 of 2 writes only the odd shards.
    ranked = reinforce("shapes:train:30", refs, tmp_path / "ranked", rank=1, world_size=2, **kwargs)
    assert ranked.written == ("00001.tar",) and (tmp_path / "ranked" / "00001.tar").read_bytes() == before
    with pytest.raises(DatasetError, match=r"different settings \(teachers\)"):
        reinforce("shapes:train:30", refs[:1], copy, **kwargs)


def test_reader_refuses_foreign_shards_and_skips_corrupt_samples(shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "mixed"
    shutil.copytree(shards, copy)
    # A shard whose embeddings have other dims than the manifest's teachers.
    members = []
    with tarfile.open(copy / "00000.tar") as tar:
        for info in tar:
            data = tar.extractfile(info).read()
            if info.name.endswith(".npz"):
                with np.load(io.BytesIO(data)) as z:
                    buf = io.BytesIO()
                    np.savez(buf, image_emb=z["image_emb"][:, :100], text_emb=z["text_emb"][:, :100])
                    data = buf.getvalue()
            members.append((info, data))
    with tarfile.open(copy / "00000.tar", "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match=r"00000.tar: embeddings are 100-dimensional .* give 128 \(64\+64\)"):
        ReinforcedShards(copy)
    manifest = DatasetManifest.read(copy / MANIFEST_NAME)
    (copy / MANIFEST_NAME).write_text(json.dumps({**manifest.to_dict(), "augmentations": 5}))
    shutil.copy(shards / "00000.tar", copy / "00000.tar")
    with pytest.raises(DatasetError, match="3 augmentations per sample but the dataset manifest says K=5"):
        ReinforcedShards(copy)
    shutil.copy(shards / MANIFEST_NAME, copy / MANIFEST_NAME)

    # A truncated shard (its tail lost) and a sample with a broken npz: counted, not fatal.
    data = (copy / "00002.tar").read_bytes()
    (copy / "00002.tar").write_bytes(data[: len(data) // 2])
    reader = ReinforcedShards(copy)
    assert list(reader.corrupt_shards) == [str(copy / "00002.tar")]
    assert 24 <= len(reader) < 30
    path, sample = reader.samples[3]
    with open(path, "r+b") as f:
        f.seek(sample.members["npz"].offset)
        f.write(b"\0" * 64)
    with pytest.raises(SampleError, match="npz unreadable"):
        reader.read(3)
    assert reader.read(4).image_emb.shape == (3, 128)


def test_random_coca_weights_are_the_same_whatever_memory_held_before() -> None:
    """open_clip leaves CoCa's decoder text_projection as torch.empty: seeded random weights must not read garbage."""
    from edgeclip.models.loading import load_model

    first = load_model("EdgeCLIP-CoCa-Tiny", random_init=True, seed=0).model.state_dict()
    shape = first["text_decoder.text_projection"].shape
    for _ in range(4):  # freed NaN-filled blocks: what an uninitialized tensor of that size would be handed next
        _nan = torch.full(shape, float("nan"))
        del _nan
        again = load_model("EdgeCLIP-CoCa-Tiny", random_init=True, seed=0).model.state_dict()
        assert all(torch.isfinite(v).all() for v in again.values() if v.is_floating_point())
        assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_coca_captioner_writes_sampled_synthetic_captions(teacher_files, tmp_path: Path) -> None:
    """The real open_clip CoCa generate path (random weights, so the words are random, but sampled and stored)."""
    captioner = write_random_checkpoint(tmp_path / "coca.safetensors", "EdgeCLIP-CoCa-Tiny", 0)
    result = reinforce(
        "shapes:train:1", [f"{TEACHER}:{teacher_files[0]}"], tmp_path / "s", augmentations=1, synthetic_captions=2,
        captioner=f"EdgeCLIP-CoCa-Tiny:{captioner}",
    )  # fmt: skip
    assert result.manifest.captioner == "EdgeCLIP-CoCa-Tiny:coca.safetensors"
    reader = ReinforcedShards(tmp_path / "s")
    syn = reader.read(0).syn_text
    assert len(syn) == 2 and all(isinstance(c, str) and c for c in syn)
    assert syn[0] != syn[1]  # top-p sampling: two draws, two captions
    assert reader.read(0).text_emb.shape == (3, 64)


def test_a_captioner_giving_nan_probabilities_is_named_in_one_line(teacher_files, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from edgeclip.errors import ModelError

    path = write_random_checkpoint(tmp_path / "nan.safetensors", "EdgeCLIP-CoCa-Tiny", 0)
    weights = load_file(str(path))
    weights["text_decoder.text_projection"].fill_(float("nan"))
    save_file(weights, str(path))
    with pytest.raises(ModelError, match=r"^captioner EdgeCLIP-CoCa-Tiny:nan.safetensors gave non-finite"):
        reinforce(
            "shapes:train:1", [f"{TEACHER}:{teacher_files[0]}"], tmp_path / "s", augmentations=1, synthetic_captions=1,
            captioner=f"EdgeCLIP-CoCa-Tiny:{path}",
        )  # fmt: skip


def test_a_shard_cut_at_any_tar_block_boundary_has_every_promised_sample_read_or_reported(
    shards: Path, tmp_path: Path
) -> None:
    """Cut a shard at every 512-byte block boundary: each sample its stats.json promises is read or counted missing."""
    copy = tmp_path / "cut"
    copy.mkdir()
    for name in (MANIFEST_NAME, "00000.stats.json", "00001.tar", "00001.stats.json"):
        shutil.copy(shards / name, copy / name)
    original = (shards / "00000.tar").read_bytes()
    promised = json.loads((shards / "00000.stats.json").read_text())["samples"]
    assert promised == 12 and len(original) % 512 == 0
    cut_shard = str(copy / "00000.tar")
    short = []  # (cut, readable samples, the reader) where some promised sample cannot be read
    for cut in range(0, len(original) + 1, 512):
        (copy / "00000.tar").write_bytes(original[:cut])
        reader = ReinforcedShards(copy)
        readable = 0
        for index, (path, _) in enumerate(reader.samples):
            if path.name == "00000.tar":
                try:
                    reader.read(index)
                    readable += 1
                except SampleError:
                    pass
        reader.close()
        if readable < promised:
            short.append((cut, readable, reader))
    assert readable == promised and short  # the whole file holds them all (as do cuts in its zero padding)
    silent = [cut for cut, _, reader in short if cut_shard not in reader.corrupt_shards]
    assert not silent, f"samples lost with no sign when the shard is cut at bytes {silent[:8]}..."
    for cut, readable, reader in short:
        # Named, and the count adds up: every indexed sample is readable, every other one is counted missing.
        assert reader.corrupt_shards[cut_shard], cut
        assert reader.missing_samples[cut_shard] == promised - readable, cut
