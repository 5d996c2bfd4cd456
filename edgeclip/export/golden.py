"""The export side of golden files: pick the photos, and run the written encoders (or PyTorch) for the embeddings.

The stages themselves (decode, resize, normalize, tokenize) are the runtime's own (edgeclip.runtimes.golden).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from edgeclip.runtimes.golden import GOLDEN_DIR, build_golden
from edgeclip.runtimes.preprocess import PreprocessSpec
from edgeclip.runtimes.tokenizer import Tokenizer

if TYPE_CHECKING:
    from edgeclip.export.options import EncoderFiles, Encoders
    from edgeclip.runtimes.backends import Backend

# scikit-image's bundled photos, landscape and portrait (the cat turned upright) so both crop axes count, and a
# colour zone plate: rings up to the Nyquist frequency, where a resize without antialiasing shows moire at once.
_PHOTOS = (("coffee", 0), ("chelsea", 90))
# Each image's short side is this many times the model's input: a real downscale, while the set stays small
# (docs/ports.md gives the sizes).
SCALE = 1.5


def zone_plate(size: int) -> Image.Image:
    """A square colour zone plate whose ring frequency reaches the Nyquist limit at the edge."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    phase = np.pi / size * (x * x + y * y) / 2
    rgb = np.stack([0.5 + 0.5 * np.cos(phase), 0.5 + 0.5 * np.cos(phase + 2.0), 0.5 - 0.5 * np.cos(phase)], -1)
    return Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB")


def golden_photos(spec: PreprocessSpec) -> list[tuple[bytes, str]]:
    """PNG bytes of the golden images, short side SCALE x the input size; shapes images without scikit-image."""
    short = max(1, round(SCALE * max(spec.image_size)))
    sources: list[tuple[Image.Image, str]] = []
    try:
        from skimage import data as skdata

        for name, turn in _PHOTOS:
            image = Image.fromarray(getattr(skdata, name)()).convert("RGB").rotate(turn, expand=True)
            turned = f", turned {turn} degrees" if turn else ""
            sources.append((image, f"scikit-image data.{name}(){turned}"))
    except ImportError:
        from edgeclip.data.shapes import ShapesDataset

        shapes = ShapesDataset(split="eval", size=2 * short, seed=4321)
        sources = [(Image.fromarray(shapes[i].image), f"edgeclip shapes eval image {i}") for i in range(2)]
    out = []
    for image, source in sources:
        width, height = image.size
        ratio = short / min(width, height)
        size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        out.append((_png(image.resize(size, Image.Resampling.LANCZOS)), f"{source}, resized to {size[0]}x{size[1]}"))
    out.append((_png(zone_plate(short)), f"colour zone plate {short}x{short} (synthetic)"))
    return out


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_golden(
    staging: Path,
    encoders: Encoders,
    files: EncoderFiles,
    tokenizer: Tokenizer,
    runners: Mapping[str, Backend | None],
    backend_name: str,
) -> dict[str, Any]:
    """Write golden/ into a bundle being exported; embeddings from the written files where they ran here.

    `runners` holds the backend that ran each written encoder at the parity check (None where it cannot run here,
    e.g. CoreML on Linux): the golden embeddings are then the reparameterized PyTorch encoder's, and say so.
    """
    inputs = {"image": files.image.inputs[0], "text": files.text.inputs[0]}
    ran_here = all(runners.get(role) is not None for role in inputs)

    def embed(role: str, batch: np.ndarray) -> np.ndarray:
        runner = runners.get(role)
        if runner is not None and ran_here:
            # One row at a time: fixed-batch targets (batch 1 by default) take that, and every other target too.
            rows = [np.asarray(runner.run({inputs[role].name: batch[i : i + 1]})[0]) for i in range(len(batch))]
            return np.concatenate(rows).astype(np.float32)
        import torch

        module = encoders.image if role == "image" else encoders.text
        with torch.no_grad():
            return module(torch.from_numpy(batch)).float().numpy()

    if ran_here:
        try:
            runtime = f"{backend_name} {version(backend_name)}"
        except PackageNotFoundError:
            runtime = backend_name
        source = f"the written encoder files run by {runtime}"
    else:
        import torch

        source = f"PyTorch {torch.__version__} (reparameterized eval model): the written files cannot run here"
    spec = encoders.preprocess_spec()
    return build_golden(
        staging / GOLDEN_DIR,
        golden_photos(spec),
        spec,
        tokenizer,
        inputs["image"],
        inputs["text"],
        embed,
        source,
    )
