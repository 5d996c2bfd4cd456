"""Reinforced-dataset distillation (MobileCLIP's multi-modal reinforced training) for any open_clip student.

`reinforce` runs teachers once over images and K augmentations and writes DataCompDR-layout shards;
`train` distills a student from them with (1-λ)·CLIP + λ·KD; `quickstart` runs the whole story on `shapes`.
Modules by job: config (settings), batches (data and the batch stream), kd_targets (what each --loss trains
against), loop (`train`), evaluate (zero-shot top-1), checkpoint (the run folder), shards/tario (the data).
"""

from typing import Any

from edgeclip.distill.augment import AugmentConfig, AugmentParams, apply_params, sample_params
from edgeclip.distill.config import DistillConfig
from edgeclip.distill.kd_targets import list_losses
from edgeclip.distill.loop import DistillResult, train
from edgeclip.distill.shards import DatasetManifest, ReinforcedShards, reinforce
from edgeclip.distill.sources import ImageCaptionSource, list_source_kinds, open_source

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "DatasetManifest",
    "DistillConfig",
    "DistillResult",
    "ImageCaptionSource",
    "ReinforcedShards",
    "apply_params",
    "list_losses",
    "list_source_kinds",
    "open_source",
    "reinforce",
    "sample_params",
    "train",
]


def __getattr__(name: str) -> Any:
    """`TrainResult`, the old name of DistillResult, still resolves (with a DeprecationWarning)."""
    if name == "TrainResult":
        import warnings

        warnings.warn(
            "edgeclip.distill.TrainResult is now edgeclip.distill.DistillResult", DeprecationWarning, stacklevel=2
        )
        return DistillResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
