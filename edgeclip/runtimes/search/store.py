"""The search index file: one SQLite database (standard library `sqlite3`) holding photos, their embeddings and
the identity of the bundle that made them.

Layout (schema version ``SCHEMA_VERSION``; an app may read it directly)::

    meta        key TEXT PRIMARY KEY, value TEXT: format ("edgeclip-search-index"), schema_version, bundle_sha256
                (sha256 of the bundle's manifest.json), bundle_path, model_id, embed_dim, embedding_spec (JSON:
                model_id, embed_dim, preprocess, tokenizer), storage ("fp16" or "int8"), created, generation
                (bumped by every committed change, so a derived approximate index knows when it is stale)
    photos      id INTEGER PRIMARY KEY, path TEXT UNIQUE (absolute), size, mtime_ns, sha256, width, height,
                indexed_at (unix seconds)
    embeddings  photo_id INTEGER PRIMARY KEY -> photos.id, vector BLOB (embed_dim little-endian fp16, or int8),
                scale REAL (int8 only: vector = int8 x scale; NULL for fp16)
    ann         kind TEXT PRIMARY KEY, generation INTEGER, count INTEGER, params TEXT (JSON), data BLOB
                (a serialized approximate index, valid while its generation equals meta.generation)

Vectors are L2-normalized before storage. The file runs in WAL mode: readers never block the one writer, and a
writer commits in batches, so a killed run loses at most the batch in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import EdgeclipError, UsageError

FORMAT = "edgeclip-search-index"
SCHEMA_VERSION = 1
STORAGES = ("fp16", "int8")
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS photos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS photos_sha256 ON photos (sha256);
CREATE INDEX IF NOT EXISTS photos_mtime ON photos (mtime_ns);
CREATE TABLE IF NOT EXISTS embeddings (
    photo_id INTEGER PRIMARY KEY REFERENCES photos (id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    scale REAL
);
CREATE TABLE IF NOT EXISTS ann (
    kind TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    count INTEGER NOT NULL,
    params TEXT NOT NULL,
    data BLOB NOT NULL
);
"""


class SearchIndexError(EdgeclipError):
    """A search index file is missing, not an edgeclip index, of a newer schema, or built with another bundle."""


@dataclass(frozen=True)
class BundleIdentity:
    """What an index's vectors depend on: the bundle's manifest digest and its embedding spec."""

    sha256: str
    path: str
    model_id: str
    embed_dim: int
    spec: str  # canonical JSON of model_id, embed_dim, preprocess and tokenizer

    @classmethod
    def of(cls, bundle: Any) -> BundleIdentity:
        """The identity of a loaded bundle (edgeclip.runtimes.Bundle)."""
        from edgeclip.runtimes.manifest import MANIFEST_NAME

        digest = hashlib.sha256((Path(bundle.path) / MANIFEST_NAME).read_bytes()).hexdigest()
        manifest = bundle.manifest
        spec = {
            "model_id": manifest.model_id,
            "embed_dim": manifest.embed_dim,
            "preprocess": manifest.preprocess.to_dict(),
            "tokenizer": manifest.tokenizer.to_dict(),
        }
        return cls(
            digest,
            str(Path(bundle.path).resolve()),
            manifest.model_id,
            manifest.embed_dim,
            json.dumps(spec, sort_keys=True),
        )

    def describe(self) -> str:
        return f"{self.path} (model {self.model_id}, manifest sha256 {self.sha256[:12]})"


def encode_vectors(vectors: np.ndarray, storage: str) -> list[tuple[bytes, float | None]]:
    """Rows as (blob, scale) for the embeddings table: normalized, then fp16, or int8 with a per-row scale."""
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if storage == "fp16":
        return [(row.astype("<f2").tobytes(), None) for row in vectors]
    scales = np.maximum(np.abs(vectors).max(axis=1), 1e-12) / 127.0
    q = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return [(row.tobytes(), float(s)) for row, s in zip(q, scales, strict=True)]


def decode_vectors(blobs: list[bytes], scales: list[float | None], storage: str, dim: int) -> np.ndarray:
    """float32 [N, dim] from stored rows (the inverse of encode_vectors, up to its rounding)."""
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    if storage == "fp16":
        return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), dim).astype(np.float32)
    q = np.frombuffer(b"".join(blobs), dtype=np.int8).reshape(len(blobs), dim).astype(np.float32)
    return q * np.asarray(scales, dtype=np.float32)[:, None]


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    """Open an index file in WAL mode with a busy timeout; a missing file is an error unless `create`."""
    path = Path(path)
    if not create and not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise SearchIndexError(f"index {path} {what}: expected a file written by `edgeclip index`")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
        if create:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a commit survives a killed process
    except sqlite3.DatabaseError as e:
        raise SearchIndexError(f"index {path} is not an edgeclip index (sqlite: {e})") from None
    return db


def read_meta(db: sqlite3.Connection, where: Path) -> dict[str, str]:
    """The meta table, checked: an edgeclip index of a schema this edgeclip reads."""
    try:
        rows = db.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as e:
        raise SearchIndexError(f"index {where} is not an edgeclip index ({e})") from None
    meta = dict(rows)
    if meta.get("format") != FORMAT:
        raise SearchIndexError(
            f"index {where} is not an edgeclip index (format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    version = meta.get("schema_version", "")
    if not version.isdigit():
        raise SearchIndexError(f"index {where} has schema_version {version!r}: expected a whole number")
    if int(version) > SCHEMA_VERSION:
        raise SearchIndexError(
            f"index {where} has schema version {version}, newer than this edgeclip reads ({SCHEMA_VERSION}): "
            "upgrade edgeclip"
        )
    return meta


def create_schema(db: sqlite3.Connection, identity: BundleIdentity, storage: str) -> None:
    """Create the tables of a new index and record the bundle identity and storage."""
    if storage not in STORAGES:
        raise UsageError(f"storage {storage!r}: expected one of {', '.join(STORAGES)}")
    with transaction(db):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        values = {
            "format": FORMAT,
            "schema_version": str(SCHEMA_VERSION),
            "bundle_sha256": identity.sha256,
            "bundle_path": identity.path,
            "model_id": identity.model_id,
            "embed_dim": str(identity.embed_dim),
            "embedding_spec": identity.spec,
            "storage": storage,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "generation": "0",
        }
        db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values.items())


def check_identity(meta: dict[str, str], identity: BundleIdentity, where: Path) -> None:
    """Refuse a bundle other than the one that built the index, naming both."""
    if meta.get("bundle_sha256") == identity.sha256:
        return
    digest = meta.get("bundle_sha256", "")[:12]
    built = f"{meta.get('bundle_path')} (model {meta.get('model_id')}, manifest sha256 {digest})"
    same_vectors = meta.get("embedding_spec") == identity.spec
    hint = (
        "its embedding spec matches, but a different bundle may embed differently"
        if same_vectors
        else "its vectors are not comparable with this bundle's"
    )
    raise SearchIndexError(
        f"index {where} was built with bundle {built}, not {identity.describe()}: {hint}; "
        "query it with the bundle that built it, or build a new index (another --db)"
    )


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time, readers unaffected (WAL)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def bump_generation(db: sqlite3.Connection) -> None:
    """Mark the vectors as changed (inside a transaction): derived approximate indexes become stale."""
    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")


class WriterLock:
    """An exclusive lock beside the index (`<db>.lock`, flock/LockFileEx via the OS), held while indexing.

    The OS drops it when the process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._file: Any = None

    def acquire(self, wait: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            _lock(self._file, wait)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise SearchIndexError(
                f"index {self.path.with_suffix('')} is being written by {holder}: one indexer at a time; "
                "wait for it to finish or pass --wait"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(f: Any, wait: bool) -> None:
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(f.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        return
    import fcntl

    fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))


def load_vectors(db: sqlite3.Connection, storage: str, dim: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Every stored vector as float32 [N, dim] with its photo id [N] (ascending), read in chunks from one snapshot."""
    own = not db.in_transaction
    if own:
        db.execute("BEGIN")  # one read snapshot: the count and the rows agree while a writer commits (WAL)
    try:
        count = db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        ids = np.empty(count, dtype=np.int64)
        matrix = np.empty((count, dim), dtype=np.float32)
        cur = db.execute("SELECT photo_id, vector, scale FROM embeddings ORDER BY photo_id")
        n = 0
        while rows := cur.fetchmany(chunk):
            ids[n : n + len(rows)] = [r[0] for r in rows]
            matrix[n : n + len(rows)] = decode_vectors([r[1] for r in rows], [r[2] for r in rows], storage, dim)
            n += len(rows)
    finally:
        if own:
            db.execute("COMMIT")
    return ids[:n], matrix[:n]
