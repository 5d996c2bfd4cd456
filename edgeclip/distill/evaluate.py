"""Zero-shot evaluation during training: labelled splits, and the student behind the deployed classifier's surface.

Evaluation runs the very code a deployed bundle runs (`edgeclip.runtimes.zeroshot`) on the same numpy
preprocessing, so a training-time accuracy is the bundle's accuracy up to export parity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.data.images import ImageLike, image_list
from edgeclip.distill.sources import open_shapes
from edgeclip.errors import DatasetError
from edgeclip.metrics.zeroshot import zero_shot_top1
from edgeclip.models.loading import ClipModel


class TorchEncoders:
    """A PyTorch model behind the surface ZeroShotClassifier uses (encode_image/encode_text/logit_scale/model_id)."""

    def __init__(self, model: ClipModel, architecture: str, preprocess: Any, device: torch.device) -> None:
        import open_clip

        self.model = model
        self.architecture = architecture
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.device = device
        self.model_id = f"{architecture}@training"

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    @torch.no_grad()
    def encode_image(
        self, images: ImageLike | Sequence[ImageLike], *, batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        from edgeclip.runtimes.preprocess import preprocess

        items = image_list(images)
        out = []
        for start in range(0, len(items), batch_size):
            x = torch.from_numpy(preprocess(items[start : start + batch_size], self.preprocess)).to(self.device)
            out.append(self.model.encode_image(x, normalize=True).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        items = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for start in range(0, len(items), batch_size):
            tokens = self.tokenizer(items[start : start + batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out)


@dataclass(frozen=True)
class EvalSet:
    """A labelled split for zero-shot top-1: images, their class index, class names and prompt templates."""

    name: str
    images: list[ImageLike]
    targets: np.ndarray
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    also: tuple[EvalSet, ...] = ()  # further labelings of the same images, reported beside the main one


def open_eval_set(spec: str, limit: int = 0) -> EvalSet:
    """`shapes[:eval[:count[:size]]]`, or a folder with one subfolder of images per class."""
    from edgeclip.data.images import list_images

    if spec == "shapes" or spec.startswith("shapes:"):
        from edgeclip.data.shapes import CLASS_PROMPT

        parts = spec.split(":")
        spec = ":".join([parts[0], parts[1] if len(parts) > 1 and parts[1] else "eval", *parts[2:]])
        source = open_shapes(spec)
        n = min(len(source), limit) if limit else len(source)
        items = [source.dataset[i] for i in range(n)]
        images: list[ImageLike] = [s.image for s in items]
        colors = EvalSet("color", images, np.array([s.color_label for s in items]), source.dataset.colors,
                         ("a photo of a {} shape",))  # fmt: skip
        return EvalSet(
            spec, images, np.array([s.label for s in items]), source.dataset.classes, (CLASS_PROMPT,), (colors,)
        )
    folder = Path(spec)
    if not folder.is_dir():
        raise DatasetError(f"--eval {spec}: expected shapes:eval[:count] or a folder with one subfolder per class")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(f"--eval {spec}: found {len(classes)} class subfolder(s), expected at least 2")
    images, targets = [], []
    for c, name in enumerate(classes):
        for path in list_images(folder / name):
            images.append(path)
            targets.append(c)
    if limit:
        keep = np.random.default_rng(0).permutation(len(images))[:limit]
        images, targets = [images[i] for i in sorted(keep)], [targets[i] for i in sorted(keep)]
    return EvalSet(spec, images, np.array(targets), tuple(classes), ("a photo of a {}.",))


def eval_set_logits(encoders: Any, eval_set: EvalSet) -> np.ndarray:
    """Class scores [images, classes] of a zero-shot head built from the split's labels (edgeclip.runtimes.zeroshot).

    `encoders` is anything ZeroShotClassifier takes: the training student (TorchEncoders) or a loaded bundle.
    """
    from edgeclip.runtimes.zeroshot import ZeroShotClassifier

    classifier = ZeroShotClassifier(encoders, labels=list(eval_set.labels), templates=list(eval_set.templates))
    return classifier.logits(eval_set.images, batch_size=128)


def evaluate_top1(encoders: Any, eval_set: EvalSet) -> dict[str, float]:
    """Zero-shot top-1 on the split (`top1`) and on each further labelling of its images (`top1_<name>`)."""
    scores = {"top1": zero_shot_top1(eval_set_logits(encoders, eval_set), eval_set.targets)}
    for other in eval_set.also:
        scores[f"top1_{other.name}"] = zero_shot_top1(eval_set_logits(encoders, other), other.targets)
    return scores


__all__ = ["EvalSet", "TorchEncoders", "eval_set_logits", "evaluate_top1", "open_eval_set"]
