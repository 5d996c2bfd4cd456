"""numpy/Pillow preprocessing against open_clip's own eval transform, and the PreprocessSpec contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.errors import BundleError, UsageError
from edgeclip.runtimes.preprocess import PreprocessSpec, preprocess, preprocess_image

skdata = pytest.importorskip("skimage.data")
torch = pytest.importorskip("torch")
open_clip_transform = pytest.importorskip("open_clip.transform")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TOLERANCE = 1e-5


def _photos() -> dict[str, np.ndarray]:
    """Real photos, then crops of them to portrait, landscape, sliver, tiny and exact-size shapes."""
    whole = {
        "astronaut": skdata.astronaut(),  # 512x512
        "coffee": skdata.coffee(),  # 400x600
        "chelsea": skdata.chelsea(),  # 300x451
        "rocket": skdata.rocket(),  # 427x640
    }
    out = dict(whole)
    cuts = {
        "portrait": (slice(0, 300), slice(0, 101)),
        "landscape": (slice(0, 57), slice(0, 299)),
        "sliver_7x300": (slice(0, 7), slice(0, 300)),
        "sliver_300x7": (slice(0, 300), slice(100, 107)),
        "tiny_3x2": (slice(10, 13), slice(10, 12)),
        "pixel": (slice(5, 6), slice(5, 6)),
        "exact_224": (slice(0, 224), slice(0, 224)),
        "odd_225x223": (slice(1, 226), slice(3, 226)),
    }
    for name, photo in whole.items():
        for cut, index in cuts.items():
            out[f"{name}/{cut}"] = np.ascontiguousarray(photo[index])
    return out


PHOTOS = _photos()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The reference transform's tensor ops are tiny; thread start-up on a shared CPU costs more than they do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    transform = open_clip_transform.image_transform(
        spec.image_size,
        is_train=False,
        mean=spec.mean,
        std=spec.std,
        resize_mode=spec.resize_mode,
        interpolation=spec.interpolation,
        fill_color=spec.fill_color,
    )
    with torch.no_grad():
        return transform(image).numpy()


@pytest.mark.parametrize("image_size", [(224, 224), (256, 192), (160, 320)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_matches_open_clip_transform(resize_mode: str, interpolation: str, image_size: tuple[int, int]) -> None:
    fill = 37 if resize_mode == "longest" else 0  # a visible pad colour where open_clip honours it
    spec = PreprocessSpec(image_size, resize_mode, interpolation, OPENAI_MEAN, OPENAI_STD, fill_color=fill)
    for name, pixels in PHOTOS.items():
        image = Image.fromarray(pixels)
        ours = preprocess_image(image, spec)
        assert ours.dtype == np.float32 and ours.shape == (3, *image_size), name
        diff = float(np.abs(ours - _reference(image, spec)).max())
        assert diff <= TOLERANCE, f"{name}: max abs diff {diff}"


def test_other_mean_std_and_fill_match_open_clip() -> None:
    spec = PreprocessSpec((192, 256), "longest", "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), fill_color=255)
    for name in ("coffee", "chelsea/portrait", "rocket/sliver_7x300"):
        image = Image.fromarray(PHOTOS[name])
        assert np.abs(preprocess_image(image, spec) - _reference(image, spec)).max() <= TOLERANCE, name


def test_shortest_non_square_is_bicubic_like_open_clip() -> None:
    """open_clip ignores ``interpolation`` for shortest-edge resizing to a non-square size; so do we."""
    image = Image.fromarray(PHOTOS["coffee"])
    bilinear = PreprocessSpec((256, 192), "shortest", "bilinear", OPENAI_MEAN, OPENAI_STD)
    bicubic = PreprocessSpec((256, 192), "shortest", "bicubic", OPENAI_MEAN, OPENAI_STD)
    assert np.array_equal(preprocess_image(image, bilinear), preprocess_image(image, bicubic))


def test_extreme_sliver_longest_keeps_one_pixel() -> None:
    """open_clip scales a 1x1000 sliver's short side to 0 px and raises; we keep 1 px and pad around it."""
    spec = PreprocessSpec((64, 64), "longest", "bilinear", OPENAI_MEAN, OPENAI_STD, fill_color=0)
    out = preprocess_image(np.zeros((1, 1000, 3), np.uint8) + 200, spec)
    pad = (0 - np.asarray(OPENAI_MEAN, np.float32)) / np.asarray(OPENAI_STD, np.float32)
    assert out.shape == (3, 64, 64)
    assert np.allclose(out[:, 0, 0], pad) and np.allclose(out[:, 32, 32], pad)
    assert not np.allclose(out[:, 31, 32], pad)  # the 1-pixel row, padded (64 - 1) // 2 from the top


def test_batches_paths_arrays_and_layouts(tmp_path: Path) -> None:
    spec = PreprocessSpec((64, 48), "shortest", "bicubic", OPENAI_MEAN, OPENAI_STD)
    pixels = PHOTOS["chelsea/portrait"]
    Image.fromarray(pixels).save(tmp_path / "cat.png")
    single = preprocess_image(Image.fromarray(pixels), spec)
    batch = preprocess([tmp_path / "cat.png", str(tmp_path / "cat.png"), pixels, Image.fromarray(pixels)], spec)
    assert batch.shape == (4, 3, 64, 48) and batch.dtype == np.float32
    assert all(np.array_equal(item, single) for item in batch)
    assert preprocess(tmp_path / "cat.png", spec).shape == (1, 3, 64, 48)
    assert preprocess(np.stack([pixels, pixels]), spec).shape == (2, 3, 64, 48)
    assert preprocess([], spec).shape == (0, 3, 64, 48)

    nhwc_bgr = PreprocessSpec(
        (64, 48), "shortest", "bicubic", OPENAI_MEAN, OPENAI_STD, channel_order="BGR", layout="NHWC"
    )
    out = preprocess(pixels, nhwc_bgr)
    assert out.shape == (1, 64, 48, 3) and out.flags.c_contiguous
    assert np.array_equal(out[0], single.transpose(1, 2, 0)[:, :, ::-1])


def test_non_rgb_inputs_go_through_the_one_decoder() -> None:
    spec = PreprocessSpec((32, 32), "squash", "bilinear", OPENAI_MEAN, OPENAI_STD)
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent: white after compositing
    white = preprocess_image(np.full((40, 40, 3), 255, np.uint8), spec)
    assert np.array_equal(preprocess_image(Image.fromarray(rgba, "RGBA"), spec), white)
    grey = Image.fromarray(np.full((40, 40), 90, np.uint8), "L")
    assert np.array_equal(preprocess_image(grey, spec), preprocess_image(grey.convert("RGB"), spec))


def test_spec_round_trips_through_json() -> None:
    spec = PreprocessSpec((256, 192), "longest", "bilinear", OPENAI_MEAN, OPENAI_STD, 114, "BGR", "NHWC")
    data = json.loads(json.dumps(spec.to_dict()))
    assert data == spec.to_dict()
    assert PreprocessSpec.from_dict(data) == spec
    minimal = {k: v for k, v in data.items() if k not in ("fill_color", "channel_order", "layout")}
    assert PreprocessSpec.from_dict(minimal) == PreprocessSpec(
        (256, 192), "longest", "bilinear", OPENAI_MEAN, OPENAI_STD
    )
    listy = PreprocessSpec([224, 224], "shortest", "bicubic", [0, 0, 0], [1, 1, 1])  # type: ignore[arg-type]
    assert listy.image_size == (224, 224) and listy.mean == (0.0, 0.0, 0.0)
    assert hash(listy) == hash(PreprocessSpec((224, 224), "shortest", "bicubic", (0, 0, 0), (1, 1, 1)))


GOOD = {
    "image_size": [224, 224],
    "resize_mode": "shortest",
    "interpolation": "bicubic",
    "mean": list(OPENAI_MEAN),
    "std": list(OPENAI_STD),
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", [224]),
        ("image_size", [224, 0]),
        ("image_size", [224.0, 224]),
        ("image_size", 224),
        ("resize_mode", "crop"),
        ("interpolation", "nearest"),
        ("mean", [0.5, 0.5]),
        ("mean", [0.5, float("nan"), 0.5]),
        ("std", [0.5, 0.0, 0.5]),
        ("std", [0.5, -1, 0.5]),
        ("std", ["0.5", 0.5, 0.5]),
        ("fill_color", 256),
        ("fill_color", True),
        ("channel_order", "rgb"),
        ("layout", "CHW"),
    ],
)
def test_bad_fields_raise_usage_and_bundle_errors(field: str, value: object) -> None:
    with pytest.raises(UsageError) as usage:
        PreprocessSpec(**{**GOOD, field: value})
    with pytest.raises(BundleError) as bundle:
        PreprocessSpec.from_dict({**GOOD, field: value})
    for error, prefix in ((usage.value, "PreprocessSpec"), (bundle.value, "preprocess")):
        assert f"{prefix}.{field} must be" in str(error) and "\n" not in str(error)


def test_from_dict_structure_errors() -> None:
    with pytest.raises(BundleError, match=r"missing field.*std"):
        PreprocessSpec.from_dict({k: v for k, v in GOOD.items() if k != "std"})
    with pytest.raises(BundleError, match=r"unknown field.*crop_pct"):
        PreprocessSpec.from_dict({**GOOD, "crop_pct": 0.9})
    with pytest.raises(BundleError, match="must be a mapping"):
        PreprocessSpec.from_dict([1, 2])  # type: ignore[arg-type]
