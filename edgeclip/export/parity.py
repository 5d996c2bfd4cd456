"""Parity at export time: the exported encoders against PyTorch on real photos and varied strings.

The torch side only (running the PyTorch reference, the sample inputs); the statistics and the floors are
edgeclip.metrics.parity's.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from edgeclip.metrics.parity import parity_report
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


def sample_images(shapes_count: int = 4) -> list[Image.Image]:
    """Real photographs from scikit-image where it is installed, plus images of the built-in shapes dataset."""
    from edgeclip.data.shapes import ShapesDataset

    images = []
    try:
        from skimage import data as skdata

        images += [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in _SKIMAGE_PHOTOS]
    except ImportError:
        pass
    shapes = ShapesDataset(split="eval", size=96, seed=1234)
    images += [Image.fromarray(shapes[i].image) for i in range(shapes_count)]
    return images


def measure(
    reference: nn.Module, backend: Backend, input_name: str, batch: np.ndarray, reference_name: str
) -> ParityReport:
    """Run one batch through the PyTorch reference and the exported encoder and compare the embeddings."""
    with torch.no_grad():
        expected = reference(torch.from_numpy(batch)).float().numpy()
    actual = np.asarray(backend.run({input_name: batch})[0], dtype=np.float32)
    return parity_report(expected, actual, reference_name)
