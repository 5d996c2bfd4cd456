"""The quickstart's honesty: its eval split is never trained on, and a fixed seed gives the same figures."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.distill.quickstart import FAST, FULL, QuickstartPlan, format_summary, quickstart

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The smallest plan that still runs every stage: seconds, not the default's minutes.
TINY = replace(FAST, train_samples=24, eval_samples=16, batch_size=8, augmentations=1, synthetic_captions=1)


def _digests(spec: str) -> set[str]:
    from edgeclip.distill.sources import open_shapes

    source = open_shapes(spec)
    return {hashlib.sha256(source.dataset[i].image.tobytes()).hexdigest() for i in range(len(source))}


@pytest.mark.parametrize("plan", [FULL, FAST], ids=["full", "fast"])
def test_the_eval_images_are_not_among_the_training_images(plan: QuickstartPlan) -> None:
    train = _digests(f"shapes:train:{plan.train_samples}")
    held_out = _digests(f"shapes:eval:{plan.eval_samples}")
    assert len(train) == plan.train_samples and len(held_out) == plan.eval_samples  # no duplicates either
    assert not train & held_out


def _shard_uids(shards: Path) -> set[str]:
    """The uid every stored sample's `<key>.json` names."""
    uids: set[str] = set()
    for tar in sorted(shards.rglob("*.tar")):
        with tarfile.open(tar) as f:
            for member in f.getmembers():
                if member.isfile() and member.name.count(".") == 1 and member.name.endswith(".json"):
                    uids.add(json.loads(f.extractfile(member).read())["uid"])  # type: ignore[union-attr]
    return uids


def _figures(summary: dict) -> dict:
    """What must repeat exactly: accuracies and predictions (sizes and latencies are measured, not learned)."""
    rows = {r["name"]: (r["top1"], r["top1_color"], r["params_m"]) for r in summary["rows"]}
    return {
        "rows": rows,
        "predictions": [(p["true"], p["predicted"], p["probability"]) for p in summary["predictions"]],
    }


@pytest.mark.slow
def test_same_plan_same_figures_and_only_the_train_split_is_trained_on(tmp_path: Path) -> None:
    first = quickstart(tmp_path / "a", plan=TINY)
    second = quickstart(tmp_path / "b", plan=TINY)
    assert _figures(first.to_dict()) == _figures(second.to_dict())
    assert first.to_dict()["plan"]["seed"] == 0

    # The reinforced shards hold training items only: every stored key is a shapes-train uid, all of them.
    uids = _shard_uids(tmp_path / "a" / "shards")
    assert uids == {f"shapes-train-{i:07d}" for i in range(TINY.train_samples)}
    # The sample images the bundle classified are eval items, pixel for pixel.
    held_out = _digests(f"shapes:eval:{TINY.eval_samples}")
    for file, _truth, _predicted, _p in first.predictions:
        pixels = np.asarray(Image.open(file).convert("RGB"))
        assert hashlib.sha256(pixels.tobytes()).hexdigest() in held_out
    assert not held_out & _digests(f"shapes:train:{TINY.train_samples}")

    text = format_summary(first)
    assert text.splitlines()[-1].startswith("bundle: ") and str(first.bundle) in text
    assert "teacher  shape top-1" in text and "student  shape top-1" in text and "CPU time" in text
