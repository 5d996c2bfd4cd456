"""Face detection and cropping for the liveness wrapper: detectors in a registry, OpenCV imported lazily.

``haar`` is OpenCV's bundled frontal-face Haar cascade (``haarcascade_frontalface_default.xml``): it ships
with ``opencv-python-headless`` 4.x, needs no download and runs on any CPU. ``none`` treats the whole image
as one face, for inputs that are already face crops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

import numpy as np
from PIL import Image

from edgeclip._registry import add_once
from edgeclip.data.images import ImageLike, load_image
from edgeclip.errors import RuntimeUnavailable, UsageError

DEFAULT_MIN_FACE = 40
DEFAULT_MARGIN = 0.3
_HAAR_FILE = "haarcascade_frontalface_default.xml"
# Detection runs on a copy at most this many pixels on its long side (never shrinking the smallest face that
# counts below the cascade's 24 px window); boxes are scaled back.
_DETECT_MAX_SIDE = 320
_HAAR_WINDOW = 24


@dataclass(frozen=True)
class FaceBox:
    """A face's box in the input image's pixels: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)

    def to_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


class FaceDetector(Protocol):
    """Finds faces in an RGB image; returns boxes largest first, none smaller than its minimum size."""

    name: str
    min_size: int

    def detect(self, image: Image.Image) -> list[FaceBox]: ...


DetectorFactory = Callable[[int], FaceDetector]
_DETECTORS: dict[str, DetectorFactory] = {}


def register_face_detector(name: str) -> Callable[[DetectorFactory], DetectorFactory]:
    """Class decorator adding a face detector (built from a minimum face size) to the registry."""

    def decorate(factory: DetectorFactory) -> DetectorFactory:
        add_once(_DETECTORS, name, factory, "face detector")
        return factory

    return decorate


def list_face_detectors() -> list[str]:
    """Names of the registered face detectors."""
    return sorted(_DETECTORS)


def get_face_detector(name: str = "haar", min_size: int = DEFAULT_MIN_FACE) -> FaceDetector:
    """A face detector by name; faces smaller than `min_size` pixels (box side) are not reported."""
    if name not in _DETECTORS:
        raise UsageError(f"unknown face detector {name!r}: expected one of {', '.join(list_face_detectors())}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise UsageError(f"minimum face size {min_size!r} is not allowed: expected a positive number of pixels")
    return _DETECTORS[name](min_size)


def _import_cv2() -> ModuleType:
    try:
        import cv2
    except ImportError:
        raise RuntimeUnavailable(
            "face detection needs OpenCV: pip install 'edgeclip[liveness]' (or use --detector none for face crops)"
        ) from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeUnavailable(
            f"OpenCV {cv2.__version__} has no Haar cascades (removed in 5.0): pip install 'opencv-python-headless<5'"
        )
    return cv2


@register_face_detector("haar")
class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade on the histogram-equalized grey image."""

    name = "haar"

    def __init__(self, min_size: int = DEFAULT_MIN_FACE, scale_factor: float = 1.1, min_neighbors: int = 5) -> None:
        cv2 = _import_cv2()
        path = f"{cv2.data.haarcascades}{_HAAR_FILE}"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeUnavailable(f"OpenCV could not load its bundled face cascade {path}: reinstall OpenCV")
        self._cv2 = cv2
        self.min_size = min_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(self, image: Image.Image) -> list[FaceBox]:
        cv2 = self._cv2
        width, height = image.size
        scale = min(1.0, max(_DETECT_MAX_SIDE / max(width, height), _HAAR_WINDOW / self.min_size))
        small = (
            image
            if scale == 1.0
            else image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
        )
        grey = cv2.equalizeHist(np.asarray(small.convert("L")))
        side = max(1, round(self.min_size * scale))
        found = self._cascade.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        boxes = []
        for x, y, w, h in np.asarray(found).reshape(-1, 4).tolist():
            box = _clamp(round(x / scale), round(y / scale), round(w / scale), round(h / scale), width, height)
            if min(box.width, box.height) >= self.min_size:
                boxes.append(box)
        return sorted(boxes, key=lambda b: (-b.area, b.x, b.y))


@register_face_detector("none")
class WholeImageDetector:
    """No detection: the whole image is the face (for inputs that are already face crops)."""

    name = "none"

    def __init__(self, min_size: int = DEFAULT_MIN_FACE) -> None:
        self.min_size = min_size

    def detect(self, image: Image.Image) -> list[FaceBox]:
        width, height = image.size
        return [FaceBox(0, 0, width, height)] if min(width, height) >= self.min_size else []


def _clamp(x: int, y: int, w: int, h: int, width: int, height: int) -> FaceBox:
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    return FaceBox(left, top, max(0, right - left), max(0, bottom - top))


def crop_face(image: ImageLike, box: FaceBox, margin: float = DEFAULT_MARGIN) -> Image.Image:
    """The face with `margin` x its size added on every side, as a square where the image allows; clamped."""
    if not 0 <= margin <= 2:
        raise UsageError(f"face margin {margin!r} is not allowed: expected 0..2 (a fraction of the face size)")
    rgb = load_image(image)
    width, height = rgb.size
    side = max(box.width, box.height) * (1 + 2 * margin)
    cx, cy = box.x + box.width / 2, box.y + box.height / 2
    crop = _clamp(round(cx - side / 2), round(cy - side / 2), round(side), round(side), width, height)
    if crop.width == 0 or crop.height == 0:
        raise UsageError(f"face box {box.as_tuple()} lies outside the {width}x{height} image")
    return rgb.crop((crop.x, crop.y, crop.x + crop.width, crop.y + crop.height))
