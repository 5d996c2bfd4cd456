"""Accuracy beside latency: zero-shot top-1 on a labelled image folder (cosine parity: edgeclip.metrics.parity).

A labelled folder is ``<root>/<class>/<image>`` (ImageNet-style; the shapes dataset writes the same layout);
a class's prompts are its folder name (``_`` read as a space) in each template. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.bench.results import Accuracy
from edgeclip.data.images import list_images
from edgeclip.errors import UsageError
from edgeclip.metrics.zeroshot import zero_shot_top1
from edgeclip.runtimes.heads import Head
from edgeclip.runtimes.templates import resolve_templates

SHAPES_EVAL = "shapes-eval"
SHAPES_IMAGE_SIZE = 128


@dataclass(frozen=True)
class LabelledImages:
    """Image files with their class index, and the class names in index order."""

    name: str
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def prompts(self, templates: str | tuple[str, ...]) -> list[str]:
        """Every class in every template, class-major (the order build_zero_shot_head uses)."""
        return [t.format(label) for label in self.class_labels for t in resolve_templates(templates)]

    @property
    def class_labels(self) -> tuple[str, ...]:
        """Class names as words for prompts: folder names with '_' read as spaces."""
        return tuple(c.replace("_", " ") for c in self.classes)


def read_labelled_folder(folder: str | Path, name: str | None = None) -> LabelledImages:
    """The images under each class subfolder of `folder` (sorted), refusing a folder with no classes or images."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(
            f"dataset {root}: {'is not a folder' if root.exists() else 'does not exist'}; "
            "expected a folder with one subfolder of images per class"
        )
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(classes) < 2:
        raise UsageError(
            f"dataset {root} has {len(classes)} class subfolders: expected at least 2 (<root>/<class>/<image>)"
        )
    paths, labels = [], []
    for index, cls in enumerate(classes):
        found = list_images(root / cls)
        paths += found
        labels += [index] * len(found)
    if not paths:
        raise UsageError(f"dataset {root} holds no images in its class subfolders ({', '.join(classes)})")
    return LabelledImages(name or root.name, root, tuple(paths), tuple(labels), classes)


def write_shapes_eval(out_dir: Path, count: int, seed: int = 0) -> Path:
    """The built-in shapes dataset's eval split as a labelled folder: the default accuracy set."""
    from edgeclip.data.shapes import ShapesDataset, write_image_folder

    return write_image_folder(ShapesDataset("eval", size=SHAPES_IMAGE_SIZE, seed=seed), out_dir, count)


def accuracy_of(data: LabelledImages, image_embeddings: np.ndarray, head: Head, logit_scale: float) -> Accuracy:
    """Zero-shot top-1 of precomputed image embeddings against a head of the dataset's classes."""
    top1 = zero_shot_top1(head.logits(image_embeddings, logit_scale), data.labels)
    return Accuracy(dataset=data.name, images=len(data.paths), classes=len(data.classes), top1=round(top1, 6))
