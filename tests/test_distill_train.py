"""Distillation runs: exact resume after a real kill, refused resumes, 2-process DDP, DataCompDR shards, CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgeclip.cli import cli
from edgeclip.distill import DistillConfig, train
from edgeclip.distill.augment import AugmentConfig, AugmentParams, params_to_json
from edgeclip.distill.shards import reinforce
from edgeclip.distill.tario import write_tar
from edgeclip.errors import UsageError
from edgeclip.models.loading import read_state_dict
from tests.conftest import write_random_checkpoint

STUDENT = "EdgeCLIP-Student-XS"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reinforce(out: Path, teacher: Path, captions: Path, samples: int = 24) -> Path:
    reinforce(
        f"shapes:train:{samples}", [f"{STUDENT}:{teacher}"], out, augmentations=2, synthetic_captions=1,
        captions_file=captions, samples_per_shard=8, batch_size=8, augment=AugmentConfig(scale=(0.5, 1.0)),
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgeclip.distill.quickstart import write_paraphrases

    folder = tmp_path_factory.mktemp("distill")
    teacher = write_random_checkpoint(folder / "teacher.safetensors", STUDENT, 5)
    other = write_random_checkpoint(folder / "other.safetensors", STUDENT, 6)
    captions = write_paraphrases("shapes:train:24", folder / "syn.jsonl", 2)
    return {"teacher": teacher, "other": other, "captions": captions,
            "shards": _reinforce(folder / "shards", teacher, captions)}  # fmt: skip


def _config(data: Path, output: Path, **kw) -> DistillConfig:
    base = dict(model=STUDENT, data=str(data), output=str(output), steps=8, batch_size=4, warmup=2, lr=2e-3,
                checkpoint_every=2, log_samples=True, log_every=1)  # fmt: skip
    return DistillConfig(**{**base, **kw})


def _step_uids(run: Path) -> dict[int, list[str]]:
    steps: dict[int, list[str]] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["event"] == "step":
            assert entry["step"] not in steps, f"step {entry['step']} logged twice"
            steps[entry["step"]] = entry["uids"]
    return steps


@pytest.mark.slow
def test_killed_run_resumes_exactly_without_repeating_or_dropping_samples(material, tmp_path: Path) -> None:
    reference = train(_config(material["shards"], tmp_path / "ref"))
    assert reference.steps == 8 and (tmp_path / "ref" / "model.safetensors").is_file()

    run = tmp_path / "killed"
    args = [sys.executable, "-m", "edgeclip", "distill", "--data", str(material["shards"]), "--model", STUDENT,
            "--steps", "8", "--batch-size", "4", "--warmup", "2", "--lr", "2e-3", "--checkpoint-every", "2",
            "--log-samples", "--quiet", "--threads", "1", "--output", str(run)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = run / "checkpoints" / "step_0000004.state.pt"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert proc.returncode == -9, f"the run was meant to be killed mid-way: {proc.stderr.read().decode()[-500:]}"
    killed_at = max(_step_uids(run))
    assert 4 <= killed_at < 8

    resumed = train(_config(material["shards"], run, resume=True))
    assert resumed.resumed_from in (4, 6) and resumed.steps == 8
    # Every step's samples, in order, exactly as the uninterrupted run saw them: none repeated, none dropped.
    assert _step_uids(run) == _step_uids(tmp_path / "ref")
    seen = [u for step in sorted(_step_uids(run)) for u in _step_uids(run)[step]]
    assert len(seen) == 32 and len(set(seen[:24])) == 24 and len(set(seen[24:])) == 8  # one epoch, then the next
    a, b = read_state_dict(tmp_path / "ref" / "model.safetensors"), read_state_dict(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"


def test_resume_refuses_another_student_or_teacher_set(material, tmp_path: Path) -> None:
    data = _reinforce(tmp_path / "data", material["teacher"], material["captions"], samples=8)
    train(_config(data, tmp_path / "run", steps=1, checkpoint_every=0))
    with pytest.raises(UsageError, match="cannot resume .* model"):
        train(_config(data, tmp_path / "run", steps=1, resume=True, model="EdgeCLIP-Tiny-ViT"))
    with pytest.raises(UsageError, match="holds a run: pass --resume"):
        train(_config(data, tmp_path / "run", steps=1))
    import shutil

    shutil.rmtree(data)
    _reinforce(data, material["other"], material["captions"], samples=8)  # same path, other teacher weights
    with pytest.raises(UsageError, match="cannot resume .*: dataset_id .*teachers"):
        train(_config(data, tmp_path / "run", steps=1, resume=True))


def test_an_interrupted_run_with_no_checkpoint_restarts_on_a_plain_rerun_or_resume(material, tmp_path: Path) -> None:
    """Interrupted before its first checkpoint: rerunning the same command trains from step 0, log and all."""
    reference = tmp_path / "ref"
    train(_config(material["shards"], reference, steps=4, checkpoint_every=0))

    def interrupt_at_step_2(entry: dict) -> None:
        if entry["event"] == "step" and entry["step"] == 2:
            raise KeyboardInterrupt

    for resume in (False, True):
        run = tmp_path / f"run-{resume}"
        with pytest.raises(KeyboardInterrupt):
            train(_config(material["shards"], run, steps=4, checkpoint_every=0), interrupt_at_step_2)
        assert (run / "run.json").is_file() and not list((run / "checkpoints").glob("step_*"))
        again = train(_config(material["shards"], run, steps=4, checkpoint_every=0, resume=resume))
        assert again.steps == 4 and again.resumed_from == 0
        # The interrupted attempt's step lines are gone: the log reads as one uninterrupted run.
        assert _step_uids(run) == _step_uids(reference)


def test_a_rerun_with_other_settings_is_refused_naming_the_setting(material, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(material["shards"], run, steps=1, checkpoint_every=0))
    for resume in (False, True):
        with pytest.raises(UsageError, match=r"batch_size \(4 -> 8\)") as e:
            train(_config(material["shards"], run, steps=1, batch_size=8, resume=resume))
        assert "\n" not in str(e.value) and "--output" in str(e.value)
    with pytest.raises(UsageError, match=r"holds a run: pass --resume to continue it from step 1"):
        train(_config(material["shards"], run, steps=1))


def test_the_cli_warns_naming_a_corrupt_shard_and_counts_it_in_the_summary(material, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(material["shards"], data)
    whole = (data / "00001.tar").read_bytes()
    (data / "00001.tar").write_bytes(whole[: len(whole) // 2])
    args = ["distill", "--data", str(data), "--model", STUDENT, "--steps", "1", "--batch-size", "4",
            "--warmup", "1", "--quiet", "--output"]  # fmt: skip
    out = CliRunner().invoke(cli, [*args, str(tmp_path / "run")])
    assert out.exit_code == 0, out.output[-2000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(data / "00001.tar") in warnings[0], out.stderr
    summary = [line for line in out.stdout.splitlines() if "corrupt shard" in line]
    assert len(summary) == 1 and "1 corrupt shard" in summary[0], out.stdout
    report = json.loads(CliRunner().invoke(cli, [*args, str(tmp_path / "json"), "--json"]).stdout)
    assert list(report["corrupt_shards"]) == [str(data / "00001.tar")]
    assert 0 < report["missing_samples"] <= 8 and f"{report['missing_samples']} sample" in summary[0]


@pytest.mark.slow
def test_two_processes_under_torchrun_match_one_process_with_the_global_batch(material, tmp_path: Path) -> None:
    single = train(_config(material["shards"], tmp_path / "one", steps=2, batch_size=8, checkpoint_every=0))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "edgeclip",
        "distill",
        "--data",
        str(material["shards"]),
        "--model",
        STUDENT,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--warmup",
        "2",
        "--lr",
        "2e-3",
        "--log-samples",
        "--quiet",
        "--json",
        "--output",
        str(tmp_path / "two"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    # torchrun's own summary ends stderr; the failed rank's message comes before it, so both ends are kept.
    assert done.returncode == 0, done.stderr[:4000] + "\n...\n" + done.stderr[-1500:]
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["world_size"] == 2 and report["steps"] == 2
    one, two = _step_uids(tmp_path / "one"), _step_uids(tmp_path / "two")
    assert {s: sorted(u) for s, u in one.items()} == {s: sorted(u) for s, u in two.items()}
    a, b = read_state_dict(single.model_path), read_state_dict(tmp_path / "two" / "model.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 2e-5, f"2-process DDP differs from the 1-process global batch by {worst}"
    assert max(float((a[k] - read_state_dict(material["teacher"])[k]).abs().max()) for k in a) > 1e-3


def test_apple_datacompdr_shards_join_local_pixels_by_uid_or_url(tmp_path: Path) -> None:
    """Shards in Apple's layout (no dataset.json, two 768-d teachers) train against a local captions file."""
    rng = np.random.default_rng(0)
    records, samples = [], []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
        url = f"https://example.com/{i}.jpg"
        records.append({"image": f"{i}.jpg", "caption": f"photo {i}", "uid": f"uid{i}", "url": url})
        emb = rng.standard_normal((3, 1536)).astype(np.float32)
        text = rng.standard_normal((6, 1536)).astype(np.float32)
        for x in (emb, text):
            x[:, :768] /= np.linalg.norm(x[:, :768], axis=1, keepdims=True)
            x[:, 768:] /= np.linalg.norm(x[:, 768:], axis=1, keepdims=True)
        buf = io.BytesIO()
        np.savez(buf, image_emb=emb, text_emb=text)
        meta = {"uid": f"uid{i}", "sha256": "0" * 64} if i % 2 else {"sha256": "0" * 64}  # even ones: url only
        params = [AugmentParams((2, 3, 30, 30), ((5, 10.0),)) for _ in range(3)]
        samples.append((f"{i:08d}", {
            "url.txt": url.encode(), "json": json.dumps(meta).encode(),
            "syn.json": json.dumps({"syn_text": [f"syn {i} {j}" for j in range(5)]}).encode(),
            "paug.json": json.dumps({"param_aug": params_to_json(params)}).encode(), "npz": buf.getvalue(),
        }))  # fmt: skip
    (tmp_path / "dr").mkdir()
    write_tar(tmp_path / "dr" / "00000000.tar", samples)
    (tmp_path / "local.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = train(DistillConfig(
        model=STUDENT, data=str(tmp_path / "dr" / "00000000.tar"), output=str(tmp_path / "run"), steps=2,
        batch_size=3, warmup=1, datacompdr=3, images=str(tmp_path / "local.jsonl"), log_samples=True, log_every=1,
    ))  # fmt: skip
    assert result.skipped_samples == 0 and result.steps == 2
    assert sorted(u for uids in _step_uids(tmp_path / "run").values() for u in uids) == sorted(
        [f"uid{i}" for i in (1, 3, 5)] + [f"{i:08d}" for i in (0, 2, 4)]
    )


def test_corrupt_samples_are_skipped_counted_and_logged(material, tmp_path: Path) -> None:
    import shutil

    from edgeclip.distill.shards import ReinforcedShards

    data = tmp_path / "data"
    shutil.copytree(material["shards"], data)
    reader = ReinforcedShards(data)
    for index in (1, 9):
        path, sample = reader.samples[index]
        with open(path, "r+b") as f:
            f.seek(sample.members["npz"].offset)
            f.write(b"garbage!" * 8)
    result = train(_config(data, tmp_path / "run", steps=7, checkpoint_every=0))  # 28 draws: all 24 samples seen
    assert result.skipped_samples == 2 and result.steps == 7
    logged = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    skipped = [e for e in logged if e["event"] == "skipped"]
    assert sum(e["count"] for e in skipped) == 2 and all("npz unreadable" in m for e in skipped for m in e["first"])
    assert all(len(e["uids"]) == 4 for e in logged if e["event"] == "step")


def test_plain_clip_mixes_extra_captions_per_uid_deterministically(material, tmp_path: Path) -> None:
    from edgeclip.distill.batches import TrainingData

    config = DistillConfig(model=STUDENT, data="shapes:train:24", output=str(tmp_path / "r"), loss="clip",
                           captions=str(material["captions"]))  # fmt: skip
    data = TrainingData(config, (64, 64))
    plain = TrainingData(DistillConfig(model=STUDENT, data="shapes:train:24", output=str(tmp_path / "p"), loss="clip"),
                  (64, 64))  # fmt: skip
    extra = {json.loads(line)["uid"]: json.loads(line)["captions"]
             for line in material["captions"].read_text().splitlines()}  # fmt: skip
    seen = []
    for epoch in range(6):
        for index in (0, 5):
            item = data.fetch(index, epoch)
            gt = plain.fetch(index, epoch)
            # The augmentation is drawn as without extra captions; the caption is the real one or an extra one.
            assert np.array_equal(np.asarray(item.view), np.asarray(gt.view))
            assert item.caption in [gt.caption, *extra[item.uid]]
            assert item.caption == data.fetch(index, epoch).caption
            seen.append(item.caption == gt.caption)
    assert any(seen) and not all(seen)
    result = train(DistillConfig(**{**config.to_dict(), "augment": None, "steps": 2, "batch_size": 4, "warmup": 1}))
    assert json.loads((result.output / "run.json").read_text())["captions"] == str(material["captions"])
    with pytest.raises(UsageError, match="--captions"):
        DistillConfig(model=STUDENT, data="x", output="y", loss="reinforced", captions=str(material["captions"]))


def test_cli_help_examples_and_bad_input_messages(tmp_path: Path) -> None:
    runner = CliRunner()
    for command in ("reinforce", "distill", "quickstart"):
        out = runner.invoke(cli, [command, "--help"])
        assert out.exit_code == 0 and "Example:" in out.output
    rows = [json.dumps({"image": f"x{i}.jpg", "caption": "c"}) for i in range(3)]
    (tmp_path / "c.jsonl").write_text("\n".join(rows) + "\n")
    out = runner.invoke(cli, ["reinforce", "--images", str(tmp_path / "c.jsonl"), "--teacher", f"{STUDENT}:none.pt",
                              "--output", str(tmp_path / "s")])  # fmt: skip
    assert out.exit_code == 1 and "3 of 3 images are missing (first: x0.jpg, x1.jpg, x2.jpg)" in out.output
    out = runner.invoke(cli, ["distill", "--data", "shapes:train:8", "--model", STUDENT, "--loss", "clip",
                              "--output", str(tmp_path / "r"), "--lambda", "0.5"])  # fmt: skip
    assert out.exit_code == 2 and "takes no --lambda" in out.output
    out = runner.invoke(cli, ["reinforce", "--images", "shapes:train:8", "--teacher", "NoSuchArch:x.pt",
                              "--output", str(tmp_path / "s2")])  # fmt: skip
    assert out.exit_code == 2 and "unknown model 'NoSuchArch'" in out.output


@pytest.mark.slow
def test_quickstart_fast_runs_the_whole_story_and_the_bundle_agrees(tmp_path: Path) -> None:
    from edgeclip.distill.quickstart import STUDENT as quickstart_student
    from edgeclip.runtimes import load_bundle

    args = ["quickstart", "--fast", "--threads", "1", "--output", str(tmp_path / "qs"), "--json"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output[-2000:]
    summary = json.loads(out.output[out.output.index("{\n") :])
    rows = {r["name"]: r for r in summary["rows"]}
    assert set(rows) == {"teacher", "student", "student bundle"}
    assert rows["teacher"]["params_m"] > rows["student"]["params_m"] > 0
    # The exported bundle classifies the held-out split as the PyTorch student does (32 images).
    assert abs(rows["student bundle"]["top1"] - rows["student"]["top1"]) <= 2 / 32
    assert abs(rows["student bundle"]["top1_color"] - rows["student"]["top1_color"]) <= 2 / 32
    assert len(summary["predictions"]) == 4
    bundle = load_bundle(summary["bundle"], verify=True)
    assert bundle.head_names() == ["zero-shot"] and bundle.manifest.source.architecture == quickstart_student
    again = CliRunner().invoke(cli, ["quickstart", "--fast", "--output", str(tmp_path / "qs")])
    assert again.exit_code == 2 and "--force" in again.output
