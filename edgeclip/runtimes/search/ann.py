"""Approximate nearest-neighbour indexes built from the embeddings table, stored in the same SQLite file.

One registered kind, `usearch` (HNSW, the `edgeclip[search]` extra), chosen by measurement over faiss-cpu and
sqlite-vec: see docs/search.md. Without it every query is exact (blocked numpy), which is also the reference the
approximate index's recall is measured against each time it is built.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from edgeclip._registry import add_once, lookup
from edgeclip.errors import UsageError
from edgeclip.runtimes.search.store import load_vectors

ANN_POLICIES = ("auto", "on", "off")
ANN_MIN_ENTRIES = 20_000  # below this, exact search is fast enough (a few ms) and always right
RECALL_QUERIES = 200
RECALL_K = 10


class ApproximateIndex(Protocol):
    """What a registered approximate index does: build from vectors, serialize, restore, search."""

    name: str
    extra: str

    @staticmethod
    def available() -> bool: ...

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, storage: str) -> ApproximateIndex: ...

    def to_bytes(self) -> bytes: ...

    @classmethod
    def from_bytes(cls, data: bytes, dim: int, params: dict[str, Any]) -> ApproximateIndex: ...

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def params(self) -> dict[str, Any]: ...


_KINDS: dict[str, type[ApproximateIndex]] = {}


def register_ann(cls: type[ApproximateIndex]) -> type[ApproximateIndex]:
    """Class decorator: add an approximate index kind to the registry (names are unique)."""
    add_once(_KINDS, cls.name, cls, "approximate index")
    return cls


def list_ann() -> list[str]:
    return sorted(_KINDS)


def get_ann(name: str) -> Any:
    return lookup(_KINDS, name, "approximate index", list_ann())


def default_ann() -> Any | None:
    """The first registered kind whose library is installed, or None (exact search only)."""
    return next((cls for name, cls in sorted(_KINDS.items()) if cls.available()), None)


@register_ann
class UsearchIndex:
    """usearch HNSW over cosine, vectors kept as f16 inside the graph whatever the table stores (i8 in the graph
    measured recall@10 0.956 at 100k entries, f16 0.999: docs/search.md)."""

    name = "usearch"
    extra = "search"
    CONNECTIVITY = 16
    EXPANSION_ADD = 128
    EXPANSION_SEARCH = 128  # measured: recall@10 >= 0.99 at 100k entries (docs/search.md)

    def __init__(self, index: Any) -> None:
        self._index = index

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("usearch") is not None

    @classmethod
    def _new(cls, dim: int, dtype: str) -> Any:
        from usearch.index import Index

        return Index(
            ndim=dim,
            metric="cos",
            dtype=dtype,
            connectivity=cls.CONNECTIVITY,
            expansion_add=cls.EXPANSION_ADD,
            expansion_search=cls.EXPANSION_SEARCH,
        )

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, storage: str) -> UsearchIndex:
        index = cls._new(vectors.shape[1], "f16")
        if len(ids):
            index.add(np.asarray(ids, dtype=np.uint64), np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index)

    def to_bytes(self) -> bytes:
        return bytes(self._index.save())

    @classmethod
    def from_bytes(cls, data: bytes, dim: int, params: dict[str, Any]) -> UsearchIndex:
        index = cls._new(dim, params.get("dtype", "f16"))
        index.load(data)
        index.expansion_search = int(params.get("expansion_search", cls.EXPANSION_SEARCH))
        return cls(index)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Photo ids and cosine similarities of the (approximately) nearest k, best first."""
        matches = self._index.search(np.asarray(query, dtype=np.float32), k, threads=1)
        return np.asarray(matches.keys, dtype=np.int64), 1.0 - np.asarray(matches.distances, dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "dtype": str(self._index.dtype).split(".")[-1].lower().replace("scalarkind", ""),
            "connectivity": self.CONNECTIVITY,
            "expansion_add": self.EXPANSION_ADD,
            "expansion_search": int(self._index.expansion_search),
        }


def exact_topk(matrix: np.ndarray, query: np.ndarray, k: int, block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the k highest dot products, best first; blocked so scores never fill N floats at once."""
    k = min(k, len(matrix))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    best_rows: list[np.ndarray] = []
    best_scores: list[np.ndarray] = []
    for start in range(0, len(matrix), block):
        # einsum: one thread, no BLAS pool to wake; measured 3-4x faster than `@` for one query on a busy 2-core
        # machine (100k x 128: 3.2 vs 11.8 ms; x 512: 10.9 vs 33.8 ms), and predictable on a phone
        scores = np.einsum("ij,j->i", matrix[start : start + block], query)
        take = min(k, len(scores))
        top = np.argpartition(-scores, take - 1)[:take]
        best_rows.append(top + start)
        best_scores.append(scores[top])
    rows = np.concatenate(best_rows)
    scores = np.concatenate(best_scores)
    order = np.lexsort((rows, -scores))[:k]  # ties broken by row: stable results
    return rows[order].astype(np.int64), scores[order].astype(np.float32)


def measure_recall(
    approx_search: Callable[[np.ndarray, int], np.ndarray],
    ids: np.ndarray,
    matrix: np.ndarray,
    *,
    queries: int = RECALL_QUERIES,
    k: int = RECALL_K,
    seed: int = 0,
) -> float:
    """Mean recall@k of an approximate search against exact search, on queries between two random stored vectors
    (so none is itself in the index)."""
    if len(ids) < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(ids), (queries, 2))
    q = matrix[pairs[:, 0]] + matrix[pairs[:, 1]]
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    total = 0.0
    for query in q:
        rows, _ = exact_topk(matrix, query, k)
        truth = set(ids[rows].tolist())
        got = set(np.asarray(approx_search(query, k)).tolist())
        total += len(truth & got) / len(truth)
    return total / len(q)


def stored_ann(db: sqlite3.Connection) -> tuple[str, int, int, dict[str, Any], bytes] | None:
    row = db.execute("SELECT kind, generation, count, params, data FROM ann ORDER BY kind LIMIT 1").fetchone()
    return None if row is None else (row[0], row[1], row[2], json.loads(row[3]), row[4])


def generation(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def refresh_ann(db: sqlite3.Connection, policy: str, storage: str, dim: int) -> dict[str, Any] | None:
    """Build (or keep, or drop) the approximate index as `policy` says; returns what it holds, with its recall."""
    from edgeclip.runtimes.search.store import transaction

    count = db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    current = stored_ann(db)
    gen = generation(db)
    cls = default_ann()
    if policy == "off" or (policy == "auto" and count < ANN_MIN_ENTRIES):
        if current is not None:
            with transaction(db):
                db.execute("DELETE FROM ann")
        return None
    if cls is None:
        if policy == "on":
            raise UsageError("an approximate index needs usearch: pip install 'edgeclip[search]'")
        return {"kind": None, "note": "usearch is not installed (pip install 'edgeclip[search]'): exact search only"}
    if current is not None and current[1] == gen and current[0] == cls.name:
        return {"kind": current[0], "count": current[2], "built": False, **current[3]}
    ids, matrix = load_vectors(db, storage, dim)
    ann = cls.build(ids, matrix, storage)
    recall = measure_recall(lambda q, k: ann.search(q, k)[0], ids, matrix)
    params = {**ann.params(), "recall_at_10": round(recall, 4), "recall_queries": RECALL_QUERIES}
    with transaction(db):
        db.execute("DELETE FROM ann")
        db.execute(
            "INSERT INTO ann (kind, generation, count, params, data) VALUES (?, ?, ?, ?, ?)",
            (cls.name, gen, len(ids), json.dumps(params), ann.to_bytes()),
        )
    return {"kind": cls.name, "count": len(ids), "built": True, **params}
