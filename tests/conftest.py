"""Shared fixtures: a tiny exported bundle (made once per session) and real photographs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = "EdgeCLIP-Tiny-ViT"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`--backend auto` caches its probe under $XDG_CACHE_HOME: the suite keeps its own, never the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread; one keeps a module's CPU time low on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_random_checkpoint(path: Path, arch: str, seed: int) -> Path:
    """A real open_clip checkpoint of seeded random weights, as safetensors (what users pass to --pretrained)."""
    from safetensors.torch import save_file

    from edgeclip.models.loading import load_model

    model = load_model(arch, random_init=True, seed=seed).model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
