"""SIGTERM/SIGINT sent to real `edgeclip` processes: no staging left, the previous output intact, one line, 143/130."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TINY, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def start(*args: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "edgeclip", *map(str, args)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def loaded(proc: subprocess.Popen, library: str) -> bool:
    """Whether the process has mapped a shared library (the command's lazy imports ran, so it is inside the CLI)."""
    try:
        return library in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


def interrupt_when(proc: subprocess.Popen, ready: Callable[[], bool], signum: int, timeout: float = 300) -> str:
    """Send `signum` once `ready()`, wait for the exit, and return stderr; fail if the command ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"the command ended (rc {proc.returncode}) before it could be interrupted: {proc.stderr.read()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the command never reached the point to interrupt")
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return err


def one_line(stderr: str, signame: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"Error: interrupted by {signame}"), stderr
    assert "Traceback" not in stderr, stderr


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the command start")
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)]
)
def test_export_interrupted_leaves_no_staging_and_the_old_bundle(tiny_bundle: Path, tmp_path: Path, signum, code):
    out = tmp_path / "model.edgeclip"
    shutil.copytree(tiny_bundle, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = start("export", "-m", TINY, "--random-init", "-o", out, "--force", "-q")

    def staging_has_tokenizer() -> bool:
        return any((p / "tokenizer.json").exists() for p in tmp_path.glob(".model.edgeclip.partial-*"))

    err = interrupt_when(proc, staging_has_tokenizer, signum)
    assert proc.returncode == code, err
    one_line(err, signal.Signals(signum).name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.edgeclip"]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the command start")
def test_heads_add_interrupted_keeps_the_old_head(tiny_bundle_copy: Path, tmp_path: Path) -> None:
    first = start("heads", "add", tiny_bundle_copy, "--name", "pets", "--labels", "cat,dog", "-q")
    assert first.wait(120) == 0, first.stderr.read()
    head = (tiny_bundle_copy / "heads/pets.npz").read_bytes()
    manifest = (tiny_bundle_copy / "manifest.json").read_bytes()
    (tmp_path / "labels.txt").write_text("\n".join(f"label number {i}" for i in range(3000)))
    proc = start(
        "heads", "add", tiny_bundle_copy, "--name", "pets", "--labels", f"@{tmp_path / 'labels.txt'}", "--force"
    )
    err = interrupt_when(proc, lambda: loaded(proc, "onnxruntime"), signal.SIGTERM)
    assert proc.returncode == 143, err
    one_line(err, "SIGTERM")
    assert sorted(p.name for p in (tiny_bundle_copy / "heads").iterdir()) == ["pets.npz"]
    assert (tiny_bundle_copy / "heads/pets.npz").read_bytes() == head
    assert (tiny_bundle_copy / "manifest.json").read_bytes() == manifest


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the command start")
def test_calibrate_interrupted_keeps_the_old_set(tiny_bundle: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3000):
        Image.new("RGB", (8, 8), (i % 256, i // 256, 0)).save(images / f"{i:04d}.png")
    old = tmp_path / "calib.npz"
    old.write_bytes(b"the previous set")
    proc = start("calibrate", images, "-m", tiny_bundle, "-o", old, "--count", "3000", "--force", "-q")
    err = interrupt_when(proc, lambda: loaded(proc, "_imaging"), signal.SIGINT)
    assert proc.returncode == 130, err
    one_line(err, "SIGINT")
    assert old.read_bytes() == b"the previous set"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "images"]


@pytest.mark.slow  # trains nothing, but loads torch and a teacher in a subprocess: 14 s
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the command start")
def test_reinforce_interrupted_leaves_no_partial_shard(tmp_path: Path) -> None:
    teacher = write_random_checkpoint(tmp_path / "teacher.safetensors", TINY, seed=1)
    out = tmp_path / "shards"
    proc = start(
        "reinforce", "--images", "shapes:train:4000", "--teacher", f"{TINY}:{teacher}", "-k", "2",
        "--output", out, "-q",
    )  # fmt: skip
    err = interrupt_when(proc, lambda: any(out.glob(".*partial*")), signal.SIGTERM)
    assert proc.returncode == 143, err
    one_line(err, "SIGTERM")
    assert not [p for p in out.rglob("*") if "partial" in p.name]
