"""`edgeclip bench search`: photo-search rows for the bench results file — index throughput against the image
encoder's own batch throughput on the same backend, and query latency (p50/p99) and recall@10 of exact and
approximate search at given collection sizes (synthetic clustered unit vectors of the bundle's width).

Rows carry a `search` object (results schema 1.1), so `bench report` and `bench compare` read them with the rest.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip._version import __version__
from edgeclip.bench.device import collect_device_info
from edgeclip.bench.latency import summarize
from edgeclip.bench.results import BenchEntry, BenchResult, ModelIdentity, SearchFigures
from edgeclip.errors import UsageError

DEFAULT_SIZES = (10_000, 100_000)


def synthetic_vectors(count: int, dim: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    """Unit vectors around `clusters` random centres (one subject photographed many times), the structure an
    approximate index meets in a photo library; plain Gaussian vectors would be an unrealistic worst case."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = centres[rng.integers(0, clusters, count)]
    out = out + rng.standard_normal((count, dim), dtype=np.float32) * np.float32(0.9 / np.sqrt(dim))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_synthetic_index(path: Path, identity: Any, vectors: np.ndarray, storage: str) -> Path:
    """An index file holding `vectors` as photos /synthetic/NNNNNNN.jpg (no images behind them)."""
    from edgeclip.runtimes.search.store import bump_generation, connect, create_schema, encode_vectors, transaction

    identity = dataclasses.replace(identity, embed_dim=int(vectors.shape[1]))
    db = connect(path, create=True)
    try:
        create_schema(db, identity, storage)
        now = time.time()
        for start in range(0, len(vectors), 10_000):
            block = vectors[start : start + 10_000]
            with transaction(db):
                db.executemany(
                    "INSERT INTO photos (id, path, size, mtime_ns, sha256, width, height, indexed_at) "
                    "VALUES (?, ?, 0, 0, ?, 0, 0, ?)",
                    [
                        (start + i + 1, f"/synthetic/{start + i:07d}.jpg", f"{start + i:064x}", now)
                        for i in range(len(block))
                    ],
                )
                db.executemany(
                    "INSERT INTO embeddings (photo_id, vector, scale) VALUES (?, ?, ?)",
                    [(start + i + 1, blob, scale) for i, (blob, scale) in enumerate(encode_vectors(block, storage))],
                )
                bump_generation(db)
    finally:
        db.close()
    return path


def _write_images(folder: Path, count: int, size: int) -> Path:
    from PIL import Image

    from edgeclip.data.shapes import ShapesDataset

    folder.mkdir(parents=True)
    data = ShapesDataset("eval", size=size, length=count)
    for i in range(count):
        Image.fromarray(data[i].image).save(folder / f"{i:06d}.png")
    return folder


def _remove_index(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def measure_index_throughput(
    bundle: Any, folder: Path, work: Path, *, batch_size: int, workers: int, storage: str, repeats: int = 3
) -> tuple[float, float, int]:
    """(pipeline images/s, encoder-only images/s, images): medians over `repeats`, the two interleaved.

    The pipeline figure is a whole fresh `index_folder` run (listing, hashing, decoding, preprocessing, encoder,
    SQLite writes) over its wall time; the encoder figure runs the same batches, preprocessed beforehand.
    """
    from edgeclip.data.images import list_images
    from edgeclip.runtimes.preprocess import preprocess
    from edgeclip.runtimes.search.indexer import backend_batch_size, embed_pixels, index_folder

    paths = list_images(folder)
    batch = backend_batch_size(bundle, batch_size)
    pixels = preprocess(paths, bundle.manifest.preprocess)
    embed_pixels(bundle, pixels[:batch])  # session creation and first-run costs belong to neither figure
    pipeline, encoder = [], []
    db = work / "throughput.sqlite"
    for _ in range(repeats):
        started = time.perf_counter()
        for s in range(0, len(pixels), batch):
            embed_pixels(bundle, pixels[s : s + batch])
        encoder.append(len(pixels) / (time.perf_counter() - started))
        _remove_index(db)
        report = index_folder(bundle, folder, db, storage=storage, batch_size=batch, workers=workers, ann="off")
        pipeline.append(report.embedded / report.seconds)
    _remove_index(db)
    return statistics.median(pipeline), statistics.median(encoder), len(paths)


def measure_queries(index: Any, queries: np.ndarray, method: str, warmup: int) -> tuple[Any, list[list[int]]]:
    """LatencyStats of one query at a time through PhotoIndex.search_vector (the first `warmup` queries untimed),
    and the ids each timed query found."""
    for q in queries[:warmup]:
        index.search_vector(q, 10, method=method)
    seconds, found = [], []
    for q in queries[warmup:]:
        started = time.perf_counter()
        result = index.search_vector(q, 10, method=method)
        seconds.append(time.perf_counter() - started)
        found.append([h.id for h in result.hits])
    return summarize(seconds, 1), found


def run_search_bench(
    bundle_path: str | Path,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    images: int = 256,
    image_size: int = 128,
    batch_size: int = 32,
    workers: int = 2,
    runs: int = 200,
    warmup: int = 10,
    dim: int | None = None,
    storage: str = "fp16",
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    label: str | None = None,
    device_name: str | None = None,
    verify: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> BenchResult:
    """Index throughput of `bundle_path` on shapes images, then exact and approximate query latency and recall@10
    at each of `sizes` synthetic entries (of the bundle's embedding width, or `dim`); `verify=False` skips the
    sha256 check of the bundle's files (as `--no-verify` does)."""
    from edgeclip.runtimes.bundle import load_bundle
    from edgeclip.runtimes.search.ann import default_ann, refresh_ann
    from edgeclip.runtimes.search.query import PhotoIndex
    from edgeclip.runtimes.search.store import STORAGES, BundleIdentity, connect

    step = on_step or (lambda _m: None)
    if not sizes or min(sizes) < 1 or images < 1 or runs < 1 or warmup < 0:
        raise UsageError(f"sizes {list(sizes)}, images {images}, runs {runs}: expected whole numbers >= 1")
    if storage not in STORAGES:
        raise UsageError(f"storage {storage!r}: expected one of {', '.join(STORAGES)}")
    bundle = load_bundle(bundle_path, providers=providers, threads=threads, verify=verify)
    m = bundle.manifest
    model = ModelIdentity(m.source.architecture, m.model_id, m.source.pretrained, m.source.random_init)
    width = dim or bundle.embed_dim
    device = collect_device_info(device_name)
    entries = []
    work = Path(tempfile.mkdtemp(prefix="edgeclip-bench-search-"))
    try:
        step(f"writing {images} shapes images")
        folder = _write_images(work / "photos", images, image_size)
        step("index throughput")
        pipeline, encoder, count = measure_index_throughput(
            bundle, folder, work, batch_size=batch_size, workers=workers, storage=storage
        )
        entries.append(
            BenchEntry(
                f"search:index ({Path(bundle_path).name})",
                "bundle",
                "ok",
                m.target,
                m.precision,
                model=model,
                runtime=f"{m.target} image encoder, batch {batch_size}, {workers} decode workers",
                search=SearchFigures("index", "pipeline", count, bundle.embed_dim, storage, pipeline, encoder),
            )
        )
        identity = BundleIdentity.of(bundle)
        ann_cls = default_ann()
        queries = synthetic_vectors(runs + warmup, width, seed=1)
        for size in sorted(set(int(s) for s in sizes)):
            step(f"{size} synthetic entries")
            path = work / f"synthetic-{size}.sqlite"
            write_synthetic_index(path, identity, synthetic_vectors(size, width, seed=2), storage)
            ann_info = None
            if ann_cls is not None:
                db = connect(path)
                ann_info = refresh_ann(db, "on", storage, width)
                db.close()
            with PhotoIndex(path) as index:
                stats, truth = measure_queries(index, queries, "exact", warmup)
                entries.append(
                    _query_entry(f"search:exact@{size}", "exact", size, width, storage, stats, 1.0, m, model)
                )
                if ann_info is not None:
                    stats, found = measure_queries(index, queries, "approximate", warmup)
                    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
                    name = f"search:{ann_info['kind']}@{size}"
                    entries.append(_query_entry(name, ann_info["kind"], size, width, storage, stats, recall, m, model))
            _remove_index(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings = {
        "mode": "search",
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "providers": list(providers) if providers else None,
        "search": {
            "images": images,
            "image_size": image_size,
            "batch_size": batch_size,
            "workers": workers,
            "sizes": sorted(set(int(s) for s in sizes)),
            "dim": width,
            "storage": storage,
            "approximate": ann_cls.name if ann_cls else None,
        },
        "search_note": (
            f"index: {images} shapes PNGs of {image_size} px, batch {batch_size}, {workers} decode workers, "
            f"median of 3; queries: {runs} one at a time after {warmup} warm-up, synthetic {width}-d {storage} "
            "vectors, recall@10 against exact"
        ),
    }
    return BenchResult(
        label=label or f"{device.name} · search",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        edgeclip_version=__version__,
        device=device,
        settings=settings,
        entries=tuple(entries),
    )


def _query_entry(
    name: str, method: str, size: int, dim: int, storage: str, stats: Any, recall: float, m: Any, model: Any
) -> BenchEntry:
    return BenchEntry(
        name,
        "bundle",
        "ok",
        m.target,
        m.precision,
        model=model,
        runtime="numpy (blocked matmul)" if method == "exact" else method,
        search=SearchFigures("query", method, size, dim, storage, latency=stats, recall_at_10=round(recall, 4)),
    )


__all__ = ["run_search_bench", "synthetic_vectors", "write_synthetic_index"]
