"""The built-in synthetic ``shapes`` dataset: coloured shapes on textured backgrounds, with captions.

A "coco8 for CLIP": small enough to generate on the fly, structured enough that a tiny CLIP trained on its
captions reaches honest zero-shot accuracy on the shape (and colour) labels. Every item is drawn from its
own random stream seeded by (seed, split, index), so items are reproducible, random-access, and the train
and eval splits never share a stream.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edgeclip.errors import UsageError

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "heart")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (40, 165, 60),
    "blue": (35, 80, 215),
    "purple": (135, 50, 175),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SIZES: dict[str, float] = {"small": 0.14, "medium": 0.22, "large": 0.32}  # radius / image side
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
# How captions say each position ("on the left", not "in the left").
POSITION_PHRASES = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
BACKGROUNDS = ("plain", "noisy", "striped", "checkered", "gradient")
SPLITS = ("train", "eval")
DEFAULT_LENGTHS = {"train": 20_000, "eval": 2_000}
CLASS_PROMPT = "a photo of a {}"
MIN_SIZE, MAX_SIZE = 16, 1024

_COLOR_NAMES = tuple(COLORS)
_SIZE_NAMES = tuple(SIZES)
_MAX_TILT = math.radians(15)  # small, so a square never turns into a diamond
_MIN_CONTRAST = 100.0  # RGB distance between the shape and every background tone
_COLOR_JITTER = 20


@dataclass(frozen=True, eq=False)
class ShapesSample:
    """One item: the image, its caption, the shape label and the attributes the caption was built from."""

    image: np.ndarray  # uint8 HxWx3
    caption: str
    label: int  # index into SHAPES / ShapesDataset.classes
    color_label: int  # index into ShapesDataset.colors
    attributes: dict[str, str]  # shape, color, size, position, background


class ShapesDataset:
    """Procedural shape x colour x size x position x background images with captions, random access."""

    classes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = _COLOR_NAMES
    class_prompts: tuple[str, ...] = tuple(CLASS_PROMPT.format(shape) for shape in SHAPES)
    color_prompts: tuple[str, ...] = tuple(f"a photo of a {color} shape" for color in _COLOR_NAMES)

    def __init__(self, split: str = "train", size: int = 64, length: int | None = None, seed: int = 0) -> None:
        if split not in SPLITS:
            raise UsageError(f"shapes split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not _is_int(size) or not MIN_SIZE <= size <= MAX_SIZE:
            raise UsageError(f"shapes image size must be an integer {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
        if length is None:
            length = DEFAULT_LENGTHS[split]
        if not _is_int(length) or length < 1:
            raise UsageError(f"shapes length must be an integer >= 1, got {length!r}")
        if not _is_int(seed) or seed < 0:
            raise UsageError(f"shapes seed must be an integer >= 0, got {seed!r}")
        self.split = split
        self.size = int(size)
        self.length = int(length)
        self.seed = int(seed)
        self._split_id = SPLITS.index(split)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"ShapesDataset(split={self.split!r}, size={self.size}, length={self.length}, seed={self.seed})"

    def __getitem__(self, index: int) -> ShapesSample:
        """Render item ``index`` (negative counts from the end); the same arguments give the same pixels."""
        if not _is_int(index):
            raise TypeError(f"shapes index must be an integer, got {type(index).__name__}")
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"shapes index {index} out of range for length {self.length}")
        rng = np.random.default_rng([self.seed, self._split_id, int(index)])
        return _render(rng, int(index), self.size)


def write_image_folder(dataset: ShapesDataset, out_dir: Path, count: int) -> Path:
    """Write the first ``count`` items as ``<out_dir>/<class>/<index>.png`` plus ``captions.jsonl``."""
    out_dir = Path(out_dir)
    if not _is_int(count) or not 1 <= count <= len(dataset):
        raise UsageError(f"count must be an integer 1..{len(dataset)} (the dataset's length), got {count!r}")
    _check_free(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name in dataset.classes:
            (tmp / name).mkdir()
        width = len(str(count - 1))
        with open(tmp / "captions.jsonl", "w", encoding="utf-8") as captions:
            for i in range(count):
                sample = dataset[i]
                relative = f"{dataset.classes[sample.label]}/{i:0{width}d}.png"
                Image.fromarray(sample.image).save(tmp / relative)
                record = {
                    "image": relative,
                    "caption": sample.caption,
                    "label": sample.label,
                    "attributes": sample.attributes,
                }
                captions.write(json.dumps(record) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _check_free(out_dir)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above; rename cannot replace it portably
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_free(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir}: already exists and is not an empty folder; expected a new output folder")


def _render(rng: np.random.Generator, index: int, side: int) -> ShapesSample:
    """Draw one item's attributes from its own stream and paint it."""
    u = rng.random(12)
    label = index % len(SHAPES)  # shapes cycle with the index, so any prefix is class-balanced
    shape = SHAPES[label]
    color_label = int(u[0] * len(_COLOR_NAMES))
    color = _COLOR_NAMES[color_label]
    size = _SIZE_NAMES[int(u[1] * len(_SIZE_NAMES))]
    position_id = int(u[2] * len(POSITIONS))
    background = BACKGROUNDS[int(u[3] * len(BACKGROUNDS))]

    jitter = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3).tolist()
    rgb = tuple(min(255, max(0, c + j)) for c, j in zip(COLORS[color], jitter, strict=True))
    fill = np.array(rgb, dtype=np.float32)
    canvas = _background(rng, background, side, fill)

    radius = SIZES[size] * side * (0.92 + 0.16 * u[4])
    row, col = divmod(position_id, 3)
    free = side - 2 * radius
    cx = radius + (col + 0.2 + 0.6 * u[5]) / 3 * free
    cy = radius + (row + 0.2 + 0.6 * u[6]) / 3 * free
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=rgb)
    else:
        angle = (2 * u[7] - 1) * _MAX_TILT
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = np.array([[cos, sin], [-sin, cos]]) * radius
        points = _UNIT_POLYGONS[shape] @ rotation + (cx, cy)
        draw.polygon(points.ravel().tolist(), fill=rgb)

    attributes = {
        "shape": shape,
        "color": color,
        "size": size,
        "position": POSITIONS[position_id],
        "background": background,
    }
    caption = _caption(_CAPTIONS[int(u[8] * len(_CAPTIONS))], attributes)
    return ShapesSample(np.array(image), caption, label, color_label, attributes)


def _background(rng: np.random.Generator, kind: str, side: int, fill: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 texture in muted tones that all stay far from the shape's colour."""
    first = _tone(rng, fill, None)
    if kind == "plain":
        return np.broadcast_to(first.astype(np.uint8), (side, side, 3)).copy()
    if kind == "noisy":
        noise = rng.integers(-30, 31, (side, side, 1), dtype=np.int16)
        return np.clip(first.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    second = _tone(rng, fill, first)
    ys, xs = _grid(side)
    u = rng.random(4)
    if kind == "gradient":
        angle = 2 * math.pi * u[0]
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)  # float32: the grid is float32
        blend = first + (second - first) * t[:, :, None]
        return np.rint(blend).astype(np.uint8)
    period = side * (0.1 + 0.15 * u[0])
    offset = int(u[1] * side)
    if kind == "striped":
        direction = int(u[2] * 3)
        coord = (xs, ys, xs + ys)[direction] + offset
        mask = (coord // (period / 2)) % 2 == 0
    else:  # checkered
        mask = ((xs + offset) // period + (ys + offset) // period) % 2 == 0
    mask = np.broadcast_to(mask, (side, side))
    return np.where(mask[:, :, None], first.astype(np.uint8), second.astype(np.uint8))


def _tone(rng: np.random.Generator, fill: np.ndarray, other: np.ndarray | None) -> np.ndarray:
    """A greyish tone at least _MIN_CONTRAST from ``fill`` (and visibly apart from ``other``)."""
    fill_rgb = fill.tolist()
    other_rgb = None if other is None else other.tolist()
    grey: float
    for u in rng.random((16, 4)).tolist():
        grey = 30 + int(u[0] * 196)
        tone = [min(255, max(0, grey + int(v * 51) - 25)) for v in u[1:]]
        if math.dist(tone, fill_rgb) < _MIN_CONTRAST:
            continue
        if other_rgb is not None and math.dist(tone, other_rgb) < 40:
            continue
        return np.array(tone, dtype=np.float32)
    # Rare: no luck in 16 draws. Fall back to the grey end farthest from the shape's brightness.
    grey = 30.0 if float(fill.mean()) > 127 else 225.0
    if other is not None and abs(float(other.mean()) - grey) < 40:
        grey = grey + 60.0 if grey < 127 else grey - 60.0
    return np.full(3, grey, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates as broadcastable (side, 1) and (1, side) float arrays."""
    coords = np.arange(side, dtype=np.float32)
    return coords[:, None], coords[None, :]


def _regular(count: int, start_deg: float, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
    angles = np.radians(start_deg) + np.arange(count * len(radii)) * (2 * np.pi / (count * len(radii)))
    r = np.resize(np.asarray(radii), angles.shape)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # image y points down
    points = np.stack([x, y + 2.5], axis=1)
    return points / np.abs(points).max()


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=np.float64,
    )


# Unit polygons as (x, y) rows in image coordinates (y down), each fitting the unit circle.
_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": _regular(4, 45),
    "triangle": _regular(3, -90),
    "star": _regular(5, -90, (1.0, 0.42)),
    "hexagon": _regular(6, 0),
    "cross": _cross(),
    "diamond": _regular(4, -90) * (0.62, 1.0),
    "heart": _heart(),
}


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


_CAPTIONS = (
    "{a_size_color_shape} on {a_background} background",
    "{a_color_shape} {where}",
    "a photo of {a_size_color_shape}",
    "{a_size_shape} colored {color}, on {a_background} background",
    "{a_size_color_shape} {where}, on {a_background} background",
)


def _caption(template: str, attributes: dict[str, str]) -> str:
    """Fill a caption template, with "a"/"an" chosen for the word that follows."""
    shape, color, size = attributes["shape"], attributes["color"], attributes["size"]
    return template.format(
        a_size_color_shape=_a(f"{size} {color} {shape}"),
        a_color_shape=_a(f"{color} {shape}"),
        a_size_shape=_a(f"{size} {shape}"),
        a_background=_a(attributes["background"]),
        color=color,
        where=POSITION_PHRASES[attributes["position"]],
    )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
