"""The one image decoder: real files in every common mode, EXIF orientation, arrays, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.data import images
from edgeclip.data.images import ALPHA_BACKGROUND, IMAGE_EXTENSIONS, list_images, load_image
from edgeclip.errors import ImageError

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skdata.astronaut()[::4, ::4].copy()  # 128x128x3 uint8


def _rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def _blend(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    bg = np.asarray(ALPHA_BACKGROUND, dtype=np.uint32)
    a = alpha.astype(np.uint32)[..., None]
    return ((rgb.astype(np.uint32) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def test_rgb_inputs_pass_through_exactly_as_open_clip_sees_them(photo: np.ndarray, tmp_path: Path) -> None:
    pil = Image.fromarray(photo)
    assert np.array_equal(_rgb(load_image(pil)), np.asarray(pil.convert("RGB")))
    assert np.array_equal(_rgb(load_image(photo)), photo)
    pil.save(tmp_path / "a.png")
    assert np.array_equal(_rgb(load_image(tmp_path / "a.png")), photo)
    assert np.array_equal(_rgb(load_image(str(tmp_path / "a.png"))), photo)
    pil.save(tmp_path / "a.jpg", quality=90)
    with Image.open(tmp_path / "a.jpg") as im:
        assert np.array_equal(_rgb(load_image(tmp_path / "a.jpg")), np.asarray(im.convert("RGB")))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_exif_orientation_is_applied(photo: np.ndarray, tmp_path: Path, orientation: int) -> None:
    raw = photo[:, :96]  # 128 high, 96 wide: a transposed result shows in the size
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(raw).save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))
    turns = {3: 2, 6: -1, 8: 1}[orientation]  # 6: rotate 90° clockwise to display, 8: anticlockwise
    expected = np.rot90(stored, k=turns)
    out = load_image(path)
    assert out.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(_rgb(out), expected)
    # A PIL image still carrying the tag is oriented the same way, and twice is the same as once.
    with Image.open(path) as im:
        once = load_image(im)
    assert np.array_equal(_rgb(once), expected)
    assert np.array_equal(_rgb(load_image(once)), expected)


def test_png_greyscale_l(tmp_path: Path) -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    out = _rgb(load_image(tmp_path / "l.png"))
    assert np.array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_png_la_is_composited_onto_the_background(tmp_path: Path) -> None:
    grey = np.full((4, 3), 40, dtype=np.uint8)
    alpha = np.array([[0, 128, 255]] * 4, dtype=np.uint8)
    Image.fromarray(np.stack([grey, alpha], axis=2), "LA").save(tmp_path / "la.png")
    with Image.open(tmp_path / "la.png") as im:
        assert im.mode == "LA"
    out = _rgb(load_image(tmp_path / "la.png"))
    assert np.array_equal(out, _blend(np.repeat(grey[..., None], 3, axis=2), alpha))
    assert tuple(out[0, 0]) == ALPHA_BACKGROUND
    assert tuple(out[0, 2]) == (40, 40, 40)


def test_png_rgba_composited_and_opaque_pixels_exact(photo: np.ndarray, tmp_path: Path) -> None:
    alpha = np.tile(np.linspace(0, 255, photo.shape[1]).astype(np.uint8), (photo.shape[0], 1))
    alpha[:, -10:] = 255
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(tmp_path / "rgba.png")
    out = _rgb(load_image(tmp_path / "rgba.png"))
    assert np.array_equal(out, _blend(photo, alpha))
    assert np.array_equal(out[:, -10:], photo[:, -10:])
    assert tuple(out[0, 0]) == ALPHA_BACKGROUND
    opaque = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    assert np.array_equal(_rgb(load_image(Image.fromarray(opaque, "RGBA"))), photo)


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 2))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P" and "transparency" in im.info
    out = _rgb(load_image(tmp_path / "p.png"))
    assert tuple(out[0, 0]) == ALPHA_BACKGROUND
    assert tuple(out[0, 1]) == (200, 100, 50)
    # Without transparency a palette image is just its colours.
    Image.open(tmp_path / "p.png").convert("RGB").save(tmp_path / "flat.gif")
    assert tuple(_rgb(load_image(tmp_path / "flat.gif"))[0, 1]) == (200, 100, 50)


def test_cmyk_tiff_and_jpeg(tmp_path: Path) -> None:
    cmyk = np.zeros((8, 8, 4), dtype=np.uint8)
    cmyk[:4] = (255, 0, 0, 0)  # cyan
    cmyk[4:] = (0, 0, 0, 128)  # half black
    image = Image.fromarray(cmyk, "CMYK")
    image.save(tmp_path / "c.tif")
    image.save(tmp_path / "c.jpg", quality=100)
    tif = _rgb(load_image(tmp_path / "c.tif"))
    assert np.array_equal(tif, np.asarray(image.convert("RGB")))
    assert tuple(tif[0, 0]) == (0, 255, 255)
    assert tuple(tif[7, 7]) == (127, 127, 127)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    jpg = _rgb(load_image(tmp_path / "c.jpg")).astype(int)
    assert np.abs(jpg - tif.astype(int)).max() <= 4


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    with Image.open(tmp_path / "16.png") as im:
        assert im.mode in ("I;16", "I")
    out = _rgb(load_image(tmp_path / "16.png"))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_int_and_float_modes() -> None:
    as_int = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32), "I")
    assert _rgb(load_image(as_int))[0, :, 1].tolist() == [0, 255, 255, 0]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32), "F")
    assert _rgb(load_image(as_float))[0, :, 1].tolist() == [0, 128, 255, 255]


def test_arrays() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    expected = np.repeat(grey[..., None], 3, axis=2)
    assert np.array_equal(_rgb(load_image(grey)), expected)
    assert np.array_equal(_rgb(load_image(grey[..., None])), expected)
    assert np.array_equal(_rgb(load_image(expected[:, ::-1])), expected[:, ::-1])  # non-contiguous view
    rgba = np.dstack([expected, np.full((3, 4), 255, np.uint8)])
    assert np.array_equal(_rgb(load_image(rgba)), expected)
    rgba[0, 0, 3] = 0
    assert tuple(_rgb(load_image(rgba))[0, 0]) == ALPHA_BACKGROUND


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4, 3), np.uint16),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_bad_arrays_name_shape_and_dtype(array: np.ndarray) -> None:
    with pytest.raises(ImageError) as info:
        load_image(array)
    message = str(info.value)
    assert f"array of shape {tuple(array.shape)}" in message and str(array.dtype) in message
    assert "expected uint8" in message and "\n" not in message


def test_other_types_are_refused() -> None:
    with pytest.raises(ImageError, match="expected a path, a PIL image or a uint8 array"):
        load_image(b"abc")  # type: ignore[arg-type]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _jpeg_bytes(photo: np.ndarray, tmp_path: Path) -> bytes:
    Image.fromarray(photo).save(tmp_path / "whole.jpg", quality=90)
    return (tmp_path / "whole.jpg").read_bytes()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", "empty file"),
        ("truncated", "truncated or corrupt"),
        ("text", "not an image"),
        ("garbage_png", "truncated or corrupt"),
    ],
)
def test_bad_files_raise_one_line_image_errors(photo: np.ndarray, tmp_path: Path, case: str, words: str) -> None:
    if case == "missing":
        path = tmp_path / "nowhere.jpg"
    elif case == "directory":
        path = tmp_path / "folder.jpg"
        path.mkdir()
    elif case == "empty":
        path = _write(tmp_path / "empty.jpg", b"")
    elif case == "truncated":
        path = _write(tmp_path / "cut.jpg", _jpeg_bytes(photo, tmp_path)[:2000])
    elif case == "text":
        path = _write(tmp_path / "notes.jpg", b"this is a text file, not a picture\n" * 20)
    else:
        Image.fromarray(photo).save(tmp_path / "ok.png")
        data = bytearray((tmp_path / "ok.png").read_bytes())
        data[200:400] = bytes(200)  # zero out part of the compressed stream
        path = _write(tmp_path / "broken.png", bytes(data))
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert path.name in message and words in message, message
    assert "\n" not in message
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_decompression_bomb_limit_raises(photo: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(photo).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 128 * 128 - 1)
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "big.png")
    message = str(info.value)
    assert "big.png" in message and "128x128" in message and "16,383" in message and "\n" not in message
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 128 * 128)
    assert load_image(tmp_path / "big.png").size == (128, 128)


def test_pillow_bomb_error_is_wrapped(photo: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(photo).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for limit in (1000, 10_000):  # over 2x Pillow's limit (its error), then between 1x and 2x (its warning)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageError, match=r"big\.png: too large"):
            load_image(tmp_path / "big.png")


def test_truncated_pil_image_raises_image_error(photo: np.ndarray, tmp_path: Path) -> None:
    path = _write(tmp_path / "cut.jpg", _jpeg_bytes(photo, tmp_path)[:2000])
    with Image.open(path) as im, pytest.raises(ImageError, match=r"cut\.jpg: truncated"):
        load_image(im)


def test_list_images_sorted_recursive_and_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.tiff", "sub/notes.txt", ".hidden.png",
                 "._a.jpg", ".git/x.png", "z.jpeg"]:  # fmt: skip
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "sub/c.webp", "sub/deeper/d.tiff", "z.jpeg"]
    flat = [p.name for p in list_images(tmp_path, recursive=False)]
    assert flat == ["a.JPG", "b.png", "z.jpeg"]
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    with pytest.raises(ImageError, match="does not exist"):
        list_images(tmp_path / "nope")
