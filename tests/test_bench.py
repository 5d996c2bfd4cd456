"""`edgeclip bench`: real measurements of the tiny bundle (and the PyTorch eager baseline), the results schema, the
table's statuses, reports merged from several files, and compare's exit codes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeclip.bench import (
    BenchResult,
    collect_device_info,
    compare_results,
    format_result,
    load_report,
    load_results,
    parse_targets,
    parse_threshold,
    run_bench,
    save_results,
    write_report,
)
from edgeclip.bench.latency import current_rss_mb, summarize, time_runs
from edgeclip.bench.report import pareto_front
from edgeclip.bench.results import SCHEMA_VERSION, LatencyStats
from edgeclip.bench.table import delegated_cell
from edgeclip.cli import cli
from edgeclip.errors import ResultsError, UsageError
from edgeclip.runtimes.checksums import sha256_file
from tests.conftest import TINY

FAST = dict(runs=5, warmup=1, eval_images=16, isolate=False)


def run_cli(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def results(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The tiny bundle measured with 1 and 2 threads, batch 1 and 4, each run saved as a results file."""
    out = tmp_path_factory.mktemp("results")
    files = {}
    for threads in (1, 2):
        result = run_bench(bundles=[tiny_bundle], batch_sizes=(1, 4), threads=threads, **FAST)
        files[threads] = save_results(result, out / f"tiny-{threads}t.json")
    return files


# --- measuring ------------------------------------------------------------------------------------------------


def test_a_bundle_run_measures_every_stage_batch_and_figure(results: dict[int, Path], tiny_bundle: Path) -> None:
    result = load_results(results[1])
    (entry,) = result.entries
    assert entry.status == "ok" and entry.reason is None and entry.kind == "bundle"
    assert entry.name == f"{tiny_bundle.name} (onnx:fp32)" and entry.runtime.startswith("onnxruntime")
    assert set(entry.latency) == {"image", "text", "end_to_end"}
    for series in entry.latency.values():
        assert [s.batch for s in series] == [1, 4]
        for s in series:
            assert s.count == 5 and 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms
            assert s.min_ms <= s.mean_ms
    # End to end includes preprocessing a 640x640 frame: never faster than the image encoder alone.
    assert entry.stats("end_to_end").p50_ms > entry.stats("image").p50_ms
    files = {p.name: p.stat().st_size for p in tiny_bundle.iterdir() if p.suffix == ".onnx"}
    assert entry.size_bytes == {"image": files["image_encoder.onnx"], "text": files["text_encoder.onnx"]}
    assert 0 < entry.cold_start_ms["image"] < entry.cold_start_ms["total"]
    assert entry.memory_mb["peak"] >= entry.memory_mb["before_load"] > 0
    acc = entry.accuracy
    assert (acc.dataset, acc.images, acc.classes) == ("shapes-eval", 16, 8) and 0 <= acc.top1 <= 1
    # A lone bundle is its own reference: it is the baseline, and parity needs a second row.
    assert entry.baseline and entry.parity is None
    assert result.settings["threads"] == 1 and result.settings["isolated"] is False
    assert result.label.endswith("1 threads")


@pytest.mark.slow
def test_model_run_exports_compares_with_eager_and_marks_what_cannot_run(tmp_path: Path) -> None:
    """--model: ONNX exported and run, CoreML exported (cannot run off Apple: ❎), PyTorch eager as the baseline;
    every row in its own worker process."""
    pytest.importorskip("coremltools", reason="the coreml target needs coremltools")
    out = tmp_path / "run.json"
    res = run_cli(
        "bench",
        "--model",
        TINY,
        "--random-init",
        "--targets",
        "onnx:fp32,coreml:fp16,torch",
        "--runs",
        4,
        "--warmup",
        1,
        "--eval-images",
        16,
        "--threads",
        1,
        "--json",
        out,
    )
    assert res.exit_code == 0, res.output
    result = load_results(out)
    onnx, coreml, torch_row = (result.entry(n) for n in ("onnx:fp32", "coreml:fp16", "torch"))
    assert torch_row.status == "ok" and torch_row.baseline and torch_row.runtime.startswith("torch")
    assert onnx.status == "ok" and onnx.export_s > 0 and result.settings["isolated"] is True
    assert onnx.model.model_id == torch_row.model.model_id  # the same random weights on both sides
    assert onnx.parity.reference == "torch" and onnx.parity.floor == 0.9999
    assert min(onnx.parity.image.min, onnx.parity.text.min) > 0.9999
    assert onnx.accuracy.top1 == pytest.approx(torch_row.accuracy.top1, abs=1 / 16)
    # Each worker's peak memory is its own: not this (much bigger) parent process's, which a fork would carry over.
    assert 0 < onnx.memory_mb["peak"] < current_rss_mb()
    if sys.platform != "darwin":
        assert coreml.status == "failed_checks" and "CoreML runs only on Apple platforms" in coreml.reason
        assert coreml.size_bytes["image"] > 0 and not coreml.latency
        assert "❎ failed checks" in res.output and "❎ coreml:fp16: CoreML runs only" in res.output
    assert "✅ ran" in res.output and "vs base" in res.output and "ref" in res.output
    # The ONNX row's placement, as its sessions reported it, is a column: every op on the CPU provider, one piece.
    assert onnx.placement["image"]["fraction"] == 1.0 and onnx.placement["image"]["pieces"] == 1
    assert delegated_cell(onnx) == "img 100% (1) / txt 100% (1)" and delegated_cell(torch_row) == "-"
    assert "delegated (pieces)" in res.output and "img 100% (1) / txt 100% (1)" in res.output
    partial = {"image": {**onnx.placement["image"], "fraction": 0.97654, "pieces": 4}, "text": {"unavailable": "no"}}
    assert delegated_cell(replace(onnx, placement=partial)) == "img 97.7% (4) / txt ?"


@pytest.mark.slow
def test_export_failure_is_a_row_and_the_rest_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A converter that is not installed (coremltools made unimportable here) fails that export: ❌ with why."""
    monkeypatch.setitem(sys.modules, "coremltools", None)
    result = run_bench(model=TINY, random_init=True, targets=["coreml", "torch"], **FAST)
    coreml, torch_row = result.entries
    assert coreml.status == "export_failed" and "coremltools" in coreml.reason and not coreml.latency
    assert torch_row.status == "ok" and torch_row.baseline
    table = format_result(result)
    assert "❌ export failed" in table and f"❌ coreml:fp16: {coreml.reason}" in table


@pytest.mark.slow
def test_bundles_with_a_model_are_measured_against_its_eager_baseline(tiny_bundle: Path) -> None:
    """Existing bundles plus --model: no export, the PyTorch eager row is the baseline and the parity reference."""
    result = run_bench(bundles=[tiny_bundle], model=TINY, random_init=True, **FAST)
    bundle_row, torch_row = result.entries
    assert torch_row.name == "torch" and torch_row.baseline and bundle_row.export_s is None
    assert bundle_row.model.model_id == torch_row.model.model_id
    assert bundle_row.parity.reference == "torch" and bundle_row.parity.worst_min > 0.9999
    assert result.settings["mode"] == "bundles+model"


def test_a_bundle_that_cannot_be_read_is_a_row(tiny_bundle: Path, tiny_bundle_copy: Path) -> None:
    (tiny_bundle_copy / "manifest.json").write_text("{not json", encoding="utf-8")
    result = run_bench(bundles=[tiny_bundle, tiny_bundle_copy], **FAST)
    good, bad = result.entries
    assert good.status == "ok" and bad.status == "failed_checks"
    assert "is not valid JSON" in bad.reason and bad.name == "copy.edgeclip (?:?)"


def test_parity_below_the_floor_fails_the_checks(tiny_bundle: Path, tiny_bundle_copy: Path) -> None:
    """A bundle of other weights is not compared; one whose encoder really differs fails the parity floor."""
    import onnx
    from onnx import numpy_helper

    path = tiny_bundle_copy / "image_encoder.onnx"
    graph = onnx.load(path)
    init = max(graph.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    noisy = numpy_helper.to_array(init) * np.float32(1.5)  # a real, wrong encoder: weights scaled
    init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    onnx.save(graph, path)
    # recorded in the manifest, as a bundle exported with these weights would be (bench verifies what it loads)
    manifest = json.loads((tiny_bundle_copy / "manifest.json").read_text())
    digest = sha256_file(path)
    manifest["encoders"]["image"]["sha256"] = manifest["checksums"]["image_encoder.onnx"] = digest
    (tiny_bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_bench(bundles=[tiny_bundle, tiny_bundle_copy], reference=str(tiny_bundle), **FAST)
    ref, changed = result.entries
    assert ref.baseline and ref.status == "ok"
    assert changed.parity is not None and changed.parity.text.min > 0.9999  # text encoder untouched
    assert changed.parity.image.min < 0.9999
    assert changed.status == "failed_checks" and "image encoder parity" in changed.reason


def test_bench_runs_with_torch_blocked(tiny_bundle: Path, tmp_path: Path) -> None:
    """On a device without torch: the bundle is measured and the results file written."""
    code = (
        "import sys\n"
        "for m in ('torch', 'open_clip', 'timm', 'torchvision'): sys.modules[m] = None\n"
        "from edgeclip.cli import main\n"
        "main()\n"
    )
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "bench",
            str(tiny_bundle),
            "--runs",
            "3",
            "--warmup",
            "0",
            "--eval-images",
            "8",
            "--no-isolate",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert proc.returncode == 0, proc.stderr
    assert load_results(out).entries[0].status == "ok"


# --- the results schema ------------------------------------------------------------------------------------------


def test_results_round_trip(results: dict[int, Path]) -> None:
    result = load_results(results[2])
    again = BenchResult.from_json(result.to_json())
    assert again == result and again.to_json() == result.to_json()
    data = json.loads(results[2].read_text())
    assert data["schema"] == "edgeclip-bench-results" and data["schema_version"] == SCHEMA_VERSION
    assert data["device"]["cpu_logical"] == os.cpu_count()
    assert data["entries"][0]["latency"]["image"][1]["throughput_per_s"] > 0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"schema_version": "2.0"}, "upgrade edgeclip"),
        ({"schema_version": "0.3"}, "re-run `edgeclip bench`"),
        ({"schema_version": "one"}, "MAJOR.MINOR"),
        ({"schema": "something-else"}, "is not an edgeclip bench results file"),
        ({"entries": "none"}, "entries is 'none'"),
    ],
)
def test_other_schemas_are_refused_with_the_file_named(results, tmp_path: Path, change, words) -> None:
    data = {**json.loads(results[1].read_text()), **change}
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="other.json") as err:
        load_results(path)
    assert words in str(err.value)


def test_a_newer_minor_version_with_new_fields_is_read(results, tmp_path: Path) -> None:
    data = json.loads(results[1].read_text())
    data["schema_version"] = "1.9"
    data["new_top_level_field"] = {"x": 1}
    data["entries"][0]["new_entry_field"] = [1, 2]
    path = tmp_path / "newer.json"
    path.write_text(json.dumps(data))
    assert load_results(path).entries[0].status == "ok"


def test_not_json_and_pytest_benchmark_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "notes.json"
    bad.write_text("median was fine")
    with pytest.raises(ResultsError, match=r"notes.json is not JSON"):
        load_results(bad)
    pb = tmp_path / "pb.json"
    pb.write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    with pytest.raises(ResultsError, match="looks like a pytest-benchmark file"):
        load_results(pb)
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "missing.json")


# --- report ------------------------------------------------------------------------------------------------------


def test_report_merges_files_into_markdown_html_and_png(results, tmp_path: Path) -> None:
    res = run_cli(
        "bench",
        "report",
        results[1],
        results[2],
        "--markdown",
        tmp_path / "r.md",
        "--html",
        tmp_path / "r.html",
        "--plot",
        tmp_path / "p.png",
    )
    assert res.exit_code == 0, res.output
    md = (tmp_path / "r.md").read_text()
    labels = [load_results(results[t]).label for t in (1, 2)]
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert all(label in header for label in labels)  # one column per device/run
    row = next(line for line in md.splitlines() if line.startswith(f"| {TINY} · tiny.edgeclip (onnx:fp32)"))
    assert len([c for c in row.split("|")[2:-1] if c.strip()]) == 2  # a p50 from each run
    html = (tmp_path / "r.html").read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html
    assert all(label in html for label in labels)
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size[0] >= 800


def test_report_of_a_folder_skips_and_names_bad_files(results, tmp_path: Path) -> None:
    folder = tmp_path / "farm"
    folder.mkdir()
    for t, path in results.items():
        (folder / f"dev{t}.json").write_bytes(path.read_bytes())
    (folder / "broken.json").write_text("{")
    report = load_report([folder])
    assert len(report.runs) == 2
    assert [p.name for p, _ in report.skipped] == ["broken.json"] and "is not JSON" in report.skipped[0][1]
    res = run_cli("bench", "report", folder)
    assert res.exit_code == 0 and "skipped" in res.output and "broken.json" in res.output
    assert "# edgeclip benchmark report" in res.output
    res = run_cli("bench", "report", folder, "--strict")
    assert res.exit_code == 1 and "broken.json is not JSON" in res.output


def test_report_of_nothing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no results files given"):
        load_report([tmp_path])  # an empty folder
    (tmp_path / "x.json").write_text("[]")
    res = run_cli("bench", "report", tmp_path / "x.json", tmp_path / "missing.json")
    assert res.exit_code == 1
    assert "none of the 2 files holds edgeclip bench results" in res.output and "missing.json" in res.output
    assert run_cli("bench", "report").exit_code == 2


def test_pareto_front_keeps_points_nothing_beats() -> None:
    points = [(10.0, 60.0), (5.0, 50.0), (20.0, 70.0), (12.0, 55.0), (5.0, 40.0), (30.0, 65.0)]
    assert pareto_front(points) == [1, 0, 2]


def test_plot_needs_rows_with_accuracy_and_latency(results, tmp_path: Path) -> None:
    data = json.loads(results[1].read_text())
    data["entries"][0].update(status="failed_checks", latency={}, reason="x")
    path = tmp_path / "none.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="nothing to plot"):
        write_report(load_report([path]), plot=tmp_path / "p.png")


# --- compare -----------------------------------------------------------------------------------------------------


def _slower(result: BenchResult, factor: float) -> BenchResult:
    def scaled(s: LatencyStats) -> LatencyStats:
        return replace(s, **{k: getattr(s, k) * factor for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms")})

    entries = tuple(
        replace(e, latency={k: tuple(map(scaled, v)) for k, v in e.latency.items()}) for e in result.entries
    )
    return replace(result, entries=entries)


def test_compare_exits_1_beyond_the_threshold_and_0_within(results, tmp_path: Path) -> None:
    old = load_results(results[1])
    same = run_cli("bench", "compare", results[1], results[1], "--fail-on", "median:10%")
    assert same.exit_code == 0 and "no regressions" in same.output
    slow = save_results(_slower(old, 1.5), tmp_path / "slow.json")
    res = run_cli("bench", "compare", results[1], slow, "--fail-on", "median:10%")
    assert res.exit_code == 1 and "REGRESSION" in res.output and "beyond median:10%" in res.output
    assert "+50.0%" in res.output
    assert run_cli("bench", "compare", results[1], slow, "--fail-on", "median:60%").exit_code == 0
    assert run_cli("bench", "compare", results[1], slow).exit_code == 0  # no threshold: report only
    data = json.loads(run_cli("bench", "compare", results[1], slow, "--fail-on", "p90:1%", "--json").output)
    assert data["regressions"] and {c["stat"] for c in data["changes"]} >= {"p50", "p90", "top1"}


def test_compare_a_row_that_stopped_running_is_a_regression(results, tmp_path: Path) -> None:
    old = load_results(results[1])
    broken = replace(
        old,
        entries=tuple(
            replace(e, status="failed_checks", reason="gone", latency={}, accuracy=None) for e in old.entries
        ),
    )
    comparison = compare_results(old, broken)
    assert len(comparison.regressions) == 1 and "gone" in comparison.regressions[0]
    path = save_results(broken, tmp_path / "broken.json")
    assert run_cli("bench", "compare", results[1], path).exit_code == 1


def test_compare_notes_runs_with_other_settings(results) -> None:
    comparison = compare_results(load_results(results[1]), load_results(results[2]))
    assert any("threads: 1 vs 2" in n for n in comparison.notes)


@pytest.mark.parametrize(
    ("text", "stat", "limit", "relative"),
    [
        ("median:10%", "p50", 10.0, True),
        ("p90:2ms", "p90", 2.0, False),
        ("MEAN:5.5%", "mean", 5.5, True),
        ("top1:1%", "top1", 1.0, False),
        ("min:0.5ms", "min", 0.5, False),
    ],
)
def test_thresholds_parse(text: str, stat: str, limit: float, relative: bool) -> None:
    t = parse_threshold(text)
    assert (t.stat, t.limit, t.relative) == (stat, limit, relative)


@pytest.mark.parametrize("text", ["median:10", "speed:10%", "median", "top1:2ms", "median:-5%"])
def test_bad_thresholds_exit_2(results, text: str) -> None:
    res = run_cli("bench", "compare", results[1], results[1], "--fail-on", text)
    assert res.exit_code == 2 and "--fail-on" in res.output


# --- parts -------------------------------------------------------------------------------------------------------


def test_targets_come_from_the_registry() -> None:
    from edgeclip.export.targets import list_targets

    names = [c.name for c in parse_targets(["all"])]
    expected = [f"{s.name}:{p}" for s in list_targets() for p in s.precisions] + ["torch"]
    assert names == expected
    assert [c.name for c in parse_targets(["onnx", "torch", "onnx:fp32"])] == ["onnx:fp32", "torch"]
    with pytest.raises(UsageError, match="did you mean 'onnx'"):
        parse_targets(["onxx"])
    with pytest.raises(UsageError, match="has no precision 'int4'"):
        parse_targets(["onnx:int4"])


def test_target_options_ride_in_the_item_and_are_checked_by_the_target() -> None:
    from edgeclip.export.targets import get_target

    assert "dynamic" in get_target("onnx").spec.options
    (cand,) = parse_targets(["onnx:int8+dynamic+max_cosine_drop=0.05"])
    assert cand.name == "onnx:int8+dynamic+max_cosine_drop=0.05"
    assert cand.options == (("dynamic", True), ("max_cosine_drop", "0.05")) and cand.invalid is None
    with pytest.raises(UsageError, match="did you mean 'dynamic'"):
        parse_targets(["onnx:int8+dynamc"])
    # The flag's spelling works too: `max-cosine-drop` is the option max_cosine_drop.
    (flag_spelling,) = parse_targets(["onnx:int8+dynamic+max-cosine-drop=0.05"])
    assert flag_spelling.invalid is None
    opts = get_target("onnx").parse_options(dict(flag_spelling.options), "int8")
    assert opts.max_cosine_drop == 0.05
    with pytest.raises(UsageError, match=r"onnx:int8\+KEY\[=VALUE\]"):
        parse_targets(["onnx:int8"])  # int8 needs calibration or dynamic: said before any work
    with pytest.raises(UsageError, match="target options read"):
        parse_targets(["onnx:int8+=1"])
    # `all` does not stop at a precision that needs options: that row is ❌ with what to ask for.
    expanded = {c.name: c for c in parse_targets(["all"])}
    assert "onnx:int8+KEY[=VALUE]" in expanded["onnx:int8"].invalid


def test_a_file_option_names_its_row_by_file_name_so_rows_match_across_machines(tmp_path: Path) -> None:
    calib = tmp_path / "deep" / "folder" / "calib.npz"
    calib.parent.mkdir(parents=True)
    calib.write_bytes(b"")
    (cand,) = parse_targets([f"onnx:int8+calibration={calib}"])
    assert cand.name == "onnx:int8+calibration=calib.npz"
    assert cand.options == (("calibration", str(calib)),)  # the export still gets the whole path


def test_a_target_this_machine_cannot_build_is_a_row_not_an_error() -> None:
    """TensorRT without its package or GPU: the item is right, this machine cannot build it: ❌ with why."""
    from edgeclip.export.targets import list_targets

    assert "tensorrt" in {s.name for s in list_targets()}
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the target can build")
    except ImportError:
        pass
    fp16, torch_row = parse_targets(["tensorrt:fp16", "torch"])
    assert fp16.invalid and "NVIDIA" in fp16.invalid and torch_row.invalid is None
    assert "NVIDIA" in {c.name: c for c in parse_targets(["all"])}["tensorrt:fp16"].invalid
    result = run_bench(model=TINY, random_init=True, targets=["tensorrt:fp16"], **FAST)
    (row,) = result.entries
    assert row.status == "export_failed" and "NVIDIA" in row.reason and not row.latency
    assert "❌ export failed" in format_result(result)


def test_bad_run_requests_exit_2(tiny_bundle: Path, tmp_path: Path) -> None:
    res = run_cli("bench", "run")
    assert res.exit_code == 2 and "give bundle folders or --model NAME" in res.output
    res = run_cli("bench", tiny_bundle, "--model", TINY)
    assert res.exit_code == 2 and "--pretrained FILE or --random-init" in res.output
    res = run_cli("bench", tiny_bundle, "--targets", "onnx")
    assert res.exit_code == 2 and "--targets chooses what --model is exported to" in res.output
    res = run_cli("bench", tmp_path / "nope.edgeclip")
    assert res.exit_code == 2 and "does not exist" in res.output
    res = run_cli("bench", tiny_bundle, "--batch", "1,x")
    assert res.exit_code == 2 and "whole numbers" in res.output
    res = run_cli("bench", "--model", TINY, "--random-init", "--targets", "onnx:int4")
    assert res.exit_code == 2 and "has no precision" in res.output


def test_bench_help_has_examples() -> None:
    for command in (["bench"], ["bench", "run"], ["bench", "report"], ["bench", "compare"]):
        res = run_cli(*command, "--help")
        assert res.exit_code == 0 and "Example" in res.output and "edgeclip bench" in res.output


def test_latency_statistics() -> None:
    stats = summarize([i / 1000 for i in range(1, 101)], batch=4)
    assert (stats.count, stats.min_ms, stats.mean_ms) == (100, 1.0, 50.5)
    assert stats.p50_ms == pytest.approx(50.5) and stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01) and stats.throughput_per_s == pytest.approx(4000 / 50.5)
    calls = []
    assert len(time_runs(lambda: calls.append(1), runs=7, warmup=3)) == 7 and len(calls) == 10
    with pytest.raises(UsageError):
        time_runs(lambda: None, runs=0, warmup=0)


def test_device_facts_describe_this_machine() -> None:
    info = collect_device_info("farm-node-7")
    assert info.name == "farm-node-7" and info.system == platform.system()
    assert info.cpu_logical == os.cpu_count() and info.python == platform.python_version()
    assert "CPUExecutionProvider" in info.onnxruntime_providers and info.versions["onnxruntime"]
    if Path("/proc/cpuinfo").is_file() and platform.machine() == "x86_64":
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
        for isa in ("avx2", "avx512f", "avx512_vnni"):
            assert (isa in flags) == (isa in info.isa)
    assert type(info).from_dict(json.loads(json.dumps(info.to_dict()))) == info
