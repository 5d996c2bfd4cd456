"""Retrieval recall@k in both directions (text→image, image→text), as CLIP papers and clip_benchmark report it.

A query counts as found at k when a correct item is among the k highest-scoring ones. The rank of an item is the
number of items scoring strictly higher, so exact ties count in the query's favour (with real-valued embeddings
they do not happen).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeclip.errors import UsageError

DEFAULT_KS = (1, 5, 10)


def _check(similarity: np.ndarray, caption_image: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(similarity, dtype=np.float64)
    owner = np.asarray(caption_image, dtype=np.int64)
    if sim.ndim != 2:
        raise UsageError(f"similarity has shape {sim.shape}: expected [captions, images]")
    if owner.shape != (sim.shape[0],):
        raise UsageError(f"{owner.size} caption owners for {sim.shape[0]} captions: expected one per caption")
    if owner.size and (owner.min() < 0 or owner.max() >= sim.shape[1]):
        raise UsageError(f"a caption names image {int(owner.max())}, but there are {sim.shape[1]} images")
    if sim.shape[1] and np.bincount(owner, minlength=sim.shape[1]).min() == 0:
        raise UsageError("an image has no caption: expected at least one caption per image")
    return sim, owner


def text_to_image_ranks(similarity: np.ndarray, caption_image: Sequence[int]) -> np.ndarray:
    """Rank (0 = first) of each caption's own image among all images."""
    sim, owner = _check(similarity, caption_image)
    own = sim[np.arange(len(owner)), owner]
    return (sim > own[:, None]).sum(axis=1)


def image_to_text_ranks(similarity: np.ndarray, caption_image: Sequence[int]) -> np.ndarray:
    """Rank (0 = first) of each image's best-placed own caption among all captions."""
    sim, owner = _check(similarity, caption_image)
    by_image = sim.T  # [images, captions]
    ranks = np.full(sim.shape[1], np.iinfo(np.int64).max, dtype=np.int64)
    for c, image in enumerate(owner):
        rank = int((by_image[image] > by_image[image, c]).sum())
        ranks[image] = min(ranks[image], rank)
    return ranks


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Fraction of queries whose rank is below k, for each k."""
    ranks = np.asarray(ranks)
    if not ranks.size:
        raise UsageError("no queries: expected at least one")
    return {int(k): float((ranks < k).mean()) for k in ks}


def retrieval_recall(
    similarity: np.ndarray, caption_image: Sequence[int], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict[int, float]]:
    """recall@k text→image and image→text from a [captions, images] similarity matrix and each caption's image."""
    return {
        "text_to_image": recall_at_k(text_to_image_ranks(similarity, caption_image), ks),
        "image_to_text": recall_at_k(image_to_text_ranks(similarity, caption_image), ks),
    }
