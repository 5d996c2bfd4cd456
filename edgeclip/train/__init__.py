"""Torch-side training for the task runtimes: the QualiCLIP-style opinion-unaware quality trainer."""

from edgeclip.train.quality import QualityTrainConfig, TrainResult, train_quality

__all__ = ["QualityTrainConfig", "TrainResult", "train_quality"]
