"""Latency the MLPerf SingleStream way: a warm-up, then timed queries one after another; and resident memory.

Every run is kept and summarized as min, p50, p90, p99, mean and the count (Qualcomm AI Hub's practice: median
and p90 from all runs, not the best one). Torch-free: a stage is any callable.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from edgeclip.bench.results import LatencyStats
from edgeclip.errors import UsageError

Stage = Callable[[], object]


def summarize(seconds: Sequence[float], batch: int) -> LatencyStats:
    """min/p50/p90/p99/mean in milliseconds over every timed run."""
    if not len(seconds):
        raise UsageError("no timed runs to summarize: expected at least one")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(
        batch=int(batch),
        count=int(ms.size),
        min_ms=round(float(ms.min()), 4),
        p50_ms=round(float(p50), 4),
        p90_ms=round(float(p90), 4),
        p99_ms=round(float(p99), 4),
        mean_ms=round(float(ms.mean()), 4),
    )


def time_runs(stage: Stage, runs: int, warmup: int) -> list[float]:
    """Seconds of each of `runs` calls made one after another, after `warmup` untimed calls."""
    if runs < 1 or warmup < 0:
        raise UsageError(f"runs {runs} and warmup {warmup}: expected runs >= 1 and warmup >= 0")
    for _ in range(warmup):
        stage()
    times = []
    clock = time.perf_counter
    for _ in range(runs):
        start = clock()
        stage()
        times.append(clock() - start)
    return times


def measure_stages(
    stages: Mapping[str, Mapping[int, Stage]], runs: int, warmup: int, on_stage: Callable[[str], None] | None = None
) -> dict[str, tuple[LatencyStats, ...]]:
    """Stats of every stage at every batch size: {stage: (stats per batch, smallest batch first)}."""
    out = {}
    for name, by_batch in stages.items():
        series = []
        for batch in sorted(by_batch):
            if on_stage is not None:
                on_stage(f"{name} batch {batch}")
            series.append(summarize(time_runs(by_batch[batch], runs, warmup), batch))
        out[name] = tuple(series)
    return out


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (MB), or None where the OS does not say."""
    # Linux: VmHWM belongs to this program's memory map. getrusage's ru_maxrss would also count the parent's
    # memory at fork time, which survives exec, so a worker started by a big parent would report the parent's size.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)  # macOS: bytes; else kB


def current_rss_mb() -> float | None:
    """Resident memory of this process now (MB): /proc on Linux, else the peak so far."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()
    return round(pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)
