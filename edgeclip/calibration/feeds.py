"""The one calibration protocol, an iterable of `{input_name: batch}` dicts, and its ONNX Runtime adapter."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np


def feeds(inputs: Mapping[str, np.ndarray], batch_size: int = 1) -> list[dict[str, np.ndarray]]:
    """Cut named arrays (same first dimension) into feed dicts of `batch_size` rows, in order."""
    lengths = {name: len(arr) for name, arr in inputs.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"calibration inputs differ in length: {lengths}")
    n = next(iter(lengths.values()), 0)
    return [
        {name: np.ascontiguousarray(arr[i : i + batch_size]) for name, arr in inputs.items()}
        for i in range(0, n, batch_size)
    ]


def split_held_out(n: int, held_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (calibration, held-out) index arrays over `n` rows, the held-out ones drawn by seed."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


class OrtCalibrationReader:
    """ONNX Runtime's CalibrationDataReader contract (`get_next()` -> feed or None, `rewind()`) over the protocol."""

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._batches = [dict(b) for b in batches]
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._batches)
