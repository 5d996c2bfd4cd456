"""ISO/IEC 30107-3 presentation-attack-detection metrics, in numpy.

Scores are liveness scores: higher means more likely bona fide, and a presentation is *accepted as bona fide*
when its score is >= the threshold. With that convention:

* APCER of a species: the share of its attack presentations accepted as bona fide;
* worst-species APCER: the maximum over species (ISO/IEC 30107-3 reports the worst species);
* BPCER: the share of bona fide presentations rejected (score < threshold);
* ACER = (worst APCER + BPCER) / 2 (from the OULU-NPU protocols; ISO discourages it as a sole figure);
* EER: where APCER (all attacks pooled) equals BPCER, interpolated between observed thresholds;
* ROC AUC: P(bona fide score > attack score), ties counting one half;
* BPCER@APCER=x: the lowest BPCER over thresholds at which every species' APCER is <= x.

Thresholds are chosen on a development split and then applied, unchanged, to the test split (`evaluate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from edgeclip.errors import UsageError

BONA_FIDE = "bona_fide"


@dataclass(frozen=True)
class ScoreSet:
    """Liveness scores of one split: bona fide scores, and attack scores per species."""

    bona_fide: np.ndarray
    attacks: dict[str, np.ndarray]

    @classmethod
    def from_labels(cls, scores: ArrayLike, species: Sequence[str], bona_fide: str = BONA_FIDE) -> ScoreSet:
        """Split flat (score, species label) pairs into bona fide and per-species attack scores."""
        values = np.asarray(scores, dtype=np.float64)
        names = np.asarray(species, dtype=str)
        if values.shape != names.shape or values.ndim != 1:
            raise UsageError(f"{values.shape[0] if values.ndim else 0} scores but {names.size} species labels")
        attacks = {str(s): values[names == s] for s in dict.fromkeys(names.tolist()) if s != bona_fide}
        return cls(values[names == bona_fide], attacks)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bona_fide", np.asarray(self.bona_fide, dtype=np.float64).ravel())
        attacks = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in self.attacks.items()}
        object.__setattr__(self, "attacks", attacks)
        if self.bona_fide.size == 0:
            raise UsageError("no bona fide scores: expected at least one bona fide presentation")
        empty = [k for k, v in self.attacks.items() if v.size == 0]
        if not self.attacks or empty:
            what = f"species {empty[0]!r} has no scores" if empty else "no attack scores"
            raise UsageError(f"{what}: expected at least one attack presentation per species")
        bad = [k for k, v in (("bona fide", self.bona_fide), *self.attacks.items()) if not np.isfinite(v).all()]
        if bad:
            raise UsageError(f"{bad[0]} scores include NaN or infinity: expected finite liveness scores")

    @property
    def all_attacks(self) -> np.ndarray:
        return np.concatenate(list(self.attacks.values()))


def apcer_per_species(attacks: Mapping[str, np.ndarray], threshold: float) -> dict[str, float]:
    """Per species, the share of attack presentations accepted as bona fide (score >= threshold)."""
    return {name: float(np.mean(np.asarray(s) >= threshold)) for name, s in attacks.items()}


def bpcer(bona_fide: np.ndarray, threshold: float) -> float:
    """The share of bona fide presentations rejected (score < threshold)."""
    return float(np.mean(np.asarray(bona_fide) < threshold))


def acer(worst_apcer: float, bpcer_value: float) -> float:
    """(worst-species APCER + BPCER) / 2."""
    return (worst_apcer + bpcer_value) / 2.0


def _candidate_thresholds(scores: ScoreSet) -> np.ndarray:
    """Every distinct score, plus one above the maximum (accept nothing)."""
    values = np.unique(np.concatenate([scores.bona_fide, scores.all_attacks]))
    return np.append(values, np.nextafter(values[-1], np.inf))


def eer(scores: ScoreSet) -> tuple[float, float]:
    """(EER, threshold): where pooled APCER meets BPCER, linearly interpolated between adjacent thresholds."""
    thresholds = _candidate_thresholds(scores)
    attacks = scores.all_attacks
    apcers = np.array([np.mean(attacks >= t) for t in thresholds])  # falls as t rises
    bpcers = np.array([np.mean(scores.bona_fide < t) for t in thresholds])  # rises as t rises
    diff = apcers - bpcers
    exact = np.flatnonzero(diff == 0)
    if exact.size:
        i = int(exact[0])
        return float(apcers[i]), float(thresholds[i])
    i = int(np.flatnonzero(diff < 0)[0])  # the first threshold where BPCER overtakes APCER; i >= 1
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    rate = apcers[i - 1] + w * (apcers[i] - apcers[i - 1])
    return float(rate), float(thresholds[i - 1] + w * (thresholds[i] - thresholds[i - 1]))


def roc_auc(scores: ScoreSet) -> float:
    """P(a bona fide score > an attack score) + half P(equal): the Mann-Whitney form of the ROC AUC."""
    bona = scores.bona_fide
    attacks = scores.all_attacks
    ranks = average_ranks(np.concatenate([bona, attacks]))
    u = ranks[: bona.size].sum() - bona.size * (bona.size + 1) / 2.0
    return float(u / (bona.size * attacks.size))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    first = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], values.size]
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size)
    ranks[order] = average[group]
    return ranks


def threshold_at_apcer(scores: ScoreSet, target: float) -> float:
    """The lowest threshold at which every species' APCER is <= target (so BPCER is as low as it can be)."""
    if not 0.0 <= target <= 1.0:
        raise UsageError(f"APCER target {target!r} is not allowed: expected 0..1")
    for t in _candidate_thresholds(scores):
        if max(apcer_per_species(scores.attacks, t).values()) <= target:
            return float(t)
    raise AssertionError("unreachable: the top candidate accepts no attack")


def bpcer_at_apcer(scores: ScoreSet, target: float) -> float:
    """BPCER at the threshold where every species' APCER first falls to <= target (ISO's BPCER@APCER=x)."""
    return bpcer(scores.bona_fide, threshold_at_apcer(scores, target))


@dataclass(frozen=True)
class OperatingPoint:
    """Error rates of one split at one threshold."""

    threshold: float
    apcer: dict[str, float]
    worst_species: str
    worst_apcer: float
    bpcer: float
    acer: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "apcer": self.apcer,
            "worst_species": self.worst_species,
            "worst_apcer": self.worst_apcer,
            "bpcer": self.bpcer,
            "acer": self.acer,
        }


def operating_point(scores: ScoreSet, threshold: float) -> OperatingPoint:
    """APCER per species, the worst species, BPCER and ACER at one threshold."""
    per = apcer_per_species(scores.attacks, threshold)
    worst = max(per, key=lambda k: (per[k], k))
    b = bpcer(scores.bona_fide, threshold)
    return OperatingPoint(threshold, per, worst, per[worst], b, acer(per[worst], b))


@dataclass(frozen=True)
class LivenessReport:
    """The test split at the threshold chosen on dev, plus the test split's threshold-free figures."""

    threshold_rule: str
    dev: OperatingPoint
    test: OperatingPoint
    test_eer: float
    test_auc: float
    test_bpcer_at_apcer: dict[str, float]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold_rule": self.threshold_rule,
            "threshold": self.test.threshold,
            "dev": self.dev.to_dict(),
            "test": self.test.to_dict(),
            "test_eer": self.test_eer,
            "test_auc": self.test_auc,
            "test_bpcer_at_apcer": self.test_bpcer_at_apcer,
            "counts": self.counts,
        }


THRESHOLD_RULES = ("eer", "apcer@0.01", "apcer@0.05", "fixed")


def choose_threshold(dev: ScoreSet, rule: str = "eer", fixed: float | None = None) -> float:
    """A threshold from the dev split: at its EER, at APCER <= 1% or 5% (every species), or a given value."""
    if rule == "eer":
        return eer(dev)[1]
    if rule.startswith("apcer@") and rule in THRESHOLD_RULES:
        return threshold_at_apcer(dev, float(rule.split("@")[1]))
    if rule == "fixed":
        if fixed is None:
            raise UsageError("threshold rule 'fixed' needs a threshold value")
        return float(fixed)
    raise UsageError(f"unknown threshold rule {rule!r}: expected one of {', '.join(THRESHOLD_RULES)}")


def evaluate(
    dev: ScoreSet,
    test: ScoreSet,
    rule: str = "eer",
    fixed: float | None = None,
    apcer_targets: Sequence[float] = (0.01, 0.05),
) -> LivenessReport:
    """Choose the threshold on dev by `rule`, apply it to test, and add test's EER, AUC and BPCER@APCER."""
    threshold = choose_threshold(dev, rule, fixed)
    counts = {
        name: {"bona_fide": int(s.bona_fide.size), **{k: int(v.size) for k, v in s.attacks.items()}}
        for name, s in (("dev", dev), ("test", test))
    }
    return LivenessReport(
        threshold_rule=rule if rule != "fixed" else f"fixed {threshold}",
        dev=operating_point(dev, threshold),
        test=operating_point(test, threshold),
        test_eer=eer(test)[0],
        test_auc=roc_auc(test),
        test_bpcer_at_apcer={f"{t:g}": bpcer_at_apcer(test, t) for t in apcer_targets},
        counts=counts,
    )
