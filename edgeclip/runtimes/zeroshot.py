"""Zero-shot classification: prompt-ensembled label embeddings and one matrix product per image."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from edgeclip.data.images import ImageLike, load_image
from edgeclip.errors import ImageError, UsageError
from edgeclip.runtimes.bundle import Bundle
from edgeclip.runtimes.heads import Head, check_head_name, check_labels
from edgeclip.runtimes.templates import resolve_templates

if TYPE_CHECKING:
    from PIL import Image


def _normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logit scales."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class TextEmbedder(Protocol):
    """What a zero-shot head is built from: a Bundle, or bench's eager model behind the same surface."""

    @property
    def model_id(self) -> str: ...

    def encode_text(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...


def build_zero_shot_head(
    bundle: TextEmbedder,
    labels: Sequence[str],
    templates: str | Sequence[str] = "openai",
    name: str = "zero-shot",
    *,
    progress: bool = False,
) -> Head:
    """Embed every template x label, normalize each, average per label and normalize again (CLIP's ensembling)."""
    labels = check_labels(labels if isinstance(labels, str) else list(labels))
    resolved = resolve_templates(templates)
    prompts = [t.format(label) for label in labels for t in resolved]
    emb = bundle.encode_text(prompts, progress=progress).reshape(len(labels), len(resolved), -1)
    class_emb = _normalize(_normalize(emb).mean(axis=1))
    return Head(check_head_name(name), "zero-shot", labels, resolved, bundle.model_id, class_emb.astype(np.float32))


@dataclass(frozen=True)
class Prediction:
    """The ranked (label, probability) pairs for one input, or why it could not be read."""

    source: str
    ranked: tuple[tuple[str, float], ...]
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.ranked[0][0] if self.ranked else None

    def to_dict(self) -> dict:
        out: dict = {"source": self.source}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["predictions"] = [{"label": label, "probability": p} for label, p in self.ranked]
        return out


def _describe(image: ImageLike) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, np.ndarray):
        return f"array{tuple(image.shape)}"
    return type(image).__name__


class ZeroShotClassifier:
    """Classify images against labels (prompt-ensembled on the fly) or a head stored in the bundle."""

    def __init__(
        self,
        bundle: Bundle,
        labels: Sequence[str] | None = None,
        templates: str | Sequence[str] = "openai",
        head: str | Head | None = None,
    ) -> None:
        if (labels is None) == (head is None):
            raise UsageError("give either labels or a head, not both or neither")
        if isinstance(labels, str):
            raise UsageError(
                f"labels is the string {labels!r}: expected a list of labels, e.g. [{labels!r}] or ['cat', 'dog']"
            )
        self.bundle = bundle
        if isinstance(head, str):
            head = bundle.load_head(head)
        elif head is None:
            head = build_zero_shot_head(bundle, labels or [], templates)
        elif head.model_id != bundle.model_id:
            raise UsageError(f"head {head.name!r} belongs to {head.model_id}, not {bundle.model_id}")
        self.head = head

    @property
    def labels(self) -> tuple[str, ...]:
        return self.head.labels

    def logits(self, images: ImageLike | Sequence[ImageLike], *, batch_size: int = 32) -> np.ndarray:
        """logit_scale x cosine similarity [N, C] between images and the head's classes (plus its adapter's)."""
        emb = self.bundle.encode_image(images, batch_size=batch_size)
        return self.head.logits(emb, self.bundle.logit_scale)

    def probabilities(self, images: ImageLike | Sequence[ImageLike], *, batch_size: int = 32) -> np.ndarray:
        """Softmax over the head's classes [N, C]."""
        return softmax(self.logits(images, batch_size=batch_size))

    def _rank(self, probs: np.ndarray, top_k: int | None) -> tuple[tuple[str, float], ...]:
        order = np.argsort(-probs, kind="stable")[: top_k or len(self.labels)]
        return tuple((self.labels[i], float(probs[i])) for i in order)

    def predict(self, image: ImageLike, top_k: int | None = 5) -> list[tuple[str, float]]:
        """Ranked (label, probability) pairs for one image."""
        return list(self._rank(self.probabilities([image])[0], top_k))

    def iter_predictions(
        self,
        images: Sequence[ImageLike],
        top_k: int | None = 5,
        *,
        skip_bad: bool = False,
        batch_size: int = 32,
    ) -> Iterator[Prediction]:
        """Predictions yielded batch by batch as each finishes, so memory stays flat in the number of images."""
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            decoded: dict[int, Image.Image | ImageError] = {}
            for i, image in enumerate(chunk):
                try:
                    decoded[i] = load_image(image)
                except ImageError as e:
                    if not skip_bad:
                        raise
                    decoded[i] = e
            good = {i: d for i, d in decoded.items() if not isinstance(d, ImageError)}
            probs = self.probabilities(list(good.values()), batch_size=batch_size) if good else None
            rows = {i: row for row, i in enumerate(good)}
            for i, image in enumerate(chunk):
                if probs is not None and i in rows:
                    yield Prediction(_describe(image), self._rank(probs[rows[i]], top_k))
                else:
                    yield Prediction(_describe(image), (), str(decoded[i]))

    def predict_many(
        self,
        images: Sequence[ImageLike],
        top_k: int | None = 5,
        *,
        skip_bad: bool = False,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[Prediction]:
        """Predictions for many images; unreadable ones stop the run, or are reported and skipped with skip_bad."""
        from tqdm.auto import tqdm

        predictions: list[Prediction] = []
        with tqdm(total=len(images), disable=not progress, desc="classify", unit="img", leave=False) as bar:
            for prediction in self.iter_predictions(images, top_k, skip_bad=skip_bad, batch_size=batch_size):
                predictions.append(prediction)
                bar.update(1)
        return predictions
