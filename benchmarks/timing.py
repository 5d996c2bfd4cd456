"""Interleaved timing on a shared machine, and ORT's per-op profile: what the speed scripts in benchmarks/ share."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def _busy_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine and this process have spent busy so far (steal counts as busy)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    own = os.times()
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def time_interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, inner: int = 5, max_other: float = 0.05
) -> dict[str, float]:
    """Median ms per call over `rounds` quiet rounds, candidates shuffled within each round.

    A round counts only when other processes used under `max_other` of a CPU during it: on a shared machine a
    neighbour's burst then lands on no candidate rather than on one, so the ratios within a run hold.
    """
    for fn in fns.values():
        for _ in range(3):
            fn()
    kept: dict[str, list[float]] = {k: [] for k in fns}
    tries = 0
    while len(next(iter(kept.values()))) < rounds and tries < rounds * 20:
        tries += 1
        this_round = {}
        busy0, own0, wall0 = *_busy_seconds(), time.perf_counter()
        for name, fn in random.sample(list(fns.items()), len(fns)):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            this_round[name] = (time.perf_counter() - start) / inner * 1e3
        busy1, own1, wall1 = *_busy_seconds(), time.perf_counter()
        if ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0) < max_other:
            for name, ms in this_round.items():
                kept[name].append(ms)
        else:
            time.sleep(1.0)
    print(f"  kept {len(next(iter(kept.values())))} quiet rounds of {tries}")
    return {k: statistics.median(v) if v else float("nan") for k, v in kept.items()}


def node_times(session, fn: Callable[[], object], runs: int = 30) -> dict[str, tuple[str, float]]:
    """Median kernel µs per node over `runs` calls of a session made with enable_profiling: {node: (op, µs)}."""
    for _ in range(runs):
        fn()
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            per_node[node].append(e["dur"])
            op_of[node] = e["args"]["op_name"]
    return {node: (op_of[node], statistics.median(us)) for node, us in per_node.items()}


def print_shares(times: dict[str, float], title: str, top: int = 10) -> None:
    """Print each key's share of the total, biggest first: the 'where does the time go' table."""
    total = sum(times.values())
    print(f"    {title}: kernel total {total / 1e3:.2f} ms/run")
    for key, us in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        print(f"      {key:28s} {us / total * 100:5.1f}%  {us / 1e3:6.2f} ms")


def op_totals(times: dict[str, tuple[str, float]]) -> dict[str, float]:
    """node_times summed per op type: {op: µs per run}."""
    per_op: collections.Counter = collections.Counter()
    for op, us in times.values():
        per_op[op] += us
    return dict(per_op)


def op_profile(session, fn: Callable[[], object], runs: int = 30) -> None:
    """Print ORT's per-op-type share of kernel time."""
    print_shares(op_totals(node_times(session, fn, runs)), "per op type")


def _timing_worker(conn, factory: Callable[[], Callable[[], object]]) -> None:
    """One candidate in its own process: build it, then time `inner` calls whenever the parent asks."""
    fn = factory()
    for _ in range(3):
        fn()
    conn.send("ready")
    while (inner := conn.recv()) is not None:
        fn()  # the block's first call wakes this process's threads after the pause: not counted
        calls = []
        for _ in range(inner):
            start = time.perf_counter()
            fn()
            calls.append((time.perf_counter() - start) * 1e3)
        conn.send(statistics.median(calls))


def time_in_processes(
    factories: dict[str, Callable[[], Callable[[], object]]], rounds: int, inner: int = 5, settle: float = 0.05
) -> dict[str, float]:
    """Median ms per call over `rounds` rounds (of each round, the median of `inner` calls after one untimed call),
    each candidate in its OWN process, run one at a time, shuffled.

    In one process, runtimes disturb each other on a 2-core machine: ONNX Runtime's and XNNPACK's thread pools
    spin after a run, and their allocators and caches are shared; the candidate timed after another pays for it.
    Here only one process works at a time, and `settle` seconds pass between candidates so the last one's spinning
    threads park. `factories` must pickle (module-level functions, functools.partial of them): each builds its
    candidate inside its process.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = {}
    try:
        for name, factory in factories.items():
            parent, child = context.Pipe()
            process = context.Process(target=_timing_worker, args=(child, factory), daemon=True)
            process.start()
            workers[name] = (process, parent)
            if parent.recv() != "ready":
                raise RuntimeError(f"timing worker {name} did not start")
        kept: dict[str, list[float]] = {k: [] for k in factories}
        for _ in range(rounds):
            for name in random.sample(list(factories), len(factories)):
                time.sleep(settle)
                workers[name][1].send(inner)
                kept[name].append(workers[name][1].recv())
    finally:
        for process, conn in workers.values():
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return {k: statistics.median(v) for k, v in kept.items()}
