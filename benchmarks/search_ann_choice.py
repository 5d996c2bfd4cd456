"""How the photo-search approximate index and storage were chosen (docs/search.md, "Measurements").

    python -m benchmarks.search_ann_choice ann --dim 64       # usearch vs faiss-cpu HNSW at 100k entries
    python -m benchmarks.search_ann_choice storage            # exact recall@10 of fp16 / int8 storage vs fp32

`ann` needs usearch and faiss-cpu installed (either is skipped when missing); recall@10 is against exact search
over the same vectors, on 200 held-out queries of the same clustered distribution.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _clustered(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c = centres[rng.integers(0, len(centres), n)]
    x = c + rng.standard_normal((n, centres.shape[1]), dtype=np.float32) * 0.9 / np.sqrt(centres.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def compare_ann(dim: int, n: int = 100_000, queries: int = 200) -> None:
    """Build time, recall@10 and one-query latency of usearch (f16, i8) and faiss HNSWFlat at n entries."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x, qs = _clustered(n, centres, rng), _clustered(queries, centres, rng)

    def exact(q: np.ndarray, k: int = 10) -> set[int]:
        s = x @ q
        i = np.argpartition(-s, k)[:k]
        return set(i[np.argsort(-s[i])].tolist())

    truth = [exact(q) for q in qs]

    def report(name: str, search, build_s: float) -> None:
        lat, rec = [], []
        for q, tr in zip(qs, truth, strict=True):
            t = time.perf_counter()
            got = search(q)
            lat.append(time.perf_counter() - t)
            rec.append(len(set(got) & tr) / 10)
        ms = np.array(lat) * 1e3
        print(
            f"D={dim} {name:34s} build {build_s:6.1f}s  recall@10 {np.mean(rec):.4f}  "
            f"p50 {np.percentile(ms, 50):.3f} ms p99 {np.percentile(ms, 99):.3f} ms",
            flush=True,
        )

    try:
        from usearch.index import Index
    except ImportError:
        print("usearch is not installed: skipped")
    else:
        for dtype in ("f16", "i8"):
            t = time.perf_counter()
            idx = Index(ndim=dim, metric="cos", dtype=dtype, connectivity=16, expansion_add=128, expansion_search=64)
            idx.add(np.arange(n), x, threads=2)
            built = time.perf_counter() - t
            for ef in (64, 128):
                idx.expansion_search = ef
                report(f"usearch {dtype} M16 ef{ef}", lambda q, idx=idx: idx.search(q, 10).keys.tolist(), built)
    try:
        import faiss
    except ImportError:
        print("faiss-cpu is not installed: skipped")
    else:
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        fi = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        fi.hnsw.efConstruction = 128
        fi.add(x)
        built = time.perf_counter() - t
        for threads in (2, 1):
            faiss.omp_set_num_threads(threads)
            for ef in (64, 128):
                fi.hnsw.efSearch = ef
                name = f"faiss HNSWFlat M16 ef{ef}" + (" 1thr" if threads == 1 else "")
                report(name, lambda q: fi.search(q[None], 10)[1][0].tolist(), built)


def compare_storage(dims: tuple[int, ...] = (64, 512), n: int = 100_000, queries: int = 200) -> None:
    """Exact recall@10 over fp16 and int8 stored vectors against fp32, as the index stores them."""
    from edgeclip.bench.search import synthetic_vectors
    from edgeclip.runtimes.search.ann import exact_topk
    from edgeclip.runtimes.search.store import decode_vectors, encode_vectors

    for dim in dims:
        x, q = synthetic_vectors(n, dim, seed=2), synthetic_vectors(queries, dim, seed=1)
        truth = [set(exact_topk(x, v, 10)[0].tolist()) for v in q]
        for storage in ("fp16", "int8"):
            rows = encode_vectors(x, storage)
            y = decode_vectors([b for b, _ in rows], [s for _, s in rows], storage, dim)
            recall = np.mean(
                [len(set(exact_topk(y, v, 10)[0].tolist()) & t) / 10 for v, t in zip(q, truth, strict=True)]
            )
            print(f"dim {dim} storage {storage}: exact recall@10 vs fp32 {recall:.4f} ({len(rows[0][0])} bytes/vector)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["ann", "storage"])
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    if args.what == "ann":
        compare_ann(args.dim)
    else:
        compare_storage()


if __name__ == "__main__":
    main()
