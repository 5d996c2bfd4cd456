"""Reinforced-dataset distillation (MobileCLIP's multi-modal reinforced training) for any open_clip student.

`reinforce` runs teachers once over images and K augmentations and writes DataCompDR-layout shards;
`train` distills a student from them with (1-λ)·CLIP + λ·KD; `quickstart` runs the whole story on `shapes`.
"""

from edgeclip.distill.augment import AugmentConfig, AugmentParams, apply_params, sample_params
from edgeclip.distill.shards import DatasetManifest, ReinforcedShards, reinforce
from edgeclip.distill.sources import ImageCaptionSource, list_source_kinds, open_source
from edgeclip.distill.train import DistillConfig, TrainResult, train

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "DatasetManifest",
    "DistillConfig",
    "ImageCaptionSource",
    "ReinforcedShards",
    "TrainResult",
    "apply_params",
    "list_source_kinds",
    "open_source",
    "reinforce",
    "sample_params",
    "train",
]
