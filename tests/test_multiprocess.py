"""Reinforcement across processes and schedulers: the worker split, the run plan, refusals, reruns, and the whole
chain under torchrun (reinforce -> distill -> export) against one process, on real files and real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeclip.cli import cli
from edgeclip.distill.augment import AugmentConfig
from edgeclip.distill.distributed import Workers, World, resolve_workers, shards_for
from edgeclip.distill.shards import (
    MANIFEST_NAME,
    DatasetManifest,
    ReinforcedShards,
    check_plan,
    compare_reinforced,
    reinforce,
)
from edgeclip.errors import DatasetError, UsageError
from tests.conftest import write_random_checkpoint

TEACHER = "EdgeCLIP-Tiny-ViT"
STUDENT = "EdgeCLIP-Student-XS"
SOURCE = "shapes:train:20"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _syn_captions(path: Path, count: int) -> Path:
    """Two synthetic captions per shapes record, as a captions file (the stand-in for a captioner)."""
    from edgeclip.distill.sources import open_source

    source = open_source(f"shapes:train:{count}")
    rows = []
    for i in range(count):
        record = source.record(i)
        rows.append({"uid": record.uid, "captions": [f"a picture: {record.caption}", f"{record.caption}, drawn"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("multiprocess")
    teacher = write_random_checkpoint(folder / "teacher.safetensors", TEACHER, 3)
    captions = _syn_captions(folder / "syn.jsonl", 48)
    material = {"folder": folder, "teacher": teacher, "captions": captions}
    material["one"] = _run(material, folder / "one")  # the 1-process reference: 5 shards of 4
    return material


def _settings(material: dict[str, Path], **kw) -> dict:
    return dict(augmentations=2, synthetic_captions=2, captions_file=material["captions"], samples_per_shard=4,
                batch_size=3, augment=AugmentConfig(scale=(0.5, 1.0)), seed=7, **kw)  # fmt: skip


def _run(material: dict[str, Path], out: Path, source: str = SOURCE, **kw):
    kw = {**_settings(material), **kw}
    reinforce(source, [f"{TEACHER}:{material['teacher']}"], out, **kw)
    return out


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


# --- the split -------------------------------------------------------------------------------------------


def test_the_worker_split_is_torchruns_split_and_covers_every_shard_once() -> None:
    for total in (0, 1, 5, 12, 31):
        for count in (1, 2, 3, 7):
            for size in (1, 2, 4):
                owners: dict[int, tuple[int, int]] = {}
                for w in range(count):
                    for r in range(size):
                        for n in shards_for(total, Workers(w, count), World(r, size, r)):
                            assert n not in owners, f"shard {n} written by {owners[n]} and {(w, r)}"
                            owners[n] = (w, r)
                assert sorted(owners) == list(range(total))
                for w in range(count):  # a worker owns n % W == w, however many processes it runs
                    mine = {n for r in range(size) for n in shards_for(total, Workers(w, count), World(r, size, r))}
                    assert mine == {n for n in range(total) if n % count == w}
            for r in range(3):  # one worker: exactly torchrun's n % world == rank
                assert shards_for(total, Workers(), World(r, 3, r)) == [n for n in range(total) if n % 3 == r]


def test_workers_default_from_the_schedulers_environment() -> None:
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_workers(environ=slurm) == Workers(2, 4, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    stepped = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
               "SLURM_ARRAY_TASK_COUNT": "4"}  # fmt: skip
    assert resolve_workers(environ=stepped).index == 3
    indexed = {"JOB_COMPLETION_INDEX": "3", "EDGECLIP_NUM_WORKERS": "5"}
    assert resolve_workers(environ=indexed) == Workers(3, 5, "JOB_COMPLETION_INDEX/EDGECLIP_NUM_WORKERS")
    assert resolve_workers(num_workers=4, environ={"JOB_COMPLETION_INDEX": "1"}) == Workers(
        1, 4, "JOB_COMPLETION_INDEX/--num-workers"
    )
    assert resolve_workers(2, 1, environ=slurm) == Workers(1, 2, "--worker-index/--num-workers")  # options win
    assert resolve_workers(num_workers=1, environ=slurm) == Workers(0, 1, "--num-workers 1")  # opting out
    assert resolve_workers(environ={}) == Workers()
    refusals = {
        "needs a worker count: pass --num-workers or set EDGECLIP_NUM_WORKERS": dict(
            environ={"JOB_COMPLETION_INDEX": "0"}),
        r"worker index 4 \(--worker-index\) is outside 0..3 \(--num-workers 4\)": dict(num_workers=4, worker_index=4),
        r"worker index -1 \(--worker-index\) is outside 0..1": dict(num_workers=2, worker_index=-1),
        r"worker index 4 \(SLURM_ARRAY_TASK_ID\) is outside 0..3 \(SLURM_ARRAY_TASK_COUNT 4\)": dict(
            environ={**slurm, "SLURM_ARRAY_TASK_ID": "9"}),
        "SLURM_ARRAY_TASK_ID=5 is not on the array's grid": dict(environ={**stepped, "SLURM_ARRAY_TASK_ID": "5"}),
        "--num-workers 3 needs --worker-index": dict(num_workers=3, environ={}),
        r"--worker-index 1 needs a worker count: pass --num-workers$": dict(worker_index=1, environ={}),
        "JOB_COMPLETION_INDEX='x' in the environment is not an integer": dict(
            environ={"JOB_COMPLETION_INDEX": "x", "EDGECLIP_NUM_WORKERS": "2"}),
    }  # fmt: skip
    for message, kwargs in refusals.items():
        with pytest.raises(UsageError, match=message) as e:
            resolve_workers(**kwargs)
        assert "\n" not in str(e.value)


# --- workers on real files -------------------------------------------------------------------------------


def test_workers_union_equals_one_process_and_a_rerun_redoes_only_broken_shards(material, tmp_path: Path) -> None:
    out = tmp_path / "workers"
    first = reinforce(SOURCE, [f"{TEACHER}:{material['teacher']}"], out, num_workers=2, worker_index=0,
                      **_settings(material))  # fmt: skip
    assert first.assigned == first.written == ("00000.tar", "00002.tar", "00004.tar")
    half_done = check_plan(out)
    assert half_done.missing == ("00001.tar", "00003.tar") and not half_done.complete
    assert "2 of the 5 planned shards are not finished (00001.tar, 00003.tar)" in half_done.problem()
    slurm = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}  # worker 1 as a Slurm array task runs it
    second = _run_result(material, out, environ=slurm)
    assert second.written == ("00001.tar", "00003.tar") and second.workers == Workers(
        1, 2, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
    )
    assert check_plan(out).complete
    comparison = compare_reinforced(out, material["one"], atol=1e-5)
    assert comparison.equal and comparison.samples == (20, 20) and comparison.same_dataset_id, comparison.summary()
    assert _tars(out) == _tars(material["one"])  # the same bytes: keys, parameters, captions, embeddings

    # A worker dies: one of its shards cut short by a non-atomic copy, another gone, a temporary file left behind.
    reference = _tars(material["one"])
    whole = (out / "00002.tar").read_bytes()
    (out / "00002.tar").write_bytes(whole[: len(whole) // 3])
    (out / "00003.tar").unlink()
    (out / ".00004.tar.partial-123-abc").write_bytes(b"half a shard")
    report = check_plan(out)
    assert report.missing == ("00003.tar",) and list(report.unfinished) == ["00002.tar"]
    assert "cut short" in report.unfinished["00002.tar"] and report.leftovers == (".00004.tar.partial-123-abc",)
    from edgeclip.distill import DistillConfig
    from edgeclip.distill.batches import TrainingData

    with pytest.raises(DatasetError, match=r"1 of the 5 shards its reinforce run planned are missing \(00003.tar\)"):
        TrainingData(DistillConfig(model=STUDENT, data=str(out), output=str(tmp_path / "run")), (64, 64))
    rerun = reinforce(SOURCE, [f"{TEACHER}:{material['teacher']}"], out, num_workers=2, worker_index=0,
                      **_settings(material))  # fmt: skip
    assert rerun.written == ("00002.tar",) and list(rerun.redone) == ["00002.tar"]
    assert rerun.skipped_existing == ("00000.tar", "00004.tar") and rerun.images == 4
    rerun = reinforce(SOURCE, [f"{TEACHER}:{material['teacher']}"], out, num_workers=2, worker_index=1,
                      **_settings(material))  # fmt: skip
    assert rerun.written == ("00003.tar",) and not rerun.redone and rerun.skipped_existing == ("00001.tar",)
    assert check_plan(out).complete and _tars(out) == reference


def test_torchrun_ranks_inside_workers_and_empty_slices(material, tmp_path: Path) -> None:
    """Workers x ranks: each process writes its share; a process whose share is empty writes nothing and succeeds."""
    out = tmp_path / "grid"
    written = []
    for worker in range(2):
        for rank in range(2):
            result = _run_result(material, out, num_workers=2, worker_index=worker, rank=rank, world_size=2)
            written.extend(result.written)
    assert sorted(written) == [f"{n:05d}.tar" for n in range(5)] and _tars(out) == _tars(material["one"])
    empty = tmp_path / "empty"
    result = _run_result(material, empty, num_workers=8, worker_index=6)
    assert result.assigned == () and result.written == () and not empty.exists()  # nothing written at all
    args = ["reinforce", "-i", SOURCE, "-t", f"{TEACHER}:{material['teacher']}", "-k", "2", "--samples-per-shard",
            "4", "-o", str(empty), "--num-workers", "8", "--worker-index", "5", "-q"]  # fmt: skip
    out_cli = CliRunner().invoke(cli, args)
    assert out_cli.exit_code == 0, out_cli.output
    assert "worker 5 of 8" in out_cli.stdout and "nothing to write" in out_cli.stdout and not empty.exists()
    by_env = CliRunner().invoke(cli, args[:-5], env={"JOB_COMPLETION_INDEX": "7", "EDGECLIP_NUM_WORKERS": "8"})
    assert by_env.exit_code == 0, by_env.output
    assert "worker 7 of 8 (from JOB_COMPLETION_INDEX/EDGECLIP_NUM_WORKERS): none of the 5" in by_env.stdout
    bad = CliRunner().invoke(cli, [*args[:-2], "8", "-q"])
    assert (
        bad.exit_code == 2 and "Error: worker index 8 (--worker-index) is outside 0..7 (--num-workers 8)" in bad.stderr
    )


def _run_result(material: dict[str, Path], out: Path, **kw):
    return reinforce(SOURCE, [f"{TEACHER}:{material['teacher']}"], out, **{**_settings(material), **kw})


def test_a_second_job_with_other_settings_is_refused_naming_the_setting(material, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    shutil.copytree(material["one"], out)
    (out / "00001.tar").unlink()  # unfinished, so a job with other settings would have work to do here
    cases = {
        r"different settings \(augmentations\): augmentations \(2 vs 3\)": dict(augmentations=3),
        r"different settings \(augment\): augment \(scale \[0.5, 1.0\] vs \[0.3, 1.0\]\)": dict(
            augment=AugmentConfig(scale=(0.3, 1.0))),
        r"different settings \(seed\): seed \(7 vs 8\)": dict(seed=8),
        r"different settings \(image_source, samples, source_fingerprint\)": dict(source="shapes:train:24"),
        r"different settings \(samples_per_shard\)": dict(samples_per_shard=5),
    }  # fmt: skip
    for message, kw in cases.items():
        with pytest.raises(DatasetError, match=message) as e:
            _run(material, out, **kw)
        assert "\n" not in str(e.value) and "choose a new --output" in str(e.value)
    assert sorted(_tars(out)) == ["00000.tar", "00002.tar", "00003.tar", "00004.tar"]  # nothing written
    other = write_random_checkpoint(tmp_path / "other.safetensors", TEACHER, 4)
    with pytest.raises(DatasetError, match=r"different settings \(teachers\): teachers \(.*teacher.safetensors@"):
        reinforce(SOURCE, [f"{TEACHER}:{other}"], out, **_settings(material))


def test_the_source_fingerprint_catches_a_changed_captions_file(material, tmp_path: Path) -> None:
    from PIL import Image

    rows = []
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"red {i}"})
    captions = tmp_path / "c.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(augmentations=1, samples_per_shard=2, num_workers=2, worker_index=0)
    first = reinforce(str(captions), [f"{TEACHER}:{material['teacher']}"], tmp_path / "s", **kw)
    assert first.written == ("00000.tar",) and first.manifest.source_fingerprint
    rows[2]["caption"] = "blue 2"  # the same file name, other records: worker 1 must not add to the run
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match=r"different settings \(source_fingerprint\)"):
        reinforce(str(captions), [f"{TEACHER}:{material['teacher']}"], tmp_path / "s", **{**kw, "worker_index": 1})


def test_distill_refuses_shards_from_two_runs_naming_what_differs(material, tmp_path: Path) -> None:
    other = _run(material, tmp_path / "other", augment=AugmentConfig(scale=(0.3, 1.0)), samples_per_shard=20)
    with pytest.raises(DatasetError, match=r"two reinforce runs with different samples_per_shard, augment \(") as e:
        ReinforcedShards(f"{{{material['one']}/00000.tar,{other}/00000.tar}}")
    assert "augment (scale [" in str(e.value) and "[0.3, 1.0]" in str(e.value) and "\n" not in str(e.value)
    # The same run's shards in two folders are one dataset.
    half = tmp_path / "half"
    half.mkdir()
    for name in (MANIFEST_NAME, "00003.tar", "00003.stats.json", "00004.tar", "00004.stats.json"):
        shutil.copy(material["one"] / name, half / name)
    both = ReinforcedShards(f"{{{material['one']}/00000.tar,{half}/00003.tar}}")
    assert len(both) == 8
    # A shard of another run copied into a folder: named, refused.
    mixed = tmp_path / "mixed"
    shutil.copytree(material["one"], mixed)
    shutil.copy(other / "00000.tar", mixed / "00000.tar")
    shutil.copy(other / "00000.stats.json", mixed / "00000.stats.json")
    with pytest.raises(DatasetError, match=r"00000.tar: written by another reinforce run \(dataset [0-9a-f]{16};"):
        ReinforcedShards(mixed)
    out = CliRunner().invoke(cli, ["distill", "--data", str(mixed), "--model", STUDENT, "--steps", "1", "-q",
                                   "--output", str(tmp_path / "run")])  # fmt: skip
    assert out.exit_code == 1 and "refusing to mix shards from two runs" in out.stderr
    manifest = DatasetManifest.read(other / MANIFEST_NAME)
    assert manifest.differences(DatasetManifest.read(material["one"] / MANIFEST_NAME))[0].startswith("samples")


def test_reinforce_check_names_missing_shards_and_compares_runs(material, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(material["one"], copy)
    ok = CliRunner().invoke(cli, ["reinforce", "--check", str(copy), "--compare", str(material["one"])])
    assert ok.exit_code == 0, ok.output
    assert "all 5 planned shard(s) finished, 20 samples" in ok.stdout
    assert "equal: 20 vs 20 samples; keys equal, augmentation parameters equal, captions equal" in ok.stdout
    (copy / "00001.tar").unlink()
    (copy / "00004.tar").unlink()
    bad = CliRunner().invoke(cli, ["reinforce", "--check", str(copy)])
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1
    assert "2 of the 5 planned shards are not finished (00001.tar, 00004.tar)" in bad.stderr
    report = json.loads(CliRunner().invoke(cli, ["reinforce", "--check", str(copy), "--json"]).stdout)
    assert report["missing"] == ["00001.tar", "00004.tar"] and report["complete"] is False
    other = _run(material, tmp_path / "seed8", seed=8)
    diff = CliRunner().invoke(cli, ["reinforce", "--check", str(other), "--compare", str(material["one"])])
    assert diff.exit_code == 1 and "augmentation parameters differ" in diff.stderr
    usage = CliRunner().invoke(cli, ["reinforce", "--images", SOURCE])
    assert usage.exit_code == 2 and "reinforce needs --teacher, --output (or --check FOLDER" in usage.stderr


# --- real processes --------------------------------------------------------------------------------------


def _edgeclip(*args: str, torchrun: int = 0) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)] if torchrun else []
    return [sys.executable, *launcher, "-m", "edgeclip", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _reinforce_args(material: dict[str, Path], out: Path, source: str = SOURCE) -> list[str]:
    return ["reinforce", "-i", source, "-t", f"{TEACHER}:{material['teacher']}", "-k", "2", "-s", "2",
            "--captions-file", str(material["captions"]), "--samples-per-shard", "4", "--batch-size", "3",
            "--crop-scale", "0.5", "1.0", "--seed", "7", "-o", str(out), "-q"]  # fmt: skip


@pytest.mark.slow  # two torchrun launches and an export: about a minute on 2 loaded cores
def test_reinforce_and_distill_under_torchrun_match_one_process_and_export(material, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    done = subprocess.run(_edgeclip(*_reinforce_args(material, shards), torchrun=2), capture_output=True, text=True,
                          env=_env(), timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2" in done.stdout and "rank 1 of 2" in done.stdout
    comparison = compare_reinforced(shards, material["one"], atol=1e-5)
    assert comparison.equal and comparison.keys_equal and comparison.params_equal, comparison.summary()
    assert comparison.image_emb_max_abs <= 1e-5 and comparison.samples == (20, 20)

    run = tmp_path / "run"
    args = ["distill", "--data", shards, "--model", STUDENT, "--steps", "24", "--batch-size", "5", "--warmup", "2",
            "--lr", "3e-3", "--log-samples", "--quiet", "--json", "--output", run]  # fmt: skip
    done = subprocess.run(_edgeclip(*args, torchrun=2), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["world_size"] == 2 and report["steps"] == 24
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in steps if e["event"] == "step"]
    seen = {u for e in steps if e["event"] == "step" for u in e["uids"]}
    assert len(losses) == 24 and len(seen) == 20  # both processes' halves of every global batch, all samples
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, f"loss did not fall: {losses}"

    bundle = tmp_path / "student.edgeclip"
    done = subprocess.run(_edgeclip("export", "-m", STUDENT, "-p", run / "model.safetensors", "-o", bundle),
                          capture_output=True, text=True, env=_env(), timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    import torch

    from edgeclip.models.loading import load_model
    from edgeclip.runtimes.bundle import load_bundle

    student = load_model(STUDENT, str(run / "model.safetensors")).model.eval()
    texts = ["a red circle", "a small blue square"]
    import open_clip

    with torch.no_grad():
        want = torch.nn.functional.normalize(student.encode_text(open_clip.get_tokenizer(STUDENT)(texts)), dim=-1)
    got = load_bundle(bundle).encode_text(texts)
    cosine = (got * want.numpy()).sum(-1) / np.linalg.norm(got, axis=-1)
    assert cosine.min() > 0.999, cosine  # the bundle holds the student trained under torchrun


@pytest.mark.slow  # a real subprocess killed with SIGKILL mid-run, then rerun: about 40 s
def test_a_killed_worker_rerun_redoes_only_its_unfinished_shards(material, tmp_path: Path) -> None:
    source = "shapes:train:48"  # 12 shards of 4: worker 0 of 2 owns 6
    reference = _run(material, tmp_path / "ref", source=source)
    out = tmp_path / "killed"
    args = [*_reinforce_args(material, out, source), "--num-workers", "2", "--worker-index", "0"]
    proc = subprocess.Popen(_edgeclip(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 300
    while not (out / "00002.tar").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    finished_at_kill = {p.name for p in out.glob("*.tar")}
    owned = {f"{n:05d}.tar" for n in range(0, 12, 2)}
    assert {"00000.tar", "00002.tar"} <= finished_at_kill < owned, finished_at_kill

    rerun = subprocess.run(_edgeclip(*args, "--json"), capture_output=True, text=True, env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout)
    assert set(report["shards_skipped_existing"]) == finished_at_kill
    assert set(report["shards_written"]) == owned - finished_at_kill  # exactly what the killed run left undone
    worker1 = subprocess.run(_edgeclip(*args[:-2], "--worker-index", "1", "--json"), capture_output=True, text=True,
                             env=_env(), timeout=600)  # fmt: skip
    assert worker1.returncode == 0, worker1.stderr[-2000:]
    assert check_plan(out).complete
    assert _tars(out) == _tars(reference)
    assert compare_reinforced(out, reference).equal
