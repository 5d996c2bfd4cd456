"""Search an index by text or by example image: exact cosine top-k (the reference) or the stored approximate index,
with optional filters by path glob and date."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.data.images import ImageLike
from edgeclip.errors import UsageError
from edgeclip.runtimes.search.ann import exact_topk, generation, get_ann, stored_ann
from edgeclip.runtimes.search.store import (
    BundleIdentity,
    SearchIndexError,
    check_identity,
    connect,
    load_vectors,
    read_meta,
)

METHODS = ("auto", "exact", "approximate")


@dataclass(frozen=True)
class Hit:
    """One result: the photo and its cosine similarity to the query."""

    path: str
    score: float
    id: int
    size: int
    mtime: str  # ISO 8601, local time
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "score": round(self.score, 6),
            "size": self.size,
            "mtime": self.mtime,
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True)
class SearchResult:
    """The ranked hits of one query, how they were found, and a note when there is nothing to find."""

    query: str
    method: str  # "exact" or the approximate index's kind
    searched: int  # entries the query was compared with (after filters)
    hits: tuple[Hit, ...]
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "method": self.method,
            "searched": self.searched,
            "seconds": round(self.seconds, 6),
            "notes": list(self.notes),
            "hits": [h.to_dict() for h in self.hits],
        }


def parse_date(value: str | datetime | None, name: str) -> int | None:
    """A date or datetime (ISO 8601, local time) as nanoseconds since the epoch, for the mtime filter."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1e9)
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1e9)
    except ValueError:
        raise UsageError(f"{name} {value!r} is not a date: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None


class PhotoIndex:
    """An index file opened for search. Vectors are loaded on the first exact query and kept (float32, N x D)."""

    def __init__(self, path: str | os.PathLike, bundle: Any | None = None, **bundle_options: Any) -> None:
        self.path = Path(path).expanduser()
        self._db = connect(self.path)
        self.meta = read_meta(self._db, self.path)
        self.storage = self.meta["storage"]
        self.embed_dim = int(self.meta["embed_dim"])
        self._bundle = bundle
        self._bundle_options = bundle_options
        if bundle is not None:
            check_identity(self.meta, BundleIdentity.of(bundle), self.path)
        self._vectors: tuple[int, np.ndarray, np.ndarray] | None = None  # (generation, ids, matrix)
        self._ann: tuple[int, Any] | None = None
        self._ann_kind = ""
        self._counted: tuple[int, int] | None = None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PhotoIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    @property
    def bundle(self) -> Any:
        """The bundle that built the index (loaded from the path it recorded unless one was given), checked."""
        if self._bundle is None:
            from edgeclip.runtimes.bundle import load_bundle

            where = self.meta.get("bundle_path", "")
            if not Path(where).is_dir():
                raise SearchIndexError(
                    f"index {self.path} was built with bundle {where}, which is no longer there: pass the bundle "
                    "(--bundle) to query it"
                )
            bundle = load_bundle(where, **self._bundle_options)
            check_identity(self.meta, BundleIdentity.of(bundle), self.path)
            self._bundle = bundle
        return self._bundle

    # --- queries ------------------------------------------------------------------------------------

    def text_vector(self, text: str, templates: str | Sequence[str] | None = None) -> np.ndarray:
        """A text query's embedding; with templates, the normalized mean over each template.format(text)."""
        if not text.strip():
            raise UsageError("the text query is empty: expected words describing the photos to find")
        if templates is None:
            prompts = [text]
        else:
            from edgeclip.runtimes.templates import resolve_templates

            prompts = [t.format(text) for t in resolve_templates(templates)]
        emb = self.bundle.encode_text(prompts)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        mean = emb.mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def image_vector(self, image: ImageLike) -> np.ndarray:
        """An example image's embedding, through the bundle's image encoder."""
        return self.bundle.encode_image([image])[0]

    def search_text(
        self, text: str, k: int = 10, *, templates: str | Sequence[str] | None = None, **kw: Any
    ) -> SearchResult:
        """The k photos most similar to a text query."""
        return self.search_vector(self.text_vector(text, templates), k, query=text, **kw)

    def search_image(self, image: ImageLike, k: int = 10, **kw: Any) -> SearchResult:
        """The k photos most similar to an example image."""
        name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__
        return self.search_vector(self.image_vector(image), k, query=f"image {name}", **kw)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        *,
        query: str = "vector",
        glob: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        method: str = "auto",
    ) -> SearchResult:
        """Top-k by cosine. `auto` uses a fresh approximate index when there is one and no filter, else exact."""
        started = time.perf_counter()
        if k < 1:
            raise UsageError(f"k {k}: expected at least 1")
        if method not in METHODS:
            raise UsageError(f"method {method!r}: expected one of {', '.join(METHODS)}")
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.embed_dim:
            raise UsageError(f"query vector has {q.shape[0]} dimensions: the index holds {self.embed_dim}")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        lo, hi = parse_date(since, "--since"), parse_date(until, "--until")
        filtered = glob is not None or lo is not None or hi is not None
        notes: list[str] = []
        gen = generation(self._db)
        total = self._count(gen)
        if total == 0:
            return SearchResult(query, "exact", 0, (), time.perf_counter() - started, ("the index is empty",))
        ann = None if filtered or method == "exact" else self._fresh_ann(gen)
        if method == "approximate" and ann is None:
            why = "a filter is given" if filtered else "the index holds no fresh approximate index"
            raise UsageError(
                f"approximate search is not possible here: {why} (build one with `edgeclip index --ann on`)"
            )
        if ann is not None:
            found_ids, scores = ann.search(q, k)
            used, searched = get_ann(self._ann_kind).name, total
        else:
            ids, matrix = self._matrix(gen)
            if filtered:
                allowed = self._filter_ids(glob, lo, hi)
                rows = np.searchsorted(ids, allowed)
                ok = (rows < len(ids)) & (ids[np.minimum(rows, len(ids) - 1)] == allowed)
                rows = rows[ok]
                sub_rows, scores = exact_topk(matrix[rows], q, k) if len(rows) else (np.empty(0, np.int64), [])
                found_ids, searched = ids[rows[sub_rows]] if len(rows) else np.empty(0, np.int64), len(rows)
                if not len(rows):
                    notes.append("no photo matches the filters")
            else:
                top, scores = exact_topk(matrix, q, k)
                found_ids, searched = ids[top], len(ids)
            used = "exact"
        hits = self._hits(found_ids, scores)
        return SearchResult(query, used, searched, hits, time.perf_counter() - started, tuple(notes))

    # --- internals ----------------------------------------------------------------------------------

    def _count(self, gen: int) -> int:
        if self._counted is None or self._counted[0] != gen:
            self._counted = (gen, len(self))
        return self._counted[1]

    def _matrix(self, gen: int) -> tuple[np.ndarray, np.ndarray]:
        if self._vectors is None or self._vectors[0] != gen:
            ids, matrix = load_vectors(self._db, self.storage, self.embed_dim)
            self._vectors = (gen, ids, matrix)
        return self._vectors[1], self._vectors[2]

    def _fresh_ann(self, gen: int) -> Any | None:
        if self._ann is not None and self._ann[0] == gen:
            return self._ann[1]
        stored = stored_ann(self._db)
        if stored is None or stored[1] != gen:
            return None
        kind, _, _, params, data = stored
        cls = get_ann(kind)
        if not cls.available():
            return None
        self._ann_kind = kind
        self._ann = (gen, cls.from_bytes(data, self.embed_dim, params))
        return self._ann[1]

    def _filter_ids(self, glob: str | None, lo: int | None, hi: int | None) -> np.ndarray:
        clauses: list[str] = []
        args: list[str | int] = []
        if glob is not None:
            clauses.append("path GLOB ?")
            args.append(glob)
        if lo is not None:
            clauses.append("mtime_ns >= ?")
            args.append(lo)
        if hi is not None:
            clauses.append("mtime_ns < ?")
            args.append(hi)
        sql = "SELECT id FROM photos WHERE " + " AND ".join(clauses) + " ORDER BY id"
        return np.asarray([r[0] for r in self._db.execute(sql, args)], dtype=np.int64)

    def _hits(self, ids: np.ndarray, scores: Any) -> tuple[Hit, ...]:
        if not len(ids):
            return ()
        id_list = [int(i) for i in ids]
        marks = ",".join("?" * len(id_list))
        rows = {
            r[0]: r
            for r in self._db.execute(
                f"SELECT id, path, size, mtime_ns, width, height FROM photos WHERE id IN ({marks})", id_list
            )
        }
        hits = []
        for i, score in zip(id_list, np.asarray(scores, dtype=np.float64).tolist(), strict=True):
            row = rows.get(i)
            if row is None:  # removed by a writer since the vectors were read
                continue
            mtime = datetime.fromtimestamp(row[3] / 1e9).isoformat(timespec="seconds")
            hits.append(Hit(row[1], float(score), i, row[2], mtime, row[4], row[5]))
        return tuple(hits)


def open_index(path: str | os.PathLike, bundle: Any | None = None, **bundle_options: Any) -> PhotoIndex:
    """Open an index file for search; `bundle` (optional) must be the one that built it."""
    return PhotoIndex(path, bundle, **bundle_options)


__all__ = ["Hit", "PhotoIndex", "SearchResult", "open_index"]
