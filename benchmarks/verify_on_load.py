"""What verifying a bundle on load costs: sha256 of each file vs creating its runtime session (issue 18).

    python -m benchmarks.verify_on_load BUNDLE [--repeat 5]

Prints per file: bytes, cold sha256 ms (the first read of a run command), cached ms (the same process again), and
the whole bundle's load (manifest + tokenizer + both sessions) with and without verification.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.bundle import size_path
from edgeclip.runtimes.checksums import DIGESTS, DigestCache, sha256_path


def _ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _load(path: Path, verify: bool, fresh: bool = True) -> None:
    if fresh:
        DIGESTS.clear()  # as in a new process: nothing hashed yet
    bundle = load_bundle(path, verify=verify)
    bundle.tokenizer  # noqa: B018 - reads (and verifies) the tokenizer
    bundle.encoder("image")
    bundle.encoder("text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    manifest = load_bundle(args.bundle, verify=False).manifest
    files = sorted({*manifest.files(), *manifest.checksums})
    total = 0.0
    for relative in files:
        path = args.bundle / relative
        cold = _ms(lambda p=path: sha256_path(p), args.repeat)
        cache = DigestCache()
        cache.digest(path)
        cached = _ms(lambda p=path, c=cache: c.digest(p), args.repeat)
        total += cold
        print(f"{relative:<24} {size_path(path) / 1e6:8.1f} MB  sha256 {cold:7.1f} ms  cached {cached:6.3f} ms")
    print(f"{'all files':<24} {'':>11}  sha256 {total:7.1f} ms")
    off = _ms(lambda: _load(args.bundle, False), args.repeat)
    on = _ms(lambda: _load(args.bundle, True), args.repeat)
    again = _ms(lambda: _load(args.bundle, True, fresh=False), args.repeat)
    print(
        f"load (manifest, tokenizer, both sessions): --no-verify {off:.0f} ms, verified {on:.0f} ms, "
        f"verified again in the same process {again:.0f} ms"
    )


if __name__ == "__main__":
    main()
