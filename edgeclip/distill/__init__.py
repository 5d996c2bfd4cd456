"""Reinforced-dataset distillation (MobileCLIP's multi-modal reinforced training) for any open_clip student.

`reinforce` runs teachers once over images and K augmentations and writes DataCompDR-layout shards;
`train` distills a student from them with (1-λ)·CLIP + λ·KD; `quickstart` runs the whole story on `shapes`.
Modules by job: config (settings), batches (data and the batch stream), kd_targets (what each --loss trains
against), loop (`train`), evaluate (zero-shot top-1), checkpoint (the run folder), shards/tario (the data).
"""

from edgeclip._compat import renamed
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


__getattr__ = renamed(__name__, "TrainResult", "DistillResult", DistillResult)
