"""Image-quality agreement metrics: SRCC (Spearman) and PLCC (Pearson, after the usual 4-parameter logistic).

SRCC and Pearson are numpy (tie-averaged ranks, as scipy.stats.spearmanr). The logistic fit that PLCC
conventionally runs first (VQEG: predicted scores mapped to the opinion scale by
f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2) uses scipy.optimize.curve_fit, imported lazily:
`pip install 'edgeclip[metrics]'`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from edgeclip.errors import RuntimeUnavailable, UsageError
from edgeclip.metrics.liveness import average_ranks


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.size != b.size:
        raise UsageError(f"{a.size} predictions but {b.size} reference scores: expected one of each per image")
    if a.size < 3:
        raise UsageError(f"{a.size} score pairs: expected at least 3 for a correlation")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UsageError("scores include NaN or infinity: expected finite numbers")
    return a, b


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's linear correlation; 0 where either side is constant."""
    a, b = _pair(x, y)
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def srcc(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation: Pearson on tie-averaged ranks."""
    a, b = _pair(x, y)
    return pearson(average_ranks(a), average_ranks(b))


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG 4-parameter logistic: b2 at -inf, b1 at +inf, centre b3, slope scale |b4|."""
    return (b1 - b2) / (1.0 + np.exp(-(x - b3) / max(abs(b4), 1e-12))) + b2


@dataclass(frozen=True)
class LogisticFit:
    """Fitted logistic parameters and whether the fit converged (if not, the identity map is used)."""

    params: tuple[float, float, float, float] | None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) if self.params is None else logistic4(np.asarray(x), *self.params)


def fit_logistic4(pred: ArrayLike, mos: ArrayLike) -> LogisticFit:
    """Least-squares fit of the 4-parameter logistic from predictions to opinion scores (scipy)."""
    a, b = _pair(pred, mos)
    try:
        from scipy.optimize import curve_fit
    except ImportError:
        raise RuntimeUnavailable("the logistic fit before PLCC needs scipy: pip install 'edgeclip[metrics]'") from None
    spread = float(a.std()) or 1.0
    start = (float(b.max()), float(b.min()), float(np.median(a)), spread)
    try:
        params, _ = curve_fit(logistic4, a, b, p0=start, maxfev=20000)
    except (RuntimeError, ValueError):  # no convergence: PLCC falls back to the raw predictions
        return LogisticFit(None)
    if not np.isfinite(params).all():
        return LogisticFit(None)
    b1, b2, b3, b4 = (float(p) for p in params)
    return LogisticFit((b1, b2, b3, b4))


def plcc(pred: ArrayLike, mos: ArrayLike, *, logistic: bool = True) -> float:
    """Pearson between opinion scores and predictions, after the 4-parameter logistic fit unless logistic=False."""
    a, b = _pair(pred, mos)
    return pearson(fit_logistic4(a, b)(a) if logistic else a, b)
