"""Synthetic image degradations at five levels (blur, noise, JPEG, brightness, contrast, colour), numpy/Pillow only.

Used to train quality models without human scores (QualiCLIP-style) and to check that a quality score falls as
a degradation grows. Every family maps level 1..5 to one parameter value; level 0 is the image untouched. The
same (image, family, level, seed) always gives the same pixels.

Blur is specified relative to the image's short side, so a level means the same at any size. Noise, JPEG and
the tone changes act on pixel values: apply them at the resolution the model will see (a later downscale
averages noise and JPEG blocks away).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from edgeclip._registry import add_once, lookup
from edgeclip.data.images import ImageLike, jpeg_round_trip, load_image
from edgeclip.errors import UsageError

LEVELS = 5

DegradeFn = Callable[[Image.Image, float, np.random.Generator], Image.Image]


@dataclass(frozen=True)
class Degradation:
    """One degradation family: its name, what it does, and its parameter at levels 1..5."""

    name: str
    description: str
    parameter: str
    values: tuple[float, ...]
    apply: DegradeFn

    def value(self, level: int) -> float:
        """The parameter value at a level 1..5."""
        return self.values[level - 1]


_DEGRADATIONS: dict[str, Degradation] = {}


def register_degradation(
    name: str, *, description: str, parameter: str, values: tuple[float, ...]
) -> Callable[[DegradeFn], DegradeFn]:
    """Decorator adding a degradation family to the registry; duplicates and wrong level counts are refused."""

    def decorate(fn: DegradeFn) -> DegradeFn:
        if len(values) != LEVELS:
            raise ValueError(f"degradation {name!r} has {len(values)} level values: expected {LEVELS}")
        add_once(_DEGRADATIONS, name, Degradation(name, description, parameter, tuple(values), fn), "degradation")
        return fn

    return decorate


def list_degradations() -> list[str]:
    """Names of the registered degradation families, in registration order."""
    return list(_DEGRADATIONS)


def get_degradation(name: str) -> Degradation:
    """A registered family by name, or a UsageError listing the known ones."""
    return lookup(_DEGRADATIONS, name, "degradation")


def degrade(image: ImageLike, name: str, level: int, seed: int = 0) -> np.ndarray:
    """The image (uint8 HxWx3) degraded by family `name` at `level` 0..5 (0: unchanged), deterministic by seed."""
    family = get_degradation(name)
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= LEVELS:
        raise UsageError(f"degradation level {level!r} is not allowed: expected an integer 0..{LEVELS}")
    rgb = load_image(image)
    if level == 0:
        return np.array(rgb)
    rng = np.random.default_rng([int(seed), list(_DEGRADATIONS).index(name), int(level)])
    return np.array(family.apply(rgb, family.value(int(level)), rng).convert("RGB"))


def degradation_ladder(image: ImageLike, name: str, seed: int = 0) -> list[np.ndarray]:
    """Levels 0..5 of one family on one image: the pristine image first, then ever stronger degradations."""
    rgb = load_image(image)
    return [degrade(rgb, name, level, seed) for level in range(LEVELS + 1)]


@register_degradation(
    "blur",
    description="Gaussian blur (out of focus, camera shake)",
    parameter="sigma as a fraction of the short side",
    values=(0.006, 0.012, 0.02, 0.03, 0.045),
)
def _blur(image: Image.Image, value: float, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=value * min(image.size)))


@register_degradation(
    "noise",
    description="additive Gaussian noise per channel (sensor noise in low light)",
    parameter="standard deviation in 0..255 units",
    values=(6.0, 12.0, 20.0, 30.0, 45.0),
)
def _noise(image: Image.Image, value: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, value, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


@register_degradation(
    "jpeg",
    description="JPEG compression (blocking, ringing, colour bleeding)",
    parameter="JPEG quality 1..95",
    values=(40.0, 25.0, 15.0, 9.0, 5.0),
)
def _jpeg(image: Image.Image, value: float, rng: np.random.Generator) -> Image.Image:
    return jpeg_round_trip(image, int(value))


@register_degradation(
    "brightness",
    description="underexposure: every pixel value multiplied by a factor below 1",
    parameter="brightness factor",
    values=(0.72, 0.55, 0.42, 0.31, 0.22),
)
def _brightness(image: Image.Image, value: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(value)


@register_degradation(
    "contrast",
    description="loss of contrast: pixels pulled towards the mean grey (haze, flare)",
    parameter="contrast factor",
    values=(0.7, 0.5, 0.35, 0.24, 0.15),
)
def _contrast(image: Image.Image, value: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(value)


@register_degradation(
    "colour",
    description="loss of colour saturation (washed-out, faded colours)",
    parameter="saturation factor",
    values=(0.7, 0.5, 0.32, 0.18, 0.05),
)
def _colour(image: Image.Image, value: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Color(image).enhance(value)


def colourfulness(image: ImageLike) -> float:
    """Hasler and Süsstrunk's colourfulness metric (0 for a grey image); tells whether 'colour' can act on it."""
    pixels = np.asarray(load_image(image), dtype=np.float32)
    rg = pixels[..., 0] - pixels[..., 1]
    yb = 0.5 * (pixels[..., 0] + pixels[..., 1]) - pixels[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
