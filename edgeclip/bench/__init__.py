"""Benchmarks: latency, memory, accuracy and parity per target/precision on this device, the versioned results
file a device farm collects, and reports and comparisons over many such files.

`run_bench` measures; `load_results`/`save_results` read and write the results file (schema in
`edgeclip.bench.results`); `load_report`/`write_report` merge files; `compare_results` finds regressions.
Nothing here imports torch unless a model is exported or the PyTorch eager baseline is measured.
"""

from edgeclip.bench.compare import compare_results, format_comparison, parse_threshold
from edgeclip.bench.device import DeviceInfo, collect_device_info
from edgeclip.bench.report import load_report, write_report
from edgeclip.bench.results import SCHEMA_VERSION, BenchEntry, BenchResult, load_results, save_results
from edgeclip.bench.run import parse_targets, run_bench
from edgeclip.bench.table import format_result

__all__ = [
    "SCHEMA_VERSION",
    "BenchEntry",
    "BenchResult",
    "DeviceInfo",
    "collect_device_info",
    "compare_results",
    "format_comparison",
    "format_result",
    "load_report",
    "load_results",
    "parse_targets",
    "parse_threshold",
    "run_bench",
    "save_results",
    "write_report",
]
