"""Torch-side training for the task runtimes: the QualiCLIP-style opinion-unaware quality trainer."""

from edgeclip._compat import renamed
from edgeclip.train.quality import QualityTrainConfig, QualityTrainResult, train_quality

__all__ = ["QualityTrainConfig", "QualityTrainResult", "train_quality"]


__getattr__ = renamed(__name__, "TrainResult", "QualityTrainResult", QualityTrainResult)
