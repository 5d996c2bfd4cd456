"""`edgeclip bench compare`: what changed between two runs, and whether any change is a regression beyond a
threshold (for CI on a farm: the command exits non-zero then).

Thresholds read like pytest-benchmark's ``--benchmark-compare-fail``: ``median:10%`` (a latency statistic more than
10% slower), ``p90:2ms`` (more than 2 ms slower), ``top1:1%`` (zero-shot top-1 down by more than 1 percentage
point). Latency statistics: min, median (p50), p90, p99, mean; every stage and batch size both runs measured is
checked. A row that ran before and does not now is always a regression.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from edgeclip.bench.results import BenchResult
from edgeclip.bench.table import STATUS_MARKS, fmt, render
from edgeclip.errors import UsageError

LATENCY_STATS = {"min": "min", "median": "p50", "p50": "p50", "p90": "p90", "p99": "p99", "mean": "mean"}
ACCURACY_STATS = ("top1",)
_THRESHOLD = re.compile(r"^\s*([a-z0-9]+)\s*:\s*([0-9]*\.?[0-9]+)\s*(%|ms|pt)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Threshold:
    """How much worse a statistic may get: relative (% of the old value) or absolute (ms; points for top1)."""

    stat: str  # min, p50, p90, p99, mean or top1
    limit: float
    relative: bool
    text: str

    def exceeded(self, old: float, new: float) -> bool:
        """Whether going from old to new is worse than the threshold allows."""
        if self.stat == "top1":
            return (old - new) * 100 > self.limit  # percentage points either way
        if self.relative:
            return new > old * (1 + self.limit / 100)
        return new - old > self.limit


def parse_threshold(text: str) -> Threshold:
    """`median:10%`, `p90:2ms`, `mean:5%` or `top1:1%` as a Threshold; anything else is a UsageError."""
    match = _THRESHOLD.match(text)
    known = ", ".join([*LATENCY_STATS, *ACCURACY_STATS])
    if not match:
        raise UsageError(f"--fail-on {text!r}: expected STAT:N% or STAT:Nms, e.g. median:10% (stats: {known})")
    stat, value, unit = match.group(1).lower(), float(match.group(2)), (match.group(3) or "").lower()
    if stat in ACCURACY_STATS:
        if unit not in ("%", "pt"):
            raise UsageError(f"--fail-on {text!r}: top1 takes percentage points, e.g. top1:1%")
        return Threshold("top1", value, False, text)
    if stat not in LATENCY_STATS:
        raise UsageError(f"--fail-on {text!r}: unknown statistic {stat!r}: expected one of {known}")
    if unit not in ("%", "ms"):
        raise UsageError(f"--fail-on {text!r}: give a unit, % (relative) or ms (absolute), e.g. {stat}:10%")
    return Threshold(LATENCY_STATS[stat], value, unit == "%", text)


@dataclass(frozen=True)
class Change:
    """One figure in both runs: which row, stage and batch (stage "accuracy" for top-1), old and new values."""

    entry: str
    stage: str
    batch: int | None
    stat: str
    old: float
    new: float
    regression: str | None = None  # the threshold it exceeds

    @property
    def percent(self) -> float | None:
        return (self.new - self.old) / self.old * 100 if self.old else None


@dataclass(frozen=True)
class Comparison:
    """Every change between two runs, rows only one of them has, and the regressions beyond the thresholds."""

    old_label: str
    new_label: str
    changes: tuple[Change, ...]
    regressions: tuple[str, ...]
    only_old: tuple[str, ...]
    only_new: tuple[str, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "old": self.old_label,
            "new": self.new_label,
            "changes": [{**c.__dict__, "percent": c.percent} for c in self.changes],
            "regressions": list(self.regressions),
            "only_old": list(self.only_old),
            "only_new": list(self.only_new),
            "notes": list(self.notes),
        }


def compare_results(old: BenchResult, new: BenchResult, fail_on: Sequence[Threshold] = ()) -> Comparison:
    """Match rows by name and compare every latency statistic the thresholds name (p50 always) and top-1."""
    stats = ["p50", *dict.fromkeys(t.stat for t in fail_on if t.stat not in ("p50", "top1"))]
    changes: list[Change] = []
    regressions: list[str] = []
    for entry in old.entries:
        other = new.entry(entry.name)
        if other is None:
            continue
        if entry.status == "ok" and other.status != "ok":
            regressions.append(
                f"{entry.name}: {STATUS_MARKS['ok']} ran before, now {STATUS_MARKS[other.status]} "
                f"{other.reason or other.status}"
            )
        for stage, series in entry.latency.items():
            for before in series:
                after = other.stats(stage, before.batch)
                if after is None:
                    continue
                for stat in stats:
                    a, b = before.stat(stat), after.stat(stat)
                    hit = next((t.text for t in fail_on if t.stat == stat and t.exceeded(a, b)), None)
                    changes.append(Change(entry.name, stage, before.batch, stat, a, b, hit))
                    if hit:
                        pct = (b - a) / a * 100 if a else float("inf")
                        regressions.append(
                            f"{entry.name} {stage} batch {before.batch}: {stat} {a:.2f} -> {b:.2f} ms "
                            f"({pct:+.1f}%) beyond {hit}"
                        )
        if entry.accuracy and other.accuracy:
            a, b = entry.accuracy.top1, other.accuracy.top1
            hit = next((t.text for t in fail_on if t.stat == "top1" and t.exceeded(a, b)), None)
            changes.append(Change(entry.name, "accuracy", None, "top1", a, b, hit))
            if hit:
                regressions.append(f"{entry.name}: top-1 {a * 100:.1f}% -> {b * 100:.1f}% beyond {hit}")
    old_names, new_names = {e.name for e in old.entries}, {e.name for e in new.entries}
    notes = []
    for what, old_value, new_value in (
        ("CPU", old.device.cpu_model, new.device.cpu_model),
        ("device", old.device.name, new.device.name),
        ("threads", old.settings.get("threads"), new.settings.get("threads")),
    ):
        if old_value != new_value:
            notes.append(
                f"the runs differ in {what}: {old_value} vs {new_value}; changes mix that difference with the code's"
            )
    return Comparison(
        old.label,
        new.label,
        tuple(changes),
        tuple(regressions),
        tuple(e.name for e in old.entries if e.name not in new_names),
        tuple(e.name for e in new.entries if e.name not in old_names),
        tuple(notes),
    )


def format_comparison(comparison: Comparison, markdown: bool = False) -> str:
    """A table of every change, then rows only one run has, notes, and the regressions (or that there are none)."""
    header = ["Row", "Stage", "Batch", "Stat", "Old", "New", "Change", ""]
    rows = []
    for c in comparison.changes:
        top1 = c.stat == "top1"
        old = f"{c.old * 100:.1f}%" if top1 else f"{c.old:.2f} ms"
        new = f"{c.new * 100:.1f}%" if top1 else f"{c.new:.2f} ms"
        change = f"{(c.new - c.old) * 100:+.1f} pt" if top1 else fmt(c.percent, "+.1f") + "%"
        rows.append(
            [
                c.entry,
                c.stage,
                "-" if c.batch is None else str(c.batch),
                c.stat,
                old,
                new,
                change,
                "REGRESSION" if c.regression else "",
            ]
        )
    lines = [f"old: {comparison.old_label}", f"new: {comparison.new_label}", ""]
    lines.append(
        render(header, rows, [False, False, True, False, True, True, True, False], markdown)
        if rows
        else "no figures in common"
    )
    for name in comparison.only_old:
        lines.append(f"only in old: {name}")
    for name in comparison.only_new:
        lines.append(f"only in new: {name}")
    lines += [f"note: {n}" for n in comparison.notes]
    if comparison.regressions:
        lines += ["", f"{len(comparison.regressions)} regression(s):"] + [f"  {r}" for r in comparison.regressions]
    else:
        lines += ["", "no regressions"]
    return "\n".join(lines)
