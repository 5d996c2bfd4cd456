"""Shared fixtures: a tiny exported bundle (made once per session) and real photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = "EdgeCLIP-Tiny-ViT"


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photographs shipped with scikit-image."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("astronaut", "coffee", "chelsea")}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX bundle of the tiny architecture with random weights, exported once for the session."""
    from edgeclip.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny.edgeclip"
    export_bundle(TINY, output=out, random_init=True)
    return out


@pytest.fixture()
def tiny_bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may modify."""
    import shutil

    dst = tmp_path / "copy.edgeclip"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.fixture()
def photo_files(photos: dict[str, Image.Image], tmp_path: Path) -> list[Path]:
    """The photographs written as JPEG files."""
    paths = []
    for name, image in photos.items():
        path = tmp_path / f"{name}.jpg"
        image.save(path, quality=92)
        paths.append(path)
    return paths


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
