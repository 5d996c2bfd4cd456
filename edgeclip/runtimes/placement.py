"""Placement reports: which of an encoder's ops ran in the accelerated delegate and which fell back.

A backend that can tell implements `placement() -> Placement` on the object its factory returns;
`placement_of` asks it and returns None for backends that cannot say (reported as such, never guessed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Placement:
    """Op placement of one loaded encoder file on one backend."""

    backend: str  # registry name of the backend, e.g. "onnxruntime"
    delegate: str  # the accelerated engine the counts refer to, e.g. "XnnpackBackend", "CPUExecutionProvider"
    total_ops: int  # ops (nodes) of the graph the runtime executes
    delegated_ops: int  # of those, ops the delegate took
    pieces: int  # delegate partitions (subgraphs handed to the delegate); 1 when the whole graph is one
    fallback: dict[str, int] = field(default_factory=dict)  # op type -> count left outside the delegate
    note: str = ""  # how the figures were obtained, or what they do not cover

    @property
    def fraction(self) -> float:
        """Share of ops the delegate took (1.0 for an empty graph)."""
        return self.delegated_ops / self.total_ops if self.total_ops else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the fraction, as info --json and bench results record it."""
        return {**asdict(self), "fraction": round(self.fraction, 6)}


def placement_of(backend: object) -> Placement | None:
    """The placement a loaded backend reports, or None when its runtime cannot tell."""
    report = getattr(backend, "placement", None)
    return report() if callable(report) else None
