"""Parity at export time: the exported encoders against PyTorch on real photos and varied strings.

The torch side only (running the PyTorch reference, the sample inputs); the statistics and the floors are
edgeclip.metrics.parity's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from edgeclip.metrics.parity import cosine_rows, parity_report
from edgeclip.runtimes.backends import Backend
from edgeclip.runtimes.manifest import ParityReport

SAMPLE_TEXTS = (
    "a photo of a cat",
    "a diagram",
    "A DOG playing in the snow, running fast!!",
    "an astronaut in a white suit holding a flag",
    "a cup of coffee on a saucer",
    "café crème & croissant — 2 €",
    "一只猫坐在窗台上",
    "🚀 rocket launch at night 🌙",
    "",
    "red triangle on a striped background",
    "the quick brown fox jumps over the lazy dog " * 12,
    "it's a hexagon; they're blue & 'green'",
)
_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def named_sample_images(shapes_count: int = 4) -> list[tuple[str, Image.Image]]:
    """Real photographs from scikit-image where it is installed, plus images of the built-in shapes dataset, each
    with the name a parity failure reports it by."""
    from edgeclip.data.shapes import ShapesDataset

    images = []
    try:
        from skimage import data as skdata

        images += [(f"photo {n}", Image.fromarray(getattr(skdata, n)()).convert("RGB")) for n in _SKIMAGE_PHOTOS]
    except ImportError:
        pass
    shapes = ShapesDataset(split="eval", size=96, seed=1234)
    images += [(f"shapes eval image {i}", Image.fromarray(shapes[i].image)) for i in range(shapes_count)]
    return images


def sample_images(shapes_count: int = 4) -> list[Image.Image]:
    """The parity images without their names."""
    return [image for _, image in named_sample_images(shapes_count)]


def sample_text_names() -> list[str]:
    """The parity strings as a failure names them: quoted, long ones cut."""
    return [f"text {t[:40] + '…' if len(t) > 40 else t!r}" for t in SAMPLE_TEXTS]


@dataclass(frozen=True)
class Measured:
    """An encoder's parity record, and the cosine of each sample (to name the worst when the floor is missed)."""

    report: ParityReport
    cosines: np.ndarray

    def worst(self, names: list[str]) -> str:
        """The sample furthest from PyTorch, as `photo coffee (0.982565)`."""
        i = int(np.argmin(self.cosines))
        return f"{names[i] if i < len(names) else f'sample {i}'} ({self.cosines[i]:.6f})"


def measure(
    reference: nn.Module, backend: Backend, input_name: str, batch: np.ndarray, reference_name: str
) -> Measured:
    """Run one batch through the PyTorch reference and the exported encoder and compare the embeddings."""
    with torch.no_grad():
        expected = reference(torch.from_numpy(batch)).float().numpy()
    actual = np.asarray(backend.run({input_name: batch})[0], dtype=np.float32)
    return Measured(parity_report(expected, actual, reference_name), cosine_rows(expected, actual))
