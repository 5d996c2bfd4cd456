"""The synthetic shapes dataset: reproducible, split-disjoint, captions that match the pixels' labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.data.images import list_images
from edgeclip.data.shapes import COLORS, SHAPES, ShapesDataset, ShapesSample, write_image_folder
from edgeclip.errors import UsageError


def test_items_are_uint8_rgb_of_the_requested_size() -> None:
    for size in (16, 48, 64):
        sample = ShapesDataset(size=size, length=10)[3]
        assert isinstance(sample, ShapesSample)
        assert sample.image.dtype == np.uint8 and sample.image.shape == (size, size, 3)
        assert sample.image.flags.writeable


def test_same_seed_same_pixels_any_order() -> None:
    first = ShapesDataset(seed=7, length=50)
    second = ShapesDataset(seed=7, length=50)
    forward = [first[i] for i in range(12)]
    backward = [second[i] for i in reversed(range(12))][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert np.array_equal(a.image, b.image)
        assert (a.caption, a.label, a.color_label, a.attributes) == (b.caption, b.label, b.color_label, b.attributes)
    assert np.array_equal(first[-1].image, first[49].image)


def test_different_seeds_and_splits_differ() -> None:
    base = ShapesDataset(seed=0, length=20)
    other_seed = ShapesDataset(seed=1, length=20)
    eval_split = ShapesDataset(split="eval", seed=0, length=20)
    for i in range(20):
        assert not np.array_equal(base[i].image, other_seed[i].image)
        assert not np.array_equal(base[i].image, eval_split[i].image)
    # Neighbouring items differ too: every item has its own stream.
    assert len({base[i].image.tobytes() for i in range(20)}) == 20


def test_labels_captions_and_attributes_agree() -> None:
    dataset = ShapesDataset(length=200)
    assert dataset.classes == SHAPES and dataset.colors == tuple(COLORS)
    assert len(dataset.class_prompts) == len(dataset.classes)
    assert all(shape in prompt for shape, prompt in zip(dataset.classes, dataset.class_prompts, strict=True))
    seen = {"shape": set(), "color": set(), "size": set(), "position": set(), "background": set(), "caption": set()}
    for i in range(len(dataset)):
        sample = dataset[i]
        attributes = sample.attributes
        assert set(attributes) == {"shape", "color", "size", "position", "background"}
        assert dataset.classes[sample.label] == attributes["shape"]
        assert dataset.colors[sample.color_label] == attributes["color"]
        words = sample.caption.replace(",", " ").split()
        assert attributes["shape"] in sample.caption and attributes["color"] in words, sample.caption
        assert " an " not in f" {sample.caption} " or " an orange" in f" {sample.caption} "
        for key, value in attributes.items():
            seen[key].add(value)
        seen["caption"].add(sample.caption.replace(attributes["shape"], "").replace(attributes["color"], ""))
    assert len(seen["shape"]) == 8 and len(seen["color"]) == 8 and len(seen["background"]) == 5
    assert len(seen["size"]) == 3 and len(seen["position"]) == 9
    # Classes are balanced in any prefix.
    counts = np.bincount([dataset[i].label for i in range(80)], minlength=8)
    assert counts.tolist() == [10] * 8


def test_the_named_colour_is_painted_and_stands_out() -> None:
    dataset = ShapesDataset(size=64, length=96)
    for i in range(len(dataset)):
        sample = dataset[i]
        colour = np.asarray(COLORS[sample.attributes["color"]], dtype=float)
        distance = np.linalg.norm(sample.image.astype(float) - colour, axis=2)
        close = int((distance <= 36).sum())  # within the per-channel colour jitter
        assert 40 <= close <= 64 * 64 // 2, (i, sample.caption, close)


def test_length_indexing_and_bad_arguments() -> None:
    assert len(ShapesDataset()) > len(ShapesDataset(split="eval")) > 0
    dataset = ShapesDataset(length=5)
    assert len(dataset) == 5 and len(list(dataset)) == 5
    with pytest.raises(IndexError):
        dataset[5]
    with pytest.raises(IndexError):
        dataset[-6]
    for kwargs in ({"split": "test"}, {"size": 8}, {"size": 64.0}, {"length": 0}, {"seed": -1}):
        with pytest.raises(UsageError):
            ShapesDataset(**kwargs)


def test_write_image_folder(tmp_path: Path) -> None:
    dataset = ShapesDataset(split="eval", size=32, length=30)
    out = write_image_folder(dataset, tmp_path / "shapes", count=20)
    assert out == tmp_path / "shapes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no temp folder left behind
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 20 and len(list_images(out)) == 20
    for i, record in enumerate(records):
        sample = dataset[i]
        assert record["image"] == f"{dataset.classes[sample.label]}/{i:02d}.png"
        assert (record["caption"], record["label"]) == (sample.caption, sample.label)
        with Image.open(out / record["image"]) as image:
            assert np.array_equal(np.asarray(image), sample.image)
    with pytest.raises(UsageError, match="already exists"):
        write_image_folder(dataset, out, count=5)
    with pytest.raises(UsageError, match="count"):
        write_image_folder(dataset, tmp_path / "too_many", count=31)
    (tmp_path / "empty").mkdir()
    assert len(list_images(write_image_folder(dataset, tmp_path / "empty", count=3))) == 3
