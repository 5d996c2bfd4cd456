"""No-reference image quality on the device, CLIP-IQA style: antonym prompt pairs scored by softmax.

Each attribute is a pair of poles ("Good photo." / "Bad photo.", "Sharp photo." / "Blurry photo.", ...); an
image's attribute score is P(good pole) from a softmax over the pair at the bundle's logit scale, in [0, 1].
The overall score is the `quality` attribute's (CLIP-IQA's "Good photo."/"Bad photo." pair) or, with
overall="mean", the mean over all attributes (pyiqa's averaging). The pairs live in a head of kind "quality"
whose labels are "<attribute>:good" and "<attribute>:bad", one softmax group per attribute, so the device needs
no text encoder and the poles can never be swapped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.data.images import ImageLike, load_image
from edgeclip.errors import ImageError, UsageError
from edgeclip.runtimes.bundle import Bundle
from edgeclip.runtimes.heads import Head, build_prompt_head, resolve_task_head
from edgeclip.runtimes.zeroshot import _describe

HEAD_NAME = "quality"
HEAD_KIND = "quality"
OVERALL = "quality"


@dataclass(frozen=True)
class Attribute:
    """One quality attribute: its name and the prompts of its good and bad poles."""

    name: str
    good: tuple[str, ...]
    bad: tuple[str, ...]


# CLIP-IQA's antonym pairs (Wang et al., 2023), one per attribute the issue names.
QUALITY_ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(OVERALL, ("Good photo.",), ("Bad photo.",)),
    Attribute("sharpness", ("Sharp photo.",), ("Blurry photo.",)),
    Attribute("noise", ("Clean photo.",), ("Noisy photo.",)),
    Attribute("exposure", ("Bright photo.",), ("Dark photo.",)),
    Attribute("contrast", ("High contrast photo.",), ("Low contrast photo.",)),
    Attribute("colourfulness", ("Colorful photo.",), ("Dull photo.",)),
)


def build_quality_head(
    bundle: Bundle,
    attributes: Sequence[Attribute] = QUALITY_ATTRIBUTES,
    name: str = HEAD_NAME,
    *,
    progress: bool = False,
) -> Head:
    """Embed every attribute's good and bad prompts into a quality head (one softmax group per attribute)."""
    if not attributes:
        raise UsageError("a quality head needs at least one attribute")
    prompts: dict[str, tuple[str, ...]] = {}
    groups: list[str] = []
    for attribute in attributes:
        prompts[f"{attribute.name}:good"] = attribute.good
        prompts[f"{attribute.name}:bad"] = attribute.bad
        groups += [attribute.name, attribute.name]
    positives = tuple(f"{a.name}:good" for a in attributes)
    return build_prompt_head(bundle, name, HEAD_KIND, prompts, groups=groups, positives=positives, progress=progress)


@dataclass(frozen=True)
class QualityResult:
    """The overall score in [0, 1] (higher is better) and each attribute's score, or why the image was skipped."""

    source: str
    score: float | None
    attributes: dict[str, float]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["score"] = self.score
            out["attributes"] = self.attributes
        return out


class QualityScorer:
    """Score image quality through any backend a bundle has, from a quality head (stored or built from prompts)."""

    def __init__(self, bundle: Bundle, head: str | Head | None = None, *, overall: str = OVERALL) -> None:
        self.bundle = bundle
        self.head = resolve_task_head(bundle, head, HEAD_NAME, HEAD_KIND, build_quality_head)
        groups = self.head.group_slices()
        names = list(dict.fromkeys(self.head.groups))
        if not names or any(len(idx) != 2 for idx in groups) or len(self.head.positives) != len(groups):
            raise UsageError(f"head {self.head.name!r} is not a set of good/bad pairs with one good label each")
        self.attributes = tuple(names)
        self.good_index = np.array([self.head.labels.index(p) for p in self.head.positives])
        if [self.head.groups[i] for i in self.good_index] != names:
            raise UsageError(f"head {self.head.name!r}: its good labels are not one per attribute in order")
        if overall != "mean" and overall not in names:
            raise UsageError(f"overall score {overall!r} is not allowed: expected 'mean' or one of {', '.join(names)}")
        self.overall = overall

    def attribute_scores(self, images: ImageLike | Sequence[ImageLike], *, batch_size: int = 32) -> np.ndarray:
        """P(good pole) per attribute [N, A], in `self.attributes` order."""
        emb = self.bundle.encode_image(images, batch_size=batch_size)
        return self.head.probabilities(emb, self.bundle.logit_scale)[:, self.good_index]

    def scores(self, images: ImageLike | Sequence[ImageLike], *, batch_size: int = 32) -> np.ndarray:
        """The overall score [N] of each image."""
        per = self.attribute_scores(images, batch_size=batch_size)
        if self.overall == "mean":
            return per.mean(axis=1)
        return per[:, self.attributes.index(self.overall)]

    def score(self, image: ImageLike) -> QualityResult:
        """Overall and per-attribute scores of one image."""
        return self.score_many([image])[0]

    def score_many(
        self, images: Sequence[ImageLike], *, skip_bad: bool = False, batch_size: int = 32, progress: bool = False
    ) -> list[QualityResult]:
        """Results for many images; unreadable ones stop the run, or are reported and skipped with skip_bad."""
        from tqdm.auto import tqdm

        results: list[QualityResult] = []
        with tqdm(total=len(images), disable=not progress, desc="quality", unit="img", leave=False) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                decoded: list[Any] = []
                for image in chunk:
                    try:
                        decoded.append(load_image(image))
                    except ImageError as e:
                        if not skip_bad:
                            raise
                        decoded.append(e)
                good = [d for d in decoded if not isinstance(d, ImageError)]
                per = self.attribute_scores(good) if good else np.zeros((0, len(self.attributes)))
                row = 0
                for image, item in zip(chunk, decoded, strict=True):
                    if isinstance(item, ImageError):
                        results.append(QualityResult(_describe(image), None, {}, str(item)))
                        continue
                    values = per[row]
                    row += 1
                    overall = values.mean() if self.overall == "mean" else values[self.attributes.index(self.overall)]
                    attributes = {a: float(v) for a, v in zip(self.attributes, values, strict=True)}
                    results.append(QualityResult(_describe(image), float(overall), attributes))
                bar.update(len(chunk))
        return results


def read_scores_csv(path: Path) -> tuple[list[Path], np.ndarray, list[int]]:
    """(image paths, opinion scores, line numbers) from a CSV of `image,score` rows; paths relative to the CSV.

    A first line whose score column is not a number is a header. Every problem names its line.
    """
    import csv
    import math

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: expected a CSV of image,score rows") from None
    images: list[Path] = []
    scores: list[float] = []
    lines: list[int] = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise UsageError(f"{path} line {number}: {len(row)} column(s): expected image path and score")
        name, value = row[0].strip(), row[1].strip()
        try:
            score = float(value)
        except ValueError:
            if number == 1:
                continue  # a header
            raise UsageError(f"{path} line {number}: score {value!r} is not a number") from None
        if not math.isfinite(score):
            raise UsageError(f"{path} line {number}: score {value!r} is not a finite number")
        image = Path(name) if Path(name).is_absolute() else path.parent / name
        if not image.is_file():
            raise UsageError(f"{path} line {number}: image {name} does not exist (looked for {image})")
        images.append(image)
        scores.append(score)
        lines.append(number)
    if len(images) < 3:
        raise UsageError(f"{path} has {len(images)} scored image(s): expected at least 3 for a correlation")
    return images, np.array(scores, dtype=np.float64), lines


def evaluate_csv(
    scorer: QualityScorer, path: Path, *, skip_bad: bool = False, batch_size: int = 32, progress: bool = False
) -> dict[str, Any]:
    """SRCC and PLCC (raw and after the 4-parameter logistic) between the scorer and a CSV's opinion scores."""
    from edgeclip.metrics.quality import plcc, srcc

    images, mos, lines = read_scores_csv(path)
    results = scorer.score_many(images, skip_bad=True, batch_size=batch_size, progress=progress)
    bad = [(line, r.error) for line, r in zip(lines, results, strict=True) if r.error is not None]
    if bad and not skip_bad:
        raise ImageError(f"{path} line {bad[0][0]}: {bad[0][1]}")
    keep = [i for i, r in enumerate(results) if r.error is None]
    predicted = np.array([results[i].score for i in keep], dtype=np.float64)
    reference = mos[keep]
    return {
        "csv": str(path),
        "head": scorer.head.name,
        "overall": scorer.overall,
        "images": len(keep),
        "skipped": [{"line": line, "error": error} for line, error in bad],
        "srcc": srcc(predicted, reference),
        "plcc": plcc(predicted, reference),
        "plcc_raw": plcc(predicted, reference, logistic=False),
    }
