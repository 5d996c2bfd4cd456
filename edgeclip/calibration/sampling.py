"""Which images go into a calibration set: a seeded random draw, or farthest-point sampling for diversity."""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgeclip.errors import UsageError

STRATEGIES = ("random", "diverse")
_THUMB = 8  # thumbnail side for the cheap features: colour layout at 8x8 plus a colour histogram


def image_features(image: Image.Image) -> np.ndarray:
    """Cheap, decode-time features of an RGB image: an 8x8 colour thumbnail, a 4x4x4 colour histogram, edge energy.

    Good enough to spread a calibration set over lighting, colour and layout without running a model.
    """
    thumb = np.asarray(image.resize((_THUMB, _THUMB), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    small = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    bins = np.floor(small * 3.999).astype(np.int64)
    hist = np.bincount((bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]).ravel(), minlength=64).astype(np.float32)
    hist /= hist.sum()
    grey = small.mean(-1)
    edges = np.array([np.abs(np.diff(grey, axis=0)).mean(), np.abs(np.diff(grey, axis=1)).mean()], np.float32)
    return np.concatenate([thumb.ravel() / np.sqrt(thumb.size), np.sqrt(hist), edges * 4])


def farthest_point(features: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of `count` rows, each the farthest from those already chosen (greedy); the seed picks the first."""
    n = features.shape[0]
    feats = features.astype(np.float64)
    first = int(np.random.default_rng(seed).integers(n))
    chosen = [first]
    dist = ((feats - feats[first]) ** 2).sum(-1)
    for _ in range(count - 1):
        nxt = int(np.argmax(dist))  # ties go to the lowest index: deterministic
        chosen.append(nxt)
        dist = np.minimum(dist, ((feats - feats[nxt]) ** 2).sum(-1))
    return np.array(chosen, dtype=np.int64)


def select(count: int, total: int, strategy: str, seed: int, features: np.ndarray | None = None) -> np.ndarray:
    """Indices into `total` candidates: a seeded random order, or farthest-point over `features` ("diverse")."""
    if strategy not in STRATEGIES:
        raise UsageError(f"calibration strategy {strategy!r} is unknown: expected one of {', '.join(STRATEGIES)}")
    count = min(count, total)
    if strategy == "random":
        return np.random.default_rng(seed).permutation(total)[:count]
    if features is None or features.shape[0] != total:
        raise UsageError("the diverse strategy needs one feature row per candidate image")
    return farthest_point(features, count, seed)
