"""The one image decoder edgeclip uses everywhere: path, PIL image or uint8 array in, RGB PIL image out.

Pixels of plain RGB images pass through untouched, so results match open_clip's ``.convert("RGB")``.
Where they differ, on purpose:

* EXIF orientation is applied (``ImageOps.exif_transpose``); open_clip shows the sensor's raw orientation.
* Alpha (RGBA, LA, PA, or P and L with a transparent colour) is composited onto ``ALPHA_BACKGROUND``
  (white, like a web page). open_clip's ``.convert("RGB")`` drops alpha and keeps whatever colour lies
  under transparent pixels (often black, sometimes garbage). Fully opaque pixels are unchanged, and RGB
  images are never touched (an RGB PNG's transparent colour key is ignored).
* 16-bit greyscale (I;16*, and I, which is how Pillow decodes some 16-bit files) is scaled 0..65535 to
  0..255; Pillow's own conversion clips it, turning most 16-bit images white. Float images (F) are read as
  0..1. Embedded ICC profiles are ignored, as they are by open_clip; CMYK uses Pillow's conversion.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeclip.errors import ImageError

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or many as a list: anything but a list or tuple is one image (a str path is a Sequence too)."""
    if isinstance(images, (list, tuple)):
        return list(images)
    return [cast(ImageLike, images)]  # not a list or tuple: one image, which mypy cannot tell from a Sequence


# Same figure as Pillow's default; here it raises instead of warning. Pillow's own limit still applies.
MAX_IMAGE_PIXELS = 89_478_485

ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

_PIXEL_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("edgeclip_pixel_limit", default=None)


@contextlib.contextmanager
def pixel_limit(pixels: int | None) -> Iterator[None]:
    """Within the block, images of up to `pixels` pixels decode (None keeps MAX_IMAGE_PIXELS), e.g. 108 MP photos.

    Pillow refuses images over twice its own Image.MAX_IMAGE_PIXELS before edgeclip sees them.
    """
    token = _PIXEL_LIMIT.set(pixels)
    try:
        yield
    finally:
        _PIXEL_LIMIT.reset(token)


IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".bmp",
        ".dib",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".ico",
        ".jp2",
        ".j2k",
    }
)

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_CONVERTIBLE_MODES = frozenset({"1", "L", "P", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


def load_image(src: ImageLike) -> Image.Image:
    """Decode a path, PIL image or uint8 array into an RGB PIL image, raising ImageError on any failure."""
    if isinstance(src, Image.Image):
        name = _describe_pil(src)
        try:
            src.load()  # an Image.open() result decodes lazily; fail here, not inside a later resize
        except Exception as e:
            raise ImageError(f"{name}: truncated or corrupt image data ({_one_line(e)})") from None
        return _to_rgb(_upright(src, name), name)
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, (str, os.PathLike)):
        return _from_path(src)
    raise ImageError(f"cannot read an image from a {type(src).__name__}; expected a path, a PIL image or a uint8 array")


def jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    """The RGB image after JPEG compression at `quality` (1-95) and decoding: compression artefacts on demand."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """List the image files in a folder, sorted by relative path so every run sees the same order."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ImageError(f"{folder}: {what}; expected a folder of images")
    found = [path for path in _walk(folder, recursive) if path.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    # Hidden entries are skipped: macOS "._x.jpg" resource forks carry image suffixes but are not images.
    # So is a bundle's golden/ folder (test images for app ports), where a bundle sits among the photos.
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _is_golden_set(Path(root), d)] if recursive else []
        for name in files:
            if not name.startswith("."):
                yield Path(root) / name


def _is_golden_set(root: Path, name: str) -> bool:
    """Whether root/name is the golden/ folder of an edgeclip bundle (its images are test inputs, not photos)."""
    return name == "golden" and (root / "manifest.json").is_file() and (root / name / "index.json").is_file()


def _from_path(src: str | os.PathLike) -> Image.Image:
    name = os.fspath(src)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    path = Path(name)
    if path.is_dir():
        raise ImageError(f"{name}: is a directory; expected an image file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file; expected an image file") from None
    except OSError as e:
        raise ImageError(f"{name}: cannot be read ({_one_line(e)}); expected an image file") from None
    if size == 0:
        raise ImageError(f"{name}: empty file (0 bytes); expected an image file")
    limit = _PIXEL_LIMIT.get() or MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow warns over its own limit; that is an error here unless a larger limit was asked for.
            warnings.simplefilter("ignore" if limit > MAX_IMAGE_PIXELS else "error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: not an image Pillow can identify; expected a JPEG, PNG, WebP, BMP, GIF or TIFF file"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{name}: too large to decode safely (over Pillow's Image.MAX_IMAGE_PIXELS); "
            f"expected at most {limit:,} pixels (--max-pixels raises the limit up to twice Pillow's)"
        ) from None
    except Exception as e:
        raise ImageError(f"{name}: cannot be opened as an image ({_one_line(e)})") from None
    with image:
        width, height = image.size
        if width * height > limit:
            raise ImageError(
                f"{name}: {width}x{height} = {width * height:,} pixels is over the decompression-bomb "
                f"limit; expected at most {limit:,} pixels (--max-pixels {width * height} allows it)"
            )
        try:
            image.load()
        except Exception as e:
            raise ImageError(f"{name}: truncated or corrupt image data ({_one_line(e)})") from None
        return _to_rgb(_upright(image, name), name)


def _from_array(array: np.ndarray) -> Image.Image:
    what = f"array of shape {tuple(array.shape)} and dtype {array.dtype}"
    expected = "expected uint8 HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
    if array.dtype != np.uint8:
        raise ImageError(f"{what}: unsupported dtype; {expected}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"{what}: unsupported shape; {expected}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{what}: empty image; {expected} with H, W >= 1")
    array = np.ascontiguousarray(array)
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    if array.shape[2] == 4:
        return _composite(array)
    return Image.fromarray(array, "RGB")


def _describe_pil(image: Image.Image) -> str:
    filename = getattr(image, "filename", None)
    if filename:
        return os.fsdecode(filename)
    return f"PIL image of mode {image.mode} and size {image.size[0]}x{image.size[1]}"


def _upright(image: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation tag, if any, so the image is the way up a viewer shows it."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return image  # unreadable EXIF: nothing to orient by, the pixels are still good
    if orientation not in range(2, 9):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:
        raise ImageError(f"{name}: cannot apply EXIF orientation {orientation} ({_one_line(e)})") from None


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert any supported mode to RGB, compositing alpha and scaling high-bit-depth greyscale."""
    mode = image.mode
    try:
        if mode == "RGB":
            # Left exactly as is (a PNG colour key included) so RGB inputs match open_clip bit for bit.
            return image
        if mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(image).astype(np.int64)
            grey = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
            return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
        if mode == "F":
            values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
            grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0)
            return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _composite(np.asarray(image.convert("RGBA")))
        if mode in _CONVERTIBLE_MODES:
            return image.convert("RGB")
    except Exception as e:
        raise ImageError(f"{name}: cannot convert mode {mode} to RGB ({_one_line(e)})") from None
    supported = sorted(_CONVERTIBLE_MODES | _ALPHA_MODES | _SIXTEEN_BIT_MODES | {"RGB", "F"})
    raise ImageError(f"{name}: unsupported image mode {mode!r}; expected one of {', '.join(supported)}")


def _composite(rgba: np.ndarray) -> Image.Image:
    """Blend an HxWx4 uint8 array onto ALPHA_BACKGROUND, rounding to nearest; opaque pixels stay exact."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    if alpha.min(initial=255) == 255:
        return Image.fromarray(np.ascontiguousarray(rgba[:, :, :3]), "RGB")
    background = np.asarray(ALPHA_BACKGROUND, dtype=np.uint32)
    blended = (rgb * alpha + background * (255 - alpha) + 127) // 255
    return Image.fromarray(blended.astype(np.uint8), "RGB")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no details"
    return f"{type(error).__name__}: {text}"


def expand_image_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given and folders replaced by the images inside them (recursive, sorted), in argument order."""
    expanded: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise ImageError(f"{path}: folder holds no images; expected image files (.jpg, .png, .webp, .bmp, …)")
            expanded.extend(found)
        else:
            expanded.append(path)
    return expanded
