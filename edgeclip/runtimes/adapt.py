"""Training-free adaptation on the device: a Gaussian discriminant analysis (GDA) head from a few labelled shots.

After "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation" (Wang et al., ICLR 2024): class means
mu_k and one shared covariance Sigma of the image embeddings give a linear classifier with no training,
W_k = Sigma^-1 mu_k and b_k = -1/2 mu_k^T Sigma^-1 mu_k + log p_k, whose logits are added, times alpha, to the
zero-shot logits. The covariance is shrunk towards a scaled identity, (1 - l) Sigma + l (tr Sigma / D) I: a
few shots in hundreds of dimensions give a singular Sigma otherwise. Priors are equal (how many shots were
collected says nothing about how often a class occurs). Unless given, alpha and l are chosen together by
stratified cross-validation on the shots (lowest held-out log loss; l from a grid that includes the Ledoit-Wolf
estimate, which alone can be far off when embeddings are strongly correlated).

The result is stored as a bundle head (the zero-shot class embeddings plus the adapter), so the device runs
the image encoder and two small matrix products.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.data.images import ImageLike, list_images, load_image
from edgeclip.errors import UsageError
from edgeclip.runtimes.bundle import Bundle
from edgeclip.runtimes.faces import DEFAULT_MARGIN, FaceDetector, crop_face
from edgeclip.runtimes.heads import Head, check_head_name
from edgeclip.runtimes.zeroshot import build_zero_shot_head

# GDA logits scale with 1 / (within-class variance), which differs by orders of magnitude between models.
ALPHA_GRID: tuple[float, ...] = (0.0, *(float(a) for a in np.logspace(-6, 3, 28)))
# None: the Ledoit-Wolf estimate; it can be far off when the embeddings are strongly correlated.
SHRINKAGE_GRID: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0)
MAX_FOLDS = 5


def ledoit_wolf_shrinkage(centered: np.ndarray) -> float:
    """Ledoit-Wolf's optimal shrinkage intensity for rows of already-centred data (the formula scikit-learn uses)."""
    n, p = centered.shape
    x2 = centered**2
    trace_terms = x2.sum(axis=0) / n
    mu = trace_terms.sum() / p
    beta_ = float((x2.T @ x2).sum())
    delta_ = float(((centered.T @ centered) ** 2).sum()) / n**2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace_terms.sum() + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)


@dataclass(frozen=True)
class GDAFit:
    """The linear head W [C, D], b [C] and the shrinkage it was fitted with."""

    weight: np.ndarray
    bias: np.ndarray
    shrinkage: float

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.weight.T + self.bias


def fit_gda(embeddings: np.ndarray, targets: np.ndarray, num_classes: int, shrinkage: float | None = None) -> GDAFit:
    """Class means and a shrunk shared covariance of the embeddings -> a linear classifier (equal priors)."""
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(targets)
    missing = [k for k in range(num_classes) if not np.any(y == k)]
    if missing:
        raise UsageError(f"class number {missing[0]} has no shots: every class needs at least one")
    means = np.stack([x[y == k].mean(axis=0) for k in range(num_classes)])
    centered = x - means[y]
    dim = x.shape[1]
    covariance = centered.T @ centered / x.shape[0]
    level = ledoit_wolf_shrinkage(centered) if shrinkage is None else float(shrinkage)
    if not 0.0 <= level <= 1.0:
        raise UsageError(f"shrinkage {shrinkage!r} is not allowed: expected 0..1")
    scale = max(float(np.trace(covariance)) / dim, 1e-12)
    shrunk = (1.0 - level) * covariance + level * scale * np.eye(dim)
    # A little ridge keeps a one-shot-per-class fit (zero covariance) solvable.
    shrunk += 1e-6 * scale * np.eye(dim)
    weight = np.linalg.solve(shrunk, means.T).T
    bias = -0.5 * np.einsum("kd,kd->k", weight, means) + np.log(1.0 / num_classes)
    return GDAFit(weight.astype(np.float32), bias.astype(np.float32), level)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _folds(targets: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """Stratified folds: each class's shots dealt round-robin, in a seeded random order."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(targets.size, dtype=int)
    for k in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == k))
        fold_of[members] = np.arange(members.size) % count
    return [np.flatnonzero(fold_of == f) for f in range(count)]


@dataclass(frozen=True)
class Choice:
    """The (alpha, shrinkage) with the lowest held-out log loss, and the held-out figures behind the choice."""

    alpha: float
    shrinkage: float | None  # None: the Ledoit-Wolf estimate of each fit
    folds: int
    log_loss: float
    accuracy: float
    zero_shot_log_loss: float
    zero_shot_accuracy: float


def cross_validate(
    embeddings: np.ndarray,
    targets: np.ndarray,
    zero_shot_logits: np.ndarray,
    shrinkages: Sequence[float | None] = SHRINKAGE_GRID,
    alphas: Sequence[float] = ALPHA_GRID,
    seed: int = 0,
) -> Choice:
    """Stratified k-fold choice of alpha and shrinkage by the log loss of softmax(zero-shot + alpha x GDA)."""
    smallest = int(np.bincount(targets).min())
    if smallest < 2:
        raise UsageError("cross-validating alpha needs at least 2 shots per class: add shots or give alpha")
    count = min(MAX_FOLDS, smallest)
    num_classes = zero_shot_logits.shape[1]
    loss = np.zeros((len(shrinkages), len(alphas)))
    correct = np.zeros((len(shrinkages), len(alphas)))
    for held in _folds(targets, count, seed):
        train = np.setdiff1d(np.arange(targets.size), held)
        rows = np.arange(held.size)
        for i, shrinkage in enumerate(shrinkages):
            gda = fit_gda(embeddings[train], targets[train], num_classes, shrinkage).logits(embeddings[held])
            for j, alpha in enumerate(alphas):
                log_p = _log_softmax(zero_shot_logits[held] + alpha * gda)
                loss[i, j] -= float(log_p[rows, targets[held]].sum())
                correct[i, j] += int((log_p.argmax(axis=1) == targets[held]).sum())
    loss /= targets.size
    correct /= targets.size
    # Lowest loss; ties go to the smaller alpha (closer to zero-shot), then to the first shrinkage.
    order = sorted(np.ndindex(loss.shape), key=lambda ij: (round(float(loss[ij]), 9), alphas[ij[1]], ij[0]))
    i, j = order[0]
    zero = [k for k, a in enumerate(alphas) if a == 0.0]
    zs_loss = float(loss[0, zero[0]]) if zero else float("nan")
    zs_acc = float(correct[0, zero[0]]) if zero else float("nan")
    return Choice(float(alphas[j]), shrinkages[i], count, float(loss[i, j]), float(correct[i, j]), zs_loss, zs_acc)


@dataclass(frozen=True)
class AdaptResult:
    """The adapted head and how it was made: alpha, shrinkage, shots per class, held-out figures, dropped classes."""

    head: Head
    alpha: float
    shrinkage: float
    shots: dict[str, int]
    choice: Choice | None
    dropped: tuple[str, ...]
    no_face: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.head.name,
            "kind": self.head.kind,
            "labels": list(self.head.labels),
            "alpha": self.alpha,
            "shrinkage": self.shrinkage,
            "shots": self.shots,
            "dropped_classes": list(self.dropped),
            "shots_without_face": self.no_face,
        }
        if self.choice is not None:
            c = self.choice
            out["cross_validation"] = {
                "folds": c.folds,
                "zero_shot_accuracy": c.zero_shot_accuracy,
                "adapted_accuracy": c.accuracy,
                "zero_shot_log_loss": c.zero_shot_log_loss,
                "adapted_log_loss": c.log_loss,
                "shrinkage": "ledoit-wolf" if c.shrinkage is None else c.shrinkage,
            }
        return out


def read_shots_folder(folder: Path) -> dict[str, list[Path]]:
    """Labelled shots from `folder/<label>/*.jpg` (one subfolder per class, sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(
            f"{folder}: {'does not exist' if not folder.exists() else 'is not a folder'}; "
            "expected a folder with one subfolder of images per class"
        )
    shots = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = list_images(sub)
        if images:
            shots[sub.name] = images
    if len(shots) < 2:
        raise UsageError(f"{folder} has {len(shots)} class subfolder(s) with images: expected at least 2")
    return shots


def adapt_head(
    bundle: Bundle,
    shots: Mapping[str, Sequence[ImageLike]],
    name: str,
    *,
    base: str | Head | None = None,
    templates: str | Sequence[str] = "simple",
    alpha: float | None = None,
    shrinkage: float | None = None,
    detector: FaceDetector | None = None,
    margin: float = DEFAULT_MARGIN,
    seed: int = 0,
    progress: bool = False,
) -> AdaptResult:
    """Fit a GDA adapter on labelled shots and ensemble it with a base head (a stored head, or zero-shot labels).

    With a face `detector`, each shot is replaced by its largest face cropped with `margin`, exactly as the
    liveness wrapper will see it; shots without a face are left out and counted.
    """
    check_head_name(name)
    if alpha is not None and alpha < 0:
        raise UsageError(f"alpha {alpha!r} is not allowed: expected a number >= 0")
    if isinstance(base, str):
        base = bundle.load_head(base)
    if base is None:
        base = build_zero_shot_head(bundle, list(shots), templates, name)
    elif base.model_id != bundle.model_id:
        raise UsageError(f"head {base.name!r} belongs to {base.model_id}, not {bundle.model_id}")
    groups = len(base.group_slices())
    if groups != 1:
        raise UsageError(f"head {base.name!r} has {groups} softmax groups: adapt needs a head with one group")
    unknown = [label for label in shots if label not in base.labels]
    if unknown:
        raise UsageError(f"shots class {unknown[0]!r} is not a label of head {base.name!r} ({', '.join(base.labels)})")
    empty = [label for label, items in shots.items() if not items]
    if empty:
        raise UsageError(f"shots class {empty[0]!r} has no images")
    keep = [i for i, label in enumerate(base.labels) if label in shots]
    labels = tuple(base.labels[i] for i in keep)
    missing_positive = [p for p in base.positives if p not in labels]
    if missing_positive:
        raise UsageError(f"no shots of {missing_positive[0]!r}, which head {base.name!r} scores: add a folder for it")

    images: list[ImageLike] = []
    target_list: list[int] = []
    no_face: dict[str, int] = {}
    for k, label in enumerate(labels):
        for item in shots[label]:
            if detector is not None:
                rgb = load_image(item)
                boxes = detector.detect(rgb)
                if not boxes:
                    no_face[label] = no_face.get(label, 0) + 1
                    continue
                item = crop_face(rgb, boxes[0], margin)
            images.append(item)
            target_list.append(k)
    targets = np.array(target_list, dtype=int)
    empty_after = [label for k, label in enumerate(labels) if not np.any(targets == k)]
    if empty_after:
        raise UsageError(f"no face was found in any shot of {empty_after[0]!r}: expected face photos")
    emb = bundle.encode_image(images, progress=progress).astype(np.float64)
    zs_embeddings = base.embeddings[keep]
    zero_shot = bundle.logit_scale * (emb @ zs_embeddings.T.astype(np.float64))

    choice = None
    if alpha is None:
        grid = SHRINKAGE_GRID if shrinkage is None else (shrinkage,)
        choice = cross_validate(emb, targets, zero_shot, grid, seed=seed)
        alpha, shrinkage = choice.alpha, choice.shrinkage
    gda = fit_gda(emb, targets, len(labels), shrinkage)
    head = Head(
        name=name,
        kind=base.kind,
        labels=labels,
        templates=base.templates,
        model_id=bundle.model_id,
        embeddings=zs_embeddings.astype(np.float32),
        groups=(),
        positives=base.positives,
        prompts=tuple(base.prompts[i] for i in keep) if base.prompts else (),
        adapter_weight=gda.weight,
        adapter_bias=gda.bias,
        adapter_alpha=float(alpha),
    )
    dropped = tuple(label for label in base.labels if label not in labels)
    counts = {label: int(np.sum(targets == k)) for k, label in enumerate(labels)}
    return AdaptResult(head, float(alpha), gda.shrinkage, counts, choice, dropped, no_face)
