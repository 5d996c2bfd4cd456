"""What each `--loss` trains against, in a registry keyed by loss: teacher embeddings read from the shards,
made by teachers run online, or none (plain CLIP).

A member is a builder registered with `@register_kd_targets(name, uses_teachers=...)`; it gets the dataset
manifest and the augmentation interpolation once, and returns the function the loop calls per batch:
`(items, captions, device) -> (teacher image embeddings [B, D] | None, teacher text embeddings per caption
group | None)`. `captions` holds the real captions, then the synthetic ones where the run uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgeclip.errors import DatasetError, UsageError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from edgeclip.distill.augment import AugmentParams
    from edgeclip.distill.batches import TrainItem
    from edgeclip.distill.shards import DatasetManifest

Targets = tuple["torch.Tensor | None", "list[torch.Tensor] | None"]
TargetFn = Callable[[Sequence["TrainItem"], list[list[str]], "torch.device"], Targets]
Builder = Callable[["DatasetManifest | None", str], TargetFn]


@dataclass(frozen=True)
class KDTargets:
    """One `--loss`: whether it distills from teachers (and so needs reinforced shards) and how targets are made."""

    loss: str
    uses_teachers: bool
    help: str
    build: Builder


_REGISTRY: dict[str, KDTargets] = {}


def register_kd_targets(loss: str, *, uses_teachers: bool, help: str) -> Callable[[Builder], Builder]:
    """Register the target builder of one `--loss`; a second registration of the same name is refused."""

    def add(build: Builder) -> Builder:
        if loss in _REGISTRY:
            raise ValueError(f"--loss {loss!r} is already registered (by {_REGISTRY[loss].build.__qualname__})")
        _REGISTRY[loss] = KDTargets(loss, uses_teachers, help, build)
        return build

    return add


def list_losses() -> list[str]:
    """The registered `--loss` names, in registration order."""
    return list(_REGISTRY)


def get_kd_targets(loss: str) -> KDTargets:
    """The registry entry of `loss`, or a one-line UsageError naming the known ones."""
    try:
        return _REGISTRY[loss]
    except KeyError:
        raise UsageError(f"--loss must be one of {', '.join(_REGISTRY)}, got {loss!r}") from None


def _stack(items: Sequence[TrainItem], field: str, device: torch.device) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.stack([getattr(it, field) for it in items])).to(device)


@register_kd_targets("reinforced", uses_teachers=True, help="stored teacher embeddings")
def stored_targets(manifest: DatasetManifest | None, interpolation: str) -> TargetFn:
    """The embeddings the teachers wrote into the shards for the replayed view and the drawn captions."""

    def targets(items: Sequence[TrainItem], captions: list[list[str]], device: torch.device) -> Targets:
        text_fields = ("teacher_text", "teacher_syn")[: len(captions)]
        return _stack(items, "teacher_image", device), [_stack(items, f, device) for f in text_fields]

    return targets


@register_kd_targets("clip", uses_teachers=False, help="plain contrastive")
def no_targets(manifest: DatasetManifest | None, interpolation: str) -> TargetFn:
    """Plain CLIP: nothing to distill from."""

    def targets(items: Sequence[TrainItem], captions: list[list[str]], device: torch.device) -> Targets:
        return None, None

    return targets


@register_kd_targets("online", uses_teachers=True, help="teachers run every step")
def online_targets(manifest: DatasetManifest | None, interpolation: str) -> TargetFn:
    """The shards' teachers loaded again and run on every batch (checked to be the very weights the shards used)."""
    from edgeclip.distill.teachers import Teacher, TeacherEnsemble

    if manifest is None:
        raise UsageError("--loss online needs reinforced shards as --data (their manifest names the teachers)")
    teachers = []
    for info in manifest.teachers:
        teacher = Teacher(info.architecture, info.pretrained)
        if teacher.info.weights_sha256 != info.weights_sha256:
            raise DatasetError(
                f"teacher {info.architecture} at {info.pretrained} is not the one the shards were made with"
            )
        teachers.append(teacher)
    ensemble = TeacherEnsemble(teachers)

    def targets(items: Sequence[TrainItem], captions: list[list[str]], device: torch.device) -> Targets:
        images = ensemble.encode_images(*_online_inputs(items), interpolation)
        return images.to(device), [ensemble.encode_texts(group).to(device) for group in captions]

    return targets


__all__ = ["KDTargets", "get_kd_targets", "list_losses", "register_kd_targets"]


def _online_inputs(items: Sequence[TrainItem]) -> tuple[list[Image.Image], list[AugmentParams]]:
    """Each item's source image and augmentation, which teachers run online replay (online batches carry both)."""
    images: list[Image.Image] = []
    params: list[AugmentParams] = []
    for it in items:
        if it.source_image is None or it.params is None:
            raise DatasetError(f"training item {it.uid} has no source image and augmentation for the online teachers")
        images.append(it.source_image)
        params.append(it.params)
    return images, params
