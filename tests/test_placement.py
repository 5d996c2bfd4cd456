"""Placement reports: ONNX Runtime node placement from real sessions, the export-time coverage hook, info and bench."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner

from edgeclip.cli import cli
from edgeclip.errors import ExportError
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.backends import _BACKENDS, RuntimeOptions, register_backend
from edgeclip.runtimes.backends.ort import OnnxRuntimeBackend, session_options
from edgeclip.runtimes.placement import Placement, bundle_placements, coverage_problem, from_assignment, placement_of
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ONNX Runtime's CPU wheel carries the Azure provider, which takes no ordinary op: a real provider list in which the
# preferred ("delegate") provider gets nothing and every node falls back to the CPU provider.
AZURE = "AzureExecutionProvider"
needs_azure = pytest.mark.skipif(
    AZURE not in onnxruntime.get_available_providers(), reason="this onnxruntime build has no Azure provider"
)


def _optimized_node_count(path: Path, tmp_path: Path) -> Counter[str]:
    """Op types of the graph ONNX Runtime splits among providers (after its basic optimizations), as it writes it."""
    opts = session_options(None)
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_onnxruntime_cpu_placement_counts_every_node_of_the_session(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    placed = placement_of(bundle.encoder("image"))
    assert isinstance(placed, Placement)
    ops = _optimized_node_count(tiny_bundle / bundle.manifest.encoders["image"].file, tmp_path)
    assert placed.backend == "onnxruntime" and placed.delegate == "CPUExecutionProvider"
    assert placed.total_ops == placed.delegated_ops == sum(ops.values())
    assert placed.fraction == 1.0 and placed.pieces == 1 and placed.fallback == {}
    assert "no accelerator provider" in placed.note


@needs_azure
def test_onnxruntime_placement_names_the_ops_the_preferred_provider_left(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle, providers=[AZURE, "CPUExecutionProvider"])
    placements = bundle_placements(bundle)
    text = placements["text"]
    assert isinstance(text, Placement)
    ops = _optimized_node_count(tiny_bundle / bundle.manifest.encoders["text"].file, tmp_path)
    assert text.delegate == AZURE and text.delegated_ops == 0 and text.pieces == 0 and text.fraction == 0.0
    assert text.fallback == dict(ops) and text.total_ops == sum(ops.values())
    problem = coverage_problem("text", text, 0.9)
    assert problem is not None and "MatMul" in problem and "0.0%" in problem
    # The session still runs (on the CPU provider) and the report round-trips through JSON.
    assert Placement.from_dict(json.loads(json.dumps(text.to_dict()))) == text


def test_pieces_are_fused_partitions_or_runs_of_consecutive_delegate_ops() -> None:
    per_op = [("X", ["Conv"]), ("X", ["Add"]), ("CPU", ["LayerNorm"]), ("X", ["MatMul"]), ("CPU", ["Gather"])]
    placed = from_assignment("b", "X", per_op)
    assert (placed.total_ops, placed.delegated_ops, placed.pieces) == (5, 3, 2)
    assert placed.fallback == {"Gather": 1, "LayerNorm": 1}
    fused = [("TRT", ["Conv", "Relu"]), ("TRT", ["MatMul", "Add"]), ("CPU", ["NonZero"])]
    assert from_assignment("b", "TRT", fused).pieces == 2
    assert from_assignment("b", "X", []).fraction == 1.0
    assert "Gather" in placed.summary() and "60.0%" in placed.summary()


def test_a_backend_without_placement_is_reported_not_guessed(tiny_bundle: Path) -> None:
    class Silent:
        def run(self, inputs):  # pragma: no cover - never run here
            return []

    assert placement_of(Silent()) is None


# --- the export-time hook, through a real export whose backend prefers a provider that takes nothing ------------


@pytest.fixture()
def azure_target():
    """A target exporting ONNX graphs whose backend asks ONNX Runtime for the Azure provider first."""
    from edgeclip.export.targets import _TARGETS, TargetSpec, register_target
    from edgeclip.export.targets import onnx as onnx_target

    class AzureFirst(OnnxRuntimeBackend):
        def __init__(self, path: Path, encoder, options: RuntimeOptions) -> None:
            super().__init__(path, encoder, RuntimeOptions((AZURE, "CPUExecutionProvider"), options.threads))

    spec = TargetSpec(
        "azure-first", "ONNX graphs on a provider that takes no op (a test's toy)", ("fp32",), ".onnx", True
    )
    register_target(spec)(onnx_target.export)
    register_backend("azure-first-ort", targets=("azure-first",))(AzureFirst)
    yield spec.name
    _TARGETS.pop(spec.name, None)
    _BACKENDS.pop("azure-first-ort", None)


@pytest.mark.slow
@needs_azure
def test_export_warns_naming_the_fallback_ops_and_require_delegate_fails(azure_target: str, tmp_path: Path) -> None:
    from edgeclip.export import export_bundle

    out = tmp_path / "strict.edgeclip"
    with pytest.raises(ExportError, match=r"--require-delegate: image encoder: AzureExecutionProvider takes 0 of"):
        export_bundle(TINY, output=out, target=azure_target, random_init=True, require_delegate=True, golden=False)
    assert not out.exists() and not list(tmp_path.glob(".strict*"))  # nothing half-written is left

    out = tmp_path / "warned.edgeclip"
    with pytest.warns(UserWarning) as warned:
        result = export_bundle(TINY, output=out, target=azure_target, random_init=True, golden=False)
    messages = [str(w.message) for w in warned if "low delegate coverage" in str(w.message)]
    assert len(messages) == 2 and all("left outside it: " in m and "MatMul" in m for m in messages)
    assert messages[0].startswith("low delegate coverage: image encoder: AzureExecutionProvider takes 0 of")
    recorded = result.manifest.target_info["placement"]
    assert recorded["image"]["delegate"] == AZURE and recorded["image"]["fraction"] == 0.0
    assert recorded["text"]["fallback"]["MatMul"] >= 1


def test_an_onnx_export_records_full_placement_and_passes_require_delegate(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    for role in ("image", "text"):
        placed = Placement.from_dict(manifest.target_info["placement"][role])
        assert placed.delegate == "CPUExecutionProvider" and placed.fraction == 1.0


# --- CLI and bench -------------------------------------------------------------------------------------------


def test_info_placement_prints_delegate_fraction_pieces_and_fallback(tiny_bundle: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["info", str(tiny_bundle), "--placement", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "placement  image  onnxruntime · CPUExecutionProvider:" in result.output
    assert "ops delegated (100.0%), 1 piece; fallback: none" in result.output
    result = runner.invoke(cli, ["info", str(tiny_bundle), "--placement", "--json"])
    data = json.loads(result.output)
    assert data["placement"]["backend"] == "onnxruntime"
    assert data["placement"]["text"]["fraction"] == 1.0 and data["placement"]["text"]["total_ops"] > 10
    result = runner.invoke(cli, ["info", str(tiny_bundle), "--threads", "2"])
    assert result.exit_code == 2 and "add one" in result.output


@needs_azure
def test_info_placement_honours_the_provider_flags(tiny_bundle: Path) -> None:
    args = ["info", str(tiny_bundle), "--placement", "--provider", AZURE, "--provider", "CPUExecutionProvider"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "AzureExecutionProvider: 0/" in result.output and "MatMul" in result.output


def test_info_placement_on_a_coreml_bundle_off_apple_says_it_cannot(tiny_bundle_copy: Path) -> None:
    import sys

    if sys.platform == "darwin":
        pytest.skip("CoreML runs here")
    manifest = tiny_bundle_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    data["target"] = "coreml"  # the CoreML backend refuses to load off Apple before it reads any file
    manifest.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["info", str(tiny_bundle_copy), "--placement", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert "placement  image  not reported: cannot load here: CoreML runs only on Apple platforms" in result.output


def test_bench_rows_record_placement(tiny_bundle: Path, tmp_path: Path) -> None:
    from edgeclip.bench import run_bench
    from edgeclip.bench.results import BenchResult

    copy = tmp_path / "b.edgeclip"
    shutil.copytree(tiny_bundle, copy)
    result = run_bench(bundles=[copy], runs=2, warmup=0, eval_images=4, isolate=False, threads=1)
    entry = result.entries[0]
    assert entry.status == "ok", entry.reason
    assert entry.placement["image"]["delegate"] == "CPUExecutionProvider"
    assert entry.placement["text"]["fraction"] == 1.0
    again = BenchResult.from_json(result.to_json())
    assert again.entries[0].placement == entry.placement
    assert np.isclose(again.entries[0].placement["image"]["fraction"], 1.0)


def test_export_help_shows_the_coverage_floor_the_export_uses() -> None:
    from edgeclip.runtimes.placement import DEFAULT_MIN_DELEGATED

    result = CliRunner().invoke(cli, ["export", "--help"])
    assert f"[default: ({DEFAULT_MIN_DELEGATED});" in " ".join(result.output.split())
