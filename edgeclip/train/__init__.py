"""Torch-side training for the task runtimes: the QualiCLIP-style opinion-unaware quality trainer."""

from typing import Any

from edgeclip.train.quality import QualityTrainConfig, QualityTrainResult, train_quality

__all__ = ["QualityTrainConfig", "QualityTrainResult", "train_quality"]


def __getattr__(name: str) -> Any:
    """`TrainResult`, the old name of QualityTrainResult, still resolves (with a DeprecationWarning)."""
    if name == "TrainResult":
        import warnings

        warnings.warn(
            "edgeclip.train.TrainResult is now edgeclip.train.QualityTrainResult", DeprecationWarning, stacklevel=2
        )
        return QualityTrainResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
