"""Image preprocessing for bundles, in numpy and Pillow only, matching open_clip's eval transform exactly.

``preprocess_image(image, spec)`` reproduces ``open_clip.transform.image_transform(spec.image_size,
is_train=False, mean=, std=, resize_mode=, interpolation=, fill_color=)`` on an RGB PIL image: the same
Pillow resize calls torchvision makes for PIL input, the same size arithmetic and rounding, the same
pad-then-centre-crop, then ``/255`` and ``(x - mean) / std`` in float32. Two behaviours are open_clip's,
kept on purpose:

* ``resize_mode="shortest"`` with a non-square ``image_size`` always resizes bicubic, whatever
  ``interpolation`` says (open_clip builds that ``ResizeKeepRatio`` without passing it on).
* In ``"shortest"`` mode any padding is black; ``fill_color`` only applies to ``"longest"``.

One departure: where ``"longest"`` would scale a sliver's short side to 0 pixels (open_clip raises
there), it is kept at 1 pixel.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from edgeclip.data.images import ImageLike, load_image
from edgeclip.errors import BundleError, EdgeclipError, UsageError

RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_OPTIONAL = ("fill_color", "channel_order", "layout")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a bundle's image encoder wants its pixels; stored in the manifest and checked on both ends."""

    image_size: tuple[int, int]  # (height, width)
    resize_mode: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fill_color: int = 0
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        for field in fields(self):
            value = _checked(field.name, getattr(self, field.name), "PreprocessSpec", UsageError)
            object.__setattr__(self, field.name, value)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values (lists, not tuples), for a bundle manifest."""
        return {
            "image_size": list(self.image_size),
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "fill_color": self.fill_color,
            "channel_order": self.channel_order,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessSpec:
        """Read a spec from a manifest's ``preprocess`` entry, raising BundleError on any bad field."""
        if not isinstance(d, Mapping):
            raise BundleError(f"preprocess must be a mapping of fields, got {type(d).__name__}")
        names = [field.name for field in fields(cls)]
        unknown = sorted(set(map(str, d)) - set(names))
        if unknown:
            raise BundleError(f"preprocess has unknown field(s) {', '.join(unknown)}; expected only {', '.join(names)}")
        missing = [name for name in names if name not in d and name not in _OPTIONAL]
        if missing:
            raise BundleError(f"preprocess is missing field(s) {', '.join(missing)}")
        values = {name: _checked(name, d[name], "preprocess", BundleError) for name in names if name in d}
        return cls(**values)


def preprocess_image(image: ImageLike, spec: PreprocessSpec) -> np.ndarray:
    """Resize, crop and normalise one image exactly as open_clip would: float32 [3, H, W] (or [H, W, 3])."""
    return normalize(resize_and_crop(load_image(image), spec), spec)


def resize_and_crop(rgb: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The resize and crop (or pad) steps on a decoded RGB image: uint8 [H, W, 3] of spec.image_size."""
    width, height = rgb.size
    new_height, new_width, interpolation = _resize_plan(height, width, spec)
    if (new_height, new_width) != (height, width):
        rgb = rgb.resize((new_width, new_height), _RESAMPLE[interpolation])
    pixels = np.asarray(rgb)
    if spec.resize_mode != "squash":
        fill = spec.fill_color if spec.resize_mode == "longest" else 0
        pixels = _center_crop_or_pad(pixels, spec.image_size, fill)
    return pixels


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Last step: uint8 [H, W, 3] RGB to float32 ``(x / 255 - mean) / std`` in the spec's channel order and layout."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out = (pixels.astype(np.float32) / np.float32(255.0) - mean) / std
    if spec.channel_order == "BGR":
        out = out[:, :, ::-1]
    if spec.layout == "NCHW":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out)


def preprocess(images: ImageLike | Sequence[ImageLike], spec: PreprocessSpec) -> np.ndarray:
    """Decode and preprocess one image or many into a float32 batch [N, 3, H, W] (or [N, H, W, 3])."""
    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim != 4):
        images = [images]
    height, width = spec.image_size
    shape = (3, height, width) if spec.layout == "NCHW" else (height, width, 3)
    batch = np.empty((len(images), *shape), dtype=np.float32)
    for i, image in enumerate(images):
        batch[i] = preprocess_image(image, spec)
    return batch


def _resize_plan(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int, str]:
    """The (height, width, interpolation) open_clip's resize step produces for an image of this size."""
    target_h, target_w = spec.image_size
    if spec.resize_mode == "squash":
        return target_h, target_w, spec.interpolation
    if spec.resize_mode == "shortest" and target_h == target_w:
        # torchvision Resize(int): short side to size, long side int(size * long / short), truncated.
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = target_h, int(target_h * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        return new_h, new_w, spec.interpolation
    # open_clip/timm ResizeKeepRatio, same expressions so the floats round the same way.
    longest = 1.0 if spec.resize_mode == "longest" else 0.0
    ratio_h = height / target_h
    ratio_w = width / target_w
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    new_h = max(1, round(height * 1.0 / ratio))
    new_w = max(1, round(width * 1.0 / ratio))
    interpolation = spec.interpolation if spec.resize_mode == "longest" else "bicubic"
    return new_h, new_w, interpolation


def _center_crop_or_pad(pixels: np.ndarray, size: tuple[int, int], fill: int) -> np.ndarray:
    """torchvision center_crop / open_clip center_crop_or_pad on an HxWx3 array, rounding included."""
    crop_h, crop_w = size
    height, width = pixels.shape[:2]
    if crop_w > width or crop_h > height:
        left = (crop_w - width) // 2 if crop_w > width else 0
        top = (crop_h - height) // 2 if crop_h > height else 0
        right = (crop_w - width + 1) // 2 if crop_w > width else 0
        bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        padded = np.full((height + top + bottom, width + left + right, 3), fill, dtype=np.uint8)
        padded[top : top + height, left : left + width] = pixels
        pixels = padded
        height, width = pixels.shape[:2]
        if (height, width) == (crop_h, crop_w):
            return pixels
    top = round((height - crop_h) / 2.0)
    left = round((width - crop_w) / 2.0)
    return pixels[top : top + crop_h, left : left + crop_w]


def _checked(name: str, value: Any, owner: str, error: type[EdgeclipError]) -> Any:
    """Validate and normalise one spec field; the message names the field and what it should be."""
    where = f"{owner}.{name}"
    if name == "image_size":
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value):
            return (int(value[0]), int(value[1]))
        raise error(f"{where} must be [height, width], two integers >= 1, got {value!r}")
    if name in ("mean", "std"):
        if (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(_is_real(v) and math.isfinite(v) and (name == "mean" or v > 0) for v in value)
        ):
            return tuple(float(v) for v in value)
        bound = "finite numbers" if name == "mean" else "finite numbers > 0"
        raise error(f"{where} must be three {bound} (one per RGB channel), got {value!r}")
    if name == "fill_color":
        if _is_int(value) and 0 <= value <= 255:
            return int(value)
        raise error(f"{where} must be an integer 0..255, got {value!r}")
    allowed = {
        "resize_mode": RESIZE_MODES,
        "interpolation": INTERPOLATIONS,
        "channel_order": CHANNEL_ORDERS,
        "layout": LAYOUTS,
    }[name]
    if isinstance(value, str) and value in allowed:
        return value
    raise error(f"{where} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
