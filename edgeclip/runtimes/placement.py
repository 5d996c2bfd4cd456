"""Placement reports: which of an encoder's ops ran in the accelerated delegate and which fell back.

A backend that can tell implements `placement() -> Placement` on the object its factory returns;
`placement_of` asks it and returns None for backends that cannot say (reported as such, never guessed).
`from_assignment` turns the ordered (engine, op types) list most runtimes give into a Placement, and
`bundle_placements` asks every encoder of a loaded bundle (what `edgeclip info --placement` prints).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from edgeclip.errors import EdgeclipError

# An export warns (or with --require-delegate fails) when an encoder's delegate takes less than this share of ops.
DEFAULT_MIN_DELEGATED = 0.9
SHOWN_FALLBACK_OPS = 8  # op types named in a one-line message; the report itself keeps them all


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

    @classmethod
    def from_dict(cls, data: Any) -> Placement:
        """Read the to_dict form back (bench results, a manifest's export-time record); ValueError if malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"placement is {str(data)[:60]!r}: expected an object")
        try:
            fallback = {str(k): int(v) for k, v in (data.get("fallback") or {}).items()}
            return cls(
                backend=str(data["backend"]),
                delegate=str(data["delegate"]),
                total_ops=int(data["total_ops"]),
                delegated_ops=int(data["delegated_ops"]),
                pieces=int(data["pieces"]),
                fallback=fallback,
                note=str(data.get("note") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"placement is malformed: {e}") from None

    def fallback_text(self, limit: int = SHOWN_FALLBACK_OPS) -> str:
        """The fallback op types, most frequent first, as `Gather x3, Shape x2`; 'none' when everything was taken."""
        if not self.fallback:
            return "none"
        ranked = sorted(self.fallback.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in ranked[:limit])
        return shown + (f" and {len(ranked) - limit} more op types" if len(ranked) > limit else "")

    def summary(self) -> str:
        """One line: delegate, delegated fraction, pieces and fallback ops."""
        return (
            f"{self.delegate}: {self.delegated_ops}/{self.total_ops} ops delegated ({self.fraction:.1%}), "
            f"{self.pieces} piece{'s' if self.pieces != 1 else ''}; fallback: {self.fallback_text()}"
        )


def placement_of(backend: object) -> Placement | None:
    """The placement a loaded backend reports, or None when its runtime cannot tell."""
    report = getattr(backend, "placement", None)
    return report() if callable(report) else None


def from_assignment(
    backend: str, delegate: str, assigned: Iterable[tuple[str, Sequence[str]]], *, note: str = ""
) -> Placement:
    """A Placement from the runtime's ordered assignment: (engine, op types of one partition) in execution order.

    A partition of several ops (a fused subgraph, as TensorRT or CoreML EPs compile) is one piece. Runtimes that
    place op by op (ONNX Runtime's CPU/CUDA providers, CoreML's per-op compute plan) give one-op partitions: there a
    piece is a run of consecutive delegate ops, since every switch of engine is a hand-over between them.
    """
    total = delegated = pieces = 0
    fallback: Counter[str] = Counter()
    previous_delegate = False
    for engine, ops in assigned:
        ops = list(ops)
        total += len(ops)
        on_delegate = engine == delegate
        if on_delegate:
            delegated += len(ops)
            if len(ops) > 1 or not previous_delegate:
                pieces += 1
        else:
            fallback.update(ops)
        previous_delegate = on_delegate and len(ops) == 1
    return Placement(backend, delegate, total, delegated, pieces, dict(sorted(fallback.items())), note)


def coverage_problem(role: str, placement: Placement, min_fraction: float) -> str | None:
    """Why an encoder's delegate coverage is too low (naming the fallback ops), or None when it is enough."""
    if placement.fraction >= min_fraction:
        return None
    return (
        f"{role} encoder: {placement.delegate} takes {placement.delegated_ops} of {placement.total_ops} ops "
        f"({placement.fraction:.1%}, below {min_fraction:.0%}) in {placement.pieces} pieces; "
        f"left outside it: {placement.fallback_text()}"
    )


class _EncoderSource(Protocol):
    """What `bundle_placements` needs of a bundle (runtimes.bundle.Bundle has it)."""

    def encoder(self, role: str) -> Any: ...


def bundle_placements(bundle: _EncoderSource, roles: Sequence[str] = ("image", "text")) -> dict[str, Placement | str]:
    """Each encoder loaded with the bundle's backend and options: its Placement, or why none can be given."""
    out: dict[str, Placement | str] = {}
    for role in roles:
        try:
            found = placement_of(bundle.encoder(role))
        except EdgeclipError as e:  # e.g. RuntimeUnavailable: CoreML off Apple; a backend that cannot load here
            out[role] = f"cannot load here: {e}"
            continue
        backend_name = getattr(getattr(bundle, "backend_info", None), "name", "this backend")
        out[role] = found if found is not None else f"{backend_name} does not report op placement"
    return out
