"""One zero-shot top-1: bench's accuracy column and distill's evaluations both come from edgeclip.metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeclip.errors import UsageError
from edgeclip.metrics.zeroshot import zero_shot_top1


def test_top1_counts_rows_whose_best_class_is_the_label() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert zero_shot_top1(logits, [1, 0, 2, 2]) == 0.75
    assert zero_shot_top1(logits, np.array([0, 1, 0, 1])) == 0.0
    with pytest.raises(UsageError, match=r"one label per image, got logits \(4, 3\) and labels \(3,\)"):
        zero_shot_top1(logits, [1, 0, 2])
    with pytest.raises(UsageError, match="no images"):
        zero_shot_top1(np.zeros((0, 3)), [])


def test_bench_accuracy_and_distill_evaluation_use_the_one_implementation() -> None:
    """Neither package keeps a copy: the name exists once, and both modules call it."""
    import edgeclip.bench.accuracy as bench_accuracy
    import edgeclip.distill.evaluate as distill_evaluate
    from edgeclip.bench.accuracy import LabelledImages, accuracy_of
    from edgeclip.runtimes.heads import Head

    assert bench_accuracy.zero_shot_top1 is zero_shot_top1 and distill_evaluate.zero_shot_top1 is zero_shot_top1
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((3, 8)).astype(np.float32)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    images = weights[[0, 1, 2, 2, 1]] + 0.01 * rng.standard_normal((5, 8)).astype(np.float32)
    paths = tuple(Path(f"{i}.png") for i in range(5))
    data = LabelledImages("toy", Path("toy"), paths, (0, 1, 2, 0, 1), ("a", "b", "c"))
    head = Head("toy", "zero-shot", ("a", "b", "c"), ("{}",), "toy-model", weights)
    accuracy = accuracy_of(data, images, head, 100.0)
    assert accuracy.top1 == zero_shot_top1(head.logits(images, 100.0), data.labels) == 0.8
