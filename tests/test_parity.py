"""The torch-free parity module: cosine statistics, floors per precision, the accuracy gate's figures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeclip.errors import ExportError, UsageError
from edgeclip.metrics.parity import (
    PARITY_FLOORS,
    CosineStats,
    GateReport,
    cosine_stats,
    mean_floor,
    parity_floor,
    parity_report,
    parity_shortfall,
    top1_predictions,
)

NO_TORCH = """
import sys
for m in ("torch", "open_clip", "timm", "torchvision"):
    sys.modules[m] = None
from edgeclip.metrics.parity import PARITY_FLOORS, mean_floor, parity_floor
import edgeclip.bench.run as bench_run
floors = {p: parity_floor(p) for p in PARITY_FLOORS}
bench = {p: bench_run.parity_floor(p) for p in PARITY_FLOORS}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "timm") and sys.modules[m])
print(floors == PARITY_FLOORS, floors == bench, floors["int8"], mean_floor("int8"), heavy)
"""


def test_floors_read_without_torch_and_bench_holds_rows_to_them() -> None:
    """With torch blocked the floors load, and the bench's parity check gets a floor (not None) per precision."""
    out = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True 0.97 0.99 []"


def test_export_side_uses_the_same_floors() -> None:
    from edgeclip.export.options import ExportOptions

    assert ExportOptions().min_cosine == PARITY_FLOORS["fp32"] == parity_floor("fp32")
    assert parity_floor("fp16") == 0.999 and parity_floor("int4") is None


def test_int8_is_held_on_its_mean_and_its_worst_input_other_precisions_on_the_worst() -> None:
    """The issue's int8 figure is the mean (>= 0.99); one input may sit lower, down to 0.97, and no further."""
    assert parity_shortfall(0.975, 0.996, "int8") is None  # one out-of-domain photo at 0.975, the rest close
    assert parity_shortfall(0.975, 0.985, "int8") == "mean cosine 0.985000 < 0.99"
    assert parity_shortfall(0.94, 0.995, "int8") == "min cosine 0.940000 < 0.97"  # a broken resize's cosine
    assert parity_shortfall(0.99995, 0.99999, "fp32") is None
    assert parity_shortfall(0.9998, 0.99999, "fp32") == "min cosine 0.999800 < 0.9999"
    assert parity_shortfall(0.999, 0.9995, "fp16") is None
    # a target that lowers the floor on the worst input (CoreML's 4-bit palette: 0.95) holds the mean to it too
    assert parity_shortfall(0.96, 0.97, "fp16", min_floor=0.95) is None
    assert parity_shortfall(0.94, 0.97, "fp16", min_floor=0.95) == "min cosine 0.940000 < 0.95"
    assert parity_shortfall(0.5, 0.5, "int4") is None  # a precision without floors is not held
    assert mean_floor("fp32") == parity_floor("fp32") and mean_floor("int8") == 0.99


def test_cosine_stats_on_known_rows() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [1.0, 1.0]], np.float32)
    cand = np.array([[2.0, 0.0], [0.0, -1.0], [3.0, 4.0], [1.0, 0.0]], np.float32)  # cosines 1, -1, 1, 1/sqrt2
    stats = cosine_stats(ref, cand)
    assert isinstance(stats, CosineStats) and stats.samples == 4
    assert stats.min == pytest.approx(-1.0) and stats.mean == pytest.approx((1 - 1 + 1 + 2**-0.5) / 4)
    assert stats.min <= stats.p1 <= stats.mean
    assert stats.to_dict() == {"samples": 4, "mean": stats.mean, "p1": stats.p1, "min": stats.min}
    assert stats.rounded(2).mean == round(stats.mean, 2)
    with pytest.raises(UsageError, match=r"shape \(3, 2\) cannot be compared with \(4, 2\)"):
        cosine_stats(ref, cand[:3])


def test_parity_report_is_the_manifest_record() -> None:
    ref = np.random.default_rng(0).normal(size=(6, 8))
    report = parity_report(ref, ref + 0.5, "pytorch")
    assert report.reference == "pytorch" and report.samples == 6
    assert report.max_abs_diff == pytest.approx(0.5) and report.min_cosine < report.mean_cosine < 1.0
    assert report.mean_cosine == pytest.approx(cosine_stats(ref, ref + 0.5).mean)


def test_gate_report_figures_pass_fail_and_record_keys() -> None:
    image = CosineStats(10, 0.98, 0.95, 0.94)
    text = CosineStats(10, 0.999, 0.998, 0.997)
    report = GateReport("onnx fp32 export", image, text, 0.9, 20, 0.01, 5)
    assert report.worst_drop == pytest.approx(0.02) and not report.passed
    # The manifest's gate record keeps its key names, so bundles exported before read the same.
    assert report.to_dict()["image"] == {"samples": 10, "mean_cosine": 0.98, "p1_cosine": 0.95, "min_cosine": 0.94}
    with pytest.raises(ExportError, match=r"image encoder mean cosine to fp32 is 0\.9800 \(drop 0\.0200 > "):
        report.check()
    GateReport("r", image, text, 0.9, 20, None, 5).check()  # no limit asked: passes


def test_top1_predictions() -> None:
    labels = np.eye(3)
    images = np.array([[0.1, 0.9, 0.0], [5.0, 0.0, 1.0]])
    assert top1_predictions(images, labels).tolist() == [1, 0]
