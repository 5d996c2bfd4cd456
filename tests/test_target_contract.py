"""Every registered export target is held to one contract (tests/target_contract.py): options round-trip through
CLI flags and bench items, bad values fail in one line with a suggestion, the tiny model exports (or the target
refuses at once, naming what it needs), the bundle verifies, and bench has a row for it."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeclip.export.targets import list_targets
from tests import target_contract as contract

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = [spec.name for spec in list_targets()]
# A target refused here may still have a mode that runs on this machine: exported too, held to the same checks.
RUNS_HERE_WITH = {"tensorrt": {"onnx_only": True}}


# Targets whose tiny export alone takes half a minute or more on 2 cores (coremltools' conversion, ExecuTorch's
# lowering): checked by the whole suite, left out of the `-m "not slow"` inner loop.
SLOW_EXPORTS = {"coreml", "executorch"}
EXPORTS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EXPORTS else n for n in NAMES]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict] | None]:
    """A target's tiny bundle, exported once per module: name -> (bundle, the options it was exported with)."""
    made: dict[str, tuple[Path, dict] | None] = {}
    root = tmp_path_factory.mktemp("contract")

    def bundle(name: str) -> tuple[Path, dict] | None:
        if name not in made:
            options: dict = {}
            out = contract.export_or_refuse(name, root / f"{name}.edgeclip")
            if out is None and name in RUNS_HERE_WITH:
                options = RUNS_HERE_WITH[name]
                out = contract.export_or_refuse(name, root / f"{name}-here.edgeclip", options)
            made[name] = None if out is None else (out, options)
        return made[name]

    return bundle


@pytest.mark.parametrize("name", NAMES)
def test_options_round_trip_through_cli_and_bench(name: str, tmp_path: Path) -> None:
    contract.check_options_round_trip(name, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_are_one_line_with_a_suggestion(name: str) -> None:
    contract.check_bad_values(name)


@pytest.mark.parametrize("name", EXPORTS)
def test_tiny_model_exports_and_verifies(name: str, bundles) -> None:
    made = bundles(name)
    if made is None:
        pytest.skip(f"{name} cannot export here, and refused at once saying what it needs (checked)")
    contract.check_bundle(name, *made)


@pytest.mark.parametrize("name", NAMES)
def test_bench_row_and_listing(name: str) -> None:
    contract.check_bench_row(name)
    contract.check_listed(name)


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("edgeclip")]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeclip"):
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def _load_time(statements: list[ast.stmt]) -> list[ast.stmt]:
    """The statements run when the module is imported (not function bodies, not `if TYPE_CHECKING:`)."""
    out = []
    for st in statements:
        if isinstance(st, ast.If):
            if not (isinstance(st.test, ast.Name) and st.test.id == "TYPE_CHECKING"):
                out += _load_time(st.body) + _load_time(st.orelse)
        elif isinstance(st, ast.Try):
            out += _load_time(st.body + [s for h in st.handlers for s in h.body] + st.orelse + st.finalbody)
        else:
            out.append(st)
    return out


def _module_imports(path: Path) -> tuple[set[str], set[str]]:
    """edgeclip modules `path` imports at module import time, and anywhere (inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {n for st in _load_time(tree.body) for n in _names(st)}
    return top, {n for node in ast.walk(tree) for n in _names(node)}


def test_registries_never_import_their_members_and_edgeclip_has_no_import_circle() -> None:
    """Registration flows one way: members import their registry; nothing imported at load time forms a circle."""
    root = Path(__file__).resolve().parents[1]
    modules = {}
    for path in (root / "edgeclip").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for registry in ("edgeclip.export.targets", "edgeclip.bench.subjects", "edgeclip.runtimes.backends"):
        members = {m for m in modules if m.startswith(registry + ".")}
        assert members, registry
        _, anywhere = _module_imports(modules[registry])
        assert not (anywhere & members), f"{registry} imports its members {sorted(anywhere & members)}"
    graph = {}
    for name, path in modules.items():
        top, _ = _module_imports(path)
        graph[name] = {m for m in top if m in modules and m != name}
    assert find_circle(graph) is None, " -> ".join(find_circle(graph) or [])


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of load-time imports, or None (a module importing the package it belongs to is not one)."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):
                return [*trail[trail.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*trail, nxt])):
                return found
        state[node] = 2
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"p": {"p.m"}, "p.m": {"p"}}) is None  # a package's __init__ and its module
    assert find_circle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "registry.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nimport edgeclip.errors\nif TYPE_CHECKING:\n    import edgeclip.cli\n"
        "def load():\n    from edgeclip.export.targets import onnx\n",
        encoding="utf-8",
    )
    top, anywhere = _module_imports(source)
    assert top == {"edgeclip.errors"} and "edgeclip.export.targets.onnx" in anywhere
