"""Zero-shot top-1: the one implementation behind bench's accuracy column and distill's evaluations (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeclip.errors import UsageError


def zero_shot_top1(logits: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Share of rows whose highest-scoring class is their label (`logits` is [images, classes])."""
    scores = np.asarray(logits)
    targets = np.asarray(labels)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise UsageError(
            f"zero-shot top-1 needs logits [images, classes] and one label per image, "
            f"got logits {scores.shape} and labels {targets.shape}"
        )
    if scores.shape[0] == 0:
        raise UsageError("zero-shot top-1 of no images is undefined")
    return float(np.mean(scores.argmax(axis=1) == targets))
