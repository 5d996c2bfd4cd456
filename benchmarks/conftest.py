"""Shared benchmark setup: device facts in machine_info and a ratio table for each group at the end of the run."""

from __future__ import annotations

from collections import defaultdict

import pytest

from benchmarks.mc2s0 import build_mc2s0

THREADS = 2


@pytest.fixture(scope="session")
def mc2s0(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Random-weight MobileCLIP2-S0 written to a checkpoint and exported as an fp32 bundle; one photo and caption."""
    return build_mc2s0(tmp_path_factory.mktemp("mc2s0"), THREADS)


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """Device facts a farm report needs besides pytest-benchmark's own: the same facts `edgeclip bench` records."""
    from edgeclip.bench.device import collect_device_info

    device = collect_device_info()
    machine_info["edgeclip_threads"] = THREADS
    machine_info["edgeclip_device"] = device.to_dict()
    # The flat keys earlier runs of this suite wrote, kept so that their JSON files still compare with new ones.
    machine_info["cpu_count"] = device.cpu_logical
    machine_info["onnxruntime"] = device.versions.get("onnxruntime")
    machine_info["platform_detail"] = device.platform
    machine_info["isa"] = list(device.isa)


def _ratio_rows(benchmarks) -> dict[str, list[tuple[str, float, float]]]:
    """Per group: (name, median ms, speed-up vs the group's baseline) — the baseline is marked in extra_info."""
    groups: dict[str, list] = defaultdict(list)
    for bench in benchmarks:
        if bench.stats is None:
            continue
        groups[bench.group or ""].append(bench)
    table = {}
    for group, items in groups.items():
        baseline = next((b for b in items if b.extra_info.get("baseline")), None)
        base = baseline.stats.median if baseline else None
        table[group] = [
            (b.name, b.stats.median * 1e3, (base / b.stats.median) if base else float("nan")) for b in items
        ]
    return table


def pytest_benchmark_update_json(config, benchmarks, output_json: dict) -> None:
    """Write each benchmark's speed-up over its group's baseline into the JSON, measured in this one run."""
    ratios = {name: ratio for rows in _ratio_rows(benchmarks).values() for name, _, ratio in rows}
    for bench in output_json.get("benchmarks", []):
        if bench["name"] in ratios:
            bench["extra_info"]["speedup_vs_baseline"] = round(ratios[bench["name"]], 3)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    write = terminalreporter.write_line
    write("")
    write("edgeclip: median latency and speed-up over each group's baseline (same run)")
    for group, rows in _ratio_rows(session.benchmarks).items():
        write(f"  [{group}]")
        for name, ms, ratio in sorted(rows, key=lambda r: -r[1]):
            write(f"    {name:<60} {ms:8.2f} ms   x{ratio:5.2f}")
