"""A target registered from outside edgeclip (tests/toy_target.py, one module, plugged in through the
`edgeclip.targets` entry-point group) gets CLI flags, bench parsing, `targets --json` and the contract for free."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeclip.export import targets
from edgeclip.runtimes import backends
from tests import target_contract as contract

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    """An installed distribution (a dist-info folder on sys.path) whose entry point names the toy module."""
    site = tmp_path_factory.mktemp("site")  # not on sys.path yet: edgeclip does not know the toy
    info = site / "edgeclip_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edgeclip-toy\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[edgeclip.targets]\ntoy = tests.toy_target\n", encoding="utf-8")
    assert "toy" not in [s.name for s in targets.list_targets()]
    sys.path.insert(0, str(site))
    targets.load_targets(refresh=True)
    yield "toy"
    sys.path.remove(str(site))
    targets._TARGETS.pop("toy", None)
    backends._BACKENDS.pop("toy-onnxruntime", None)
    sys.modules.pop("tests.toy_target", None)


def test_toy_target_plugs_in_and_meets_the_contract(toy: str, tmp_path: Path) -> None:
    assert toy in [s.name for s in targets.list_targets()]
    assert contract.check_options_round_trip(toy, tmp_path) == 1
    contract.check_bad_values(toy)
    contract.check_listed(toy)
    contract.check_bench_row(toy)
    bundle = contract.export_or_refuse(toy, tmp_path / "toy.edgeclip", {"toy_prefix": "copy"})
    assert bundle is not None and (bundle / "copy_image.onnx").is_file()
    contract.check_bundle(toy, bundle, {"toy_prefix": "copy"})
