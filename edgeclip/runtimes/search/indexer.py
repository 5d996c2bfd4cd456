"""Build and update a search index: list a folder, embed only new and changed photos, drop deleted ones.

Decoding and preprocessing run in a small thread pool (Pillow and numpy release the GIL) while the main thread
runs the image encoder, so the two overlap; at most a few batches are in flight, so memory stays flat in the
number of photos. Every batch is committed with its photos' rows, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.data.images import list_images, load_image
from edgeclip.errors import ImageError, UsageError
from edgeclip.runtimes.preprocess import preprocess_image
from edgeclip.runtimes.search.ann import ANN_POLICIES, refresh_ann
from edgeclip.runtimes.search.store import (
    STORAGES,
    BundleIdentity,
    SearchIndexError,
    WriterLock,
    bump_generation,
    check_identity,
    connect,
    create_schema,
    encode_vectors,
    read_meta,
    transaction,
)

DEFAULT_BATCH = 32
DEFAULT_WORKERS = 2


@dataclass
class IndexReport:
    """What one `edgeclip index` run did: counts, the photos it could not read, and its speed."""

    db: str
    root: str
    listed: int = 0
    unchanged: int = 0
    added: int = 0  # new photos embedded
    changed: int = 0  # photos whose content changed, re-embedded
    reused: int = 0  # new or changed photos whose content was already indexed: the vector was copied
    touched: int = 0  # size or mtime changed, content the same: metadata updated only
    removed: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0  # time the main thread spent in the image encoder
    total: int = 0  # photos in the index afterwards
    storage: str = "fp16"
    batch_size: int = DEFAULT_BATCH
    workers: int = DEFAULT_WORKERS
    ann: dict[str, Any] | None = None

    @property
    def embedded(self) -> int:
        """Photos run through the image encoder in this run."""
        return self.added + self.changed

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "db": self.db,
            "root": self.root,
            "listed": self.listed,
            "unchanged": self.unchanged,
            "embedded": self.embedded,
            "added": self.added,
            "changed": self.changed,
            "reused": self.reused,
            "touched": self.touched,
            "removed": self.removed,
            "skipped": list(self.skipped),
            "total": self.total,
            "storage": self.storage,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "ann": self.ann,
        }


@dataclass(frozen=True)
class _Known:
    id: int
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class _Prepared:
    """A photo ready for the encoder (pixels set), or one whose vector is copied or kept (pixels None)."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    pixels: np.ndarray | None
    known: _Known | None
    action: str  # "embed", "reuse" or "touch"


def _pixels_of(item: _Prepared) -> np.ndarray:
    """The pixels of a photo staged for the encoder (only "embed" rows are staged, and those carry pixels)."""
    if item.pixels is None:
        raise RuntimeError(f"{item.path} was staged for the encoder without pixels")
    return item.pixels


@dataclass(frozen=True)
class _Failed:
    path: str
    error: str
    vanished: bool
    known: _Known | None


def backend_batch_size(bundle: Any, requested: int) -> int:
    """The batch the image encoder takes: `requested`, or the bundle's fixed batch, or its TensorRT profile's max."""
    if requested < 1:
        raise UsageError(f"batch size {requested}: expected at least 1")
    axis = bundle.manifest.encoders["image"].inputs[0].shape[0]
    if isinstance(axis, int) and axis > 0:
        return axis
    profile = (bundle.manifest.target_info.get("tensorrt") or {}).get("batch_profile")
    if isinstance(profile, list) and len(profile) == 3 and isinstance(profile[2], int):
        return min(requested, profile[2])
    return requested


def embed_pixels(bundle: Any, batch: np.ndarray) -> np.ndarray:
    """L2-normalized image embeddings [N, D] of an already preprocessed batch."""
    name = bundle.manifest.encoders["image"].inputs[0].name
    out = np.asarray(bundle.encoder("image").run({name: batch})[0], dtype=np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _prepare(path: str, known: _Known | None, indexed_hashes: frozenset[str] | set[str], spec: Any) -> Any:
    """Worker: stat, hash and (when the content is new) decode and preprocess one photo."""
    try:
        st = os.stat(path)
        digest = _sha256(path)
        if known is not None and digest == known.sha256:
            return _Prepared(path, st.st_size, st.st_mtime_ns, digest, 0, 0, None, known, "touch")
        if digest in indexed_hashes:
            return _Prepared(path, st.st_size, st.st_mtime_ns, digest, 0, 0, None, known, "reuse")
        rgb = load_image(path)
        pixels = preprocess_image(rgb, spec)
        return _Prepared(path, st.st_size, st.st_mtime_ns, digest, rgb.width, rgb.height, pixels, known, "embed")
    except FileNotFoundError:
        return _Failed(path, "vanished between listing and reading", True, known)
    except ImageError as e:
        vanished = not os.path.exists(path)
        return _Failed(path, "vanished between listing and reading" if vanished else str(e), vanished, known)
    except OSError as e:
        return _Failed(path, f"cannot be read ({e.strerror or e})", False, known)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable[[str], Any], items: Sequence[str], ahead: int) -> Iterator[Any]:
    """pool.map in order, with at most `ahead` items submitted and not yet consumed (flat memory)."""
    pending: deque[Future] = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))
        yield result


def _open_for_write(db_path: Path, identity: BundleIdentity, storage: str | None) -> tuple[sqlite3.Connection, str]:
    fresh = not db_path.exists() or (db_path.is_file() and db_path.stat().st_size == 0)
    db = connect(db_path, create=fresh)  # an existing file is checked before anything is written to it
    if fresh:
        create_schema(db, identity, storage or STORAGES[0])
        return db, storage or STORAGES[0]
    meta = read_meta(db, db_path)
    check_identity(meta, identity, db_path)
    if storage is not None and storage != meta["storage"]:
        raise UsageError(
            f"index {db_path} stores {meta['storage']} vectors, not {storage}: build a new index (another --db) "
            "to change the storage"
        )
    db.execute("PRAGMA journal_mode = WAL")
    return db, meta["storage"]


def _known_under(db: sqlite3.Connection, root: str) -> dict[str, _Known]:
    prefix = root.rstrip(os.sep) + os.sep
    rows = db.execute(
        "SELECT id, path, size, mtime_ns, sha256 FROM photos WHERE path >= ? AND path < ?",
        (prefix, prefix[:-1] + chr(ord(os.sep) + 1)),
    )
    return {path: _Known(i, size, mtime, sha) for i, path, size, mtime, sha in rows}


def index_folder(
    bundle: Any,
    root: str | os.PathLike,
    db_path: str | os.PathLike,
    *,
    storage: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    workers: int = DEFAULT_WORKERS,
    commit_every: int = 1,
    ann: str = "auto",
    wait: bool = False,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Bring the index at `db_path` in step with the images under `root`: embed new and changed photos with
    `bundle`'s image encoder, copy vectors of content already indexed, and remove photos that are gone.

    One writer at a time (a lock beside the file; `wait` blocks on it instead of failing). Each `commit_every`
    encoder batches are committed together, so a killed run keeps what it committed.
    """
    if workers < 1 or commit_every < 1:
        raise UsageError(f"workers {workers} and commit_every {commit_every}: expected at least 1")
    if ann not in ANN_POLICIES:
        raise UsageError(f"ann {ann!r}: expected one of {', '.join(ANN_POLICIES)}")
    if storage is not None and storage not in STORAGES:
        raise UsageError(f"storage {storage!r}: expected one of {', '.join(STORAGES)}")
    started = time.perf_counter()
    root_path = Path(root).expanduser()
    paths = [str(p.resolve()) for p in list_images(root_path)]  # ImageError names a missing folder
    root_str = str(root_path.resolve())
    db_path = Path(db_path).expanduser()
    batch = backend_batch_size(bundle, batch_size)
    identity = BundleIdentity.of(bundle)
    report = IndexReport(str(db_path), root_str, listed=len(paths), batch_size=batch, workers=workers)

    with WriterLock(db_path) as lock:
        lock.acquire(wait)
        db, report.storage = _open_for_write(db_path, identity, storage)
        try:
            known = _known_under(db, root_str)
            listed = set(paths)
            todo = []
            for p in paths:
                k = known.get(p)
                if k is None:
                    todo.append(p)
                    continue
                try:
                    st = os.stat(p)
                except OSError:
                    todo.append(p)  # the worker reports it as vanished
                    continue
                if st.st_size == k.size and st.st_mtime_ns == k.mtime_ns:
                    report.unchanged += 1
                else:
                    todo.append(p)
            hashes = {sha for (sha,) in db.execute("SELECT DISTINCT sha256 FROM photos")}
            _run_pipeline(db, bundle, todo, known, hashes, report, batch, workers, commit_every, progress, on_batch)
            gone = [k.id for p, k in known.items() if p not in listed]
            if gone:
                with transaction(db):
                    db.executemany("DELETE FROM photos WHERE id = ?", [(i,) for i in gone])
                    bump_generation(db)
                report.removed += len(gone)
            report.total = db.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
            report.ann = refresh_ann(db, ann, report.storage, identity.embed_dim)
        finally:
            db.close()
    report.seconds = time.perf_counter() - started
    return report


def _run_pipeline(
    db: sqlite3.Connection,
    bundle: Any,
    todo: list[str],
    known: dict[str, _Known],
    hashes: set[str],
    report: IndexReport,
    batch: int,
    workers: int,
    commit_every: int,
    progress: bool,
    on_batch: Callable[[int], None] | None,
) -> None:
    from tqdm.auto import tqdm

    spec = bundle.manifest.preprocess
    frozen = frozenset(hashes)
    pending: list[_Prepared] = []  # embed rows of the current encoder batch
    others: list[Any] = []  # reuse/touch/failed rows, written with the next commit
    staged: list[tuple[_Prepared, tuple[bytes, float | None]]] = []
    batches_staged = 0

    def flush_encoder() -> None:
        nonlocal pending, batches_staged
        if not pending:
            return
        t = time.perf_counter()
        vectors = embed_pixels(bundle, np.stack([_pixels_of(p) for p in pending]))
        report.embed_seconds += time.perf_counter() - t
        staged.extend(zip(pending, encode_vectors(vectors, report.storage), strict=True))
        pending = []
        batches_staged += 1

    def commit() -> None:
        nonlocal staged, others, batches_staged
        if not staged and not others:
            return
        with transaction(db):
            for item, (blob, scale) in staged:
                photo_id = _upsert_photo(db, item)
                db.execute(
                    "INSERT OR REPLACE INTO embeddings (photo_id, vector, scale) VALUES (?, ?, ?)",
                    (photo_id, blob, scale),
                )
            for item in others:
                _write_other(db, item, report)
            bump_generation(db)
        for item, _ in staged:
            if item.known is None:
                report.added += 1
            else:
                report.changed += 1
        if on_batch is not None:
            on_batch(len(staged))
        staged, others, batches_staged = [], [], 0

    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgeclip-index") as pool,
        tqdm(total=len(todo), disable=not progress, desc="index", unit="img", leave=False, smoothing=0.1) as bar,
    ):
        for result in _bounded_map(pool, lambda p: _prepare(p, known.get(p), frozen, spec), todo, batch * 3):
            if isinstance(result, _Prepared) and result.action == "embed":
                pending.append(result)
                if len(pending) >= batch:
                    flush_encoder()
                    if batches_staged >= commit_every:
                        commit()
            else:
                others.append(result)
                if len(others) >= batch * commit_every:
                    commit()
            bar.update(1)
        flush_encoder()
        commit()


def _upsert_photo(db: sqlite3.Connection, item: _Prepared, width: int | None = None, height: int | None = None) -> int:
    values = (item.size, item.mtime_ns, item.sha256, width or item.width, height or item.height, time.time())
    if item.known is not None:
        db.execute(
            "UPDATE photos SET size = ?, mtime_ns = ?, sha256 = ?, width = ?, height = ?, indexed_at = ? WHERE id = ?",
            (*values, item.known.id),
        )
        return item.known.id
    cur = db.execute(
        "INSERT INTO photos (path, size, mtime_ns, sha256, width, height, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (item.path, *values),
    )
    if cur.lastrowid is None:  # sqlite3 sets it after every INSERT; None would be a driver bug
        raise RuntimeError(f"sqlite gave no row id for {item.path}")
    return cur.lastrowid


def _write_other(db: sqlite3.Connection, item: Any, report: IndexReport) -> None:
    if isinstance(item, _Failed):
        if item.vanished and item.known is not None:
            db.execute("DELETE FROM photos WHERE id = ?", (item.known.id,))
            report.removed += 1
        else:
            report.skipped.append({"path": item.path, "error": item.error})
        return
    if item.action == "touch":
        db.execute("UPDATE photos SET size = ?, mtime_ns = ? WHERE id = ?", (item.size, item.mtime_ns, item.known.id))
        report.touched += 1
        return
    source = db.execute(
        "SELECT p.width, p.height, e.vector, e.scale FROM photos p JOIN embeddings e ON e.photo_id = p.id "
        "WHERE p.sha256 = ? LIMIT 1",
        (item.sha256,),
    ).fetchone()
    if source is None:  # its twin vanished during this run: left for the next run, which embeds it
        report.skipped.append({"path": item.path, "error": "its identical indexed twin vanished; index again"})
        return
    width, height, blob, scale = source
    photo_id = _upsert_photo(db, item, width, height)
    db.execute("INSERT OR REPLACE INTO embeddings (photo_id, vector, scale) VALUES (?, ?, ?)", (photo_id, blob, scale))
    report.reused += 1


__all__ = ["IndexReport", "SearchIndexError", "backend_batch_size", "embed_pixels", "index_folder"]
