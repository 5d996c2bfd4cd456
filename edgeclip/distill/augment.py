"""Replayable augmentations: a RandomResizedCrop box and RandAugment ops drawn as parameters, applied later exactly.

Reinforcement draws K parameter sets per image, runs the teachers on the augmented pixels and stores the
parameters (not pixels) in `paug.json`; training replays one set at the student's resolution. The crop box is
in source-image pixels and translations are fractions of the output side, so one parameter set means the
same view at any resolution. Ops and magnitudes follow torchvision's RandAugment (same op list and order,
same magnitude bins), applied with torchvision's functional ops on PIL images, which are deterministic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from edgeclip.errors import DatasetError, UsageError

# torchvision.transforms.RandAugment's augmentation space, in its order: op_index refers to this tuple.
OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)  # fmt: skip
_SIGNED = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
)
_TRANSLATE_FRACTION = 150.0 / 331.0  # torchvision's translate range, as a fraction of the side
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class AugmentConfig:
    """How augmentation parameters are drawn (recorded in the dataset manifest)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    num_ops: int = 2
    magnitude: int = 9
    num_bins: int = 31
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise UsageError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise UsageError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.num_ops <= 8:
            raise UsageError(f"RandAugment ops per image must be 0..8, got {self.num_ops}")
        if not 0 <= self.magnitude < self.num_bins:
            raise UsageError(f"RandAugment magnitude must be 0..{self.num_bins - 1}, got {self.magnitude}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        object.__setattr__(self, "scale", (float(lo), float(hi)))
        object.__setattr__(self, "ratio", (float(self.ratio[0]), float(self.ratio[1])))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scale": list(self.scale), "ratio": list(self.ratio)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentConfig:
        try:
            return cls(**{**d, "scale": tuple(d["scale"]), "ratio": tuple(d["ratio"])})
        except (KeyError, TypeError, UsageError) as e:
            raise DatasetError(f"augmentation settings {dict(d)!r} are not valid ({e})") from None


@dataclass(frozen=True)
class AugmentParams:
    """One stored augmentation: crop box `[i, j, h, w]` in source pixels and `(op_index, magnitude)` pairs."""

    crop: tuple[int, int, int, int]
    ops: tuple[tuple[int, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"RandomResizedCrop": list(self.crop), "RandAugment": [[op, mag] for op, mag in self.ops]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentParams:
        try:
            crop = tuple(int(v) for v in d["RandomResizedCrop"])
            ops = tuple((int(op), float(mag)) for op, mag in d.get("RandAugment", ()))
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"augmentation parameters {d!r} are not valid ({type(e).__name__}: {e})") from None
        if len(crop) != 4 or crop[2] < 1 or crop[3] < 1 or min(crop[:2]) < 0:
            raise DatasetError(f"augmentation crop box {list(crop)} is not [i, j, h, w] with h, w >= 1")
        bad = [op for op, _ in ops if not 0 <= op < len(OPS)]
        if bad:
            raise DatasetError(f"augmentation op index {bad[0]} is not one of 0..{len(OPS) - 1}")
        return cls(crop, ops)


def params_to_json(params: Sequence[AugmentParams]) -> str:
    """K parameter sets as the JSON string DataCompDR keeps under `paug.json`'s `param_aug`."""
    return json.dumps([p.to_dict() for p in params], separators=(",", ":"))


def params_from_json(text: str) -> list[AugmentParams]:
    """Inverse of params_to_json; one dict (a single augmentation) is accepted too."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise DatasetError(f"param_aug is not valid JSON ({e})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DatasetError(f"param_aug must be a list of augmentations, got {type(data).__name__}")
    return [AugmentParams.from_dict(d) for d in data]


def _magnitudes(config: AugmentConfig) -> dict[str, float]:
    """The magnitude each op gets at the configured level (torchvision's bins)."""
    bins, level = config.num_bins, config.magnitude
    frac = level / (bins - 1)
    return {
        "Identity": 0.0,
        "ShearX": 0.3 * frac,
        "ShearY": 0.3 * frac,
        "TranslateX": _TRANSLATE_FRACTION * frac,
        "TranslateY": _TRANSLATE_FRACTION * frac,
        "Rotate": 30.0 * frac,
        "Brightness": 0.9 * frac,
        "Color": 0.9 * frac,
        "Contrast": 0.9 * frac,
        "Sharpness": 0.9 * frac,
        "Posterize": float(8 - round(level / ((bins - 1) / 4))),
        "Solarize": float(np.linspace(255.0, 0.0, bins)[level]),
        "AutoContrast": 0.0,
        "Equalize": 0.0,
    }


def sample_params(rng: np.random.Generator, width: int, height: int, config: AugmentConfig) -> AugmentParams:
    """Draw one crop box (torchvision's RandomResizedCrop.get_params) and config.num_ops RandAugment ops."""
    area = width * height
    log_ratio = (math.log(config.ratio[0]), math.log(config.ratio[1]))
    crop = None
    for _ in range(10):
        target = area * rng.uniform(*config.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            crop = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
            break
    if crop is None:  # torchvision's fallback: a centre crop at the nearest allowed ratio
        in_ratio = width / height
        if in_ratio < config.ratio[0]:
            w, h = width, round(width / config.ratio[0])
        elif in_ratio > config.ratio[1]:
            h, w = height, round(height * config.ratio[1])
        else:
            w, h = width, height
        crop = ((height - h) // 2, (width - w) // 2, h, w)
    magnitudes = _magnitudes(config)
    ops = []
    for _ in range(config.num_ops):
        op = int(rng.integers(0, len(OPS)))
        mag = magnitudes[OPS[op]]
        if OPS[op] in _SIGNED and rng.random() < 0.5:
            mag = -mag
        ops.append((op, float(mag)))
    return AugmentParams(crop, tuple(ops))


def apply_params(image: Image.Image, params: AugmentParams, size: tuple[int, int], interpolation: str) -> Image.Image:
    """Replay a parameter set on an RGB image: crop, resize to `size` (height, width), then the ops in order."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    i, j, h, w = params.crop
    if i + h > image.height or j + w > image.width:
        raise DatasetError(
            f"augmentation crop box {list(params.crop)} lies outside the {image.width}x{image.height} image: "
            "the stored parameters belong to another image"
        )
    out = F.resized_crop(image, i, j, h, w, list(size), interpolation=mode, antialias=True)
    for op, mag in params.ops:
        out = _apply_op(out, OPS[op], mag)
    return out


def _apply_op(img: Image.Image, name: str, mag: float) -> Image.Image:
    """One RandAugment op with an explicit magnitude (torchvision's `_apply_op`, translate as a fraction)."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    nearest = InterpolationMode.NEAREST
    if name == "ShearX":
        return F.affine(img, 0.0, [0, 0], 1.0, [math.degrees(math.atan(mag)), 0.0], nearest, None, [0, 0])
    if name == "ShearY":
        return F.affine(img, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(mag))], nearest, None, [0, 0])
    if name == "TranslateX":
        return F.affine(img, 0.0, [int(mag * img.width), 0], 1.0, [0.0, 0.0], nearest, None)
    if name == "TranslateY":
        return F.affine(img, 0.0, [0, int(mag * img.height)], 1.0, [0.0, 0.0], nearest, None)
    if name == "Rotate":
        return F.rotate(img, mag, nearest, fill=None)
    if name == "Brightness":
        return F.adjust_brightness(img, 1.0 + mag)
    if name == "Color":
        return F.adjust_saturation(img, 1.0 + mag)
    if name == "Contrast":
        return F.adjust_contrast(img, 1.0 + mag)
    if name == "Sharpness":
        return F.adjust_sharpness(img, 1.0 + mag)
    if name == "Posterize":
        return F.posterize(img, int(mag))
    if name == "Solarize":
        return F.solarize(img, mag)
    if name == "AutoContrast":
        return F.autocontrast(img)
    if name == "Equalize":
        return F.equalize(img)
    return img  # Identity


def sample_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one (seed, ...) tuple: draws never depend on which process or step asks first."""
    return np.random.default_rng([int(seed), *map(int, keys)])


def to_tensor(images: Sequence[Image.Image], mean: Sequence[float], std: Sequence[float]):
    """uint8 RGB PIL images of one size -> float32 [N, 3, H, W], scaled to 0..1 and normalized like open_clip."""
    import torch

    batch = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    # contiguous NCHW: a channels-last-strided batch crashed torch 2.14.1's CPU conv backward (FastViT-MCi0)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s
