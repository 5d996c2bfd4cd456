"""Latency per target/precision and accuracy parity, as a pytest-benchmark suite over the same `edgeclip.bench` code
that `edgeclip bench` runs: targets and precisions from the export registry, subjects opened by the same openers,
the same timed stages, top-1 and cosine parity in each benchmark's extra_info, device facts in machine_info.

Run:   .venv/bin/python -m pytest benchmarks/test_bench_targets.py --benchmark-only --benchmark-json=out.json -rs
Knobs: EDGECLIP_BENCH_MODEL (default MobileCLIP2-S0), EDGECLIP_BENCH_PRETRAINED (a checkpoint; random weights when
       unset), EDGECLIP_BENCH_TARGETS (default all; e.g. onnx:fp32,onnx:int8+dynamic,torch, the `edgeclip bench
       --targets` syntax), EDGECLIP_BENCH_ROUNDS (default 30).
A target that cannot be exported (❌) or run here (❎) is skipped with its reason (shown by -rs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import THREADS
from edgeclip.bench.accuracy import (
    SHAPES_EVAL,
    LabelledImages,
    accuracy_of,
    read_labelled_folder,
    write_shapes_eval,
)
from edgeclip.bench.results import STAGES
from edgeclip.bench.run import EAGER, Candidate, parse_targets
from edgeclip.bench.worker import sample_inputs
from edgeclip.metrics.parity import cosine_stats, parity_floor

MODEL = os.environ.get("EDGECLIP_BENCH_MODEL", "MobileCLIP2-S0")
PRETRAINED = os.environ.get("EDGECLIP_BENCH_PRETRAINED") or None
CANDIDATES = parse_targets(os.environ.get("EDGECLIP_BENCH_TARGETS", "all").split(","))
ROUNDS = dict(rounds=int(os.environ.get("EDGECLIP_BENCH_ROUNDS", "30")), warmup_rounds=5, iterations=1)
EVAL_IMAGES = 100
TEMPLATES = "simple"


@dataclass
class Measured:
    """An opened subject with its head and its dataset embeddings, or why it cannot be measured here."""

    subject: Any = None
    head: Any = None
    image_embeddings: np.ndarray | None = None
    text_embeddings: np.ndarray | None = None
    accuracy: Any = None
    skip: str | None = None


@dataclass
class Suite:
    """Subjects opened once per module, in the order tests ask for them."""

    root: Path
    data: LabelledImages
    image: Any
    text: str
    opened: dict[str, Measured] = field(default_factory=dict)

    def get(self, cand: Candidate) -> Measured:
        if cand.name not in self.opened:
            self.opened[cand.name] = self._open(cand)
        measured = self.opened[cand.name]
        if measured.skip:
            pytest.skip(measured.skip)
        return measured

    def _open(self, cand: Candidate) -> Measured:
        from edgeclip.bench.subjects import open_subject
        from edgeclip.errors import EdgeclipError
        from edgeclip.export import export_bundle
        from edgeclip.runtimes.backends import RuntimeOptions
        from edgeclip.runtimes.zeroshot import build_zero_shot_head

        source: dict[str, Any] = {"architecture": MODEL, "pretrained": PRETRAINED, "random_init": PRETRAINED is None}
        if cand.invalid:
            return Measured(skip=f"❌ {cand.name}: {cand.invalid}")
        if cand.export:
            out = self.root / f"{len(self.opened)}-{cand.target}-{cand.precision}.edgeclip"
            try:
                export_bundle(
                    MODEL,
                    PRETRAINED,
                    out,
                    target=cand.target,
                    precision=cand.precision,
                    random_init=PRETRAINED is None,
                    target_options=dict(cand.options),
                    force=True,
                )
            except EdgeclipError as e:
                return Measured(skip=f"❌ {cand.name} export failed: {e}")
            source = {"path": str(out)}
        try:
            subject = open_subject(cand.kind, source, RuntimeOptions(threads=THREADS))
            subject.encoder.encode_image([self.image])
        except EdgeclipError as e:
            return Measured(skip=f"❎ {cand.name} cannot run here: {e}")
        head = build_zero_shot_head(subject.encoder, self.data.class_labels, TEMPLATES)
        image_embeddings = subject.encoder.encode_image(list(self.data.paths))
        return Measured(
            subject=subject,
            head=head,
            image_embeddings=image_embeddings,
            text_embeddings=subject.encoder.encode_text(self.data.prompts(TEMPLATES)),
            accuracy=accuracy_of(self.data, image_embeddings, head, subject.encoder.logit_scale),
        )


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench-targets")
    data = read_labelled_folder(write_shapes_eval(root / SHAPES_EVAL, EVAL_IMAGES), SHAPES_EVAL)
    image, text = sample_inputs()
    s = Suite(root, data, image, text)
    yield s
    for measured in s.opened.values():
        if measured.subject is not None:
            measured.subject.close()


def _eager(suite: Suite) -> Measured | None:
    eager = next((c for c in CANDIDATES if c.name == EAGER), None)
    if eager is None:
        return None
    suite.get(eager)  # skips the caller if the baseline itself cannot run
    return suite.opened[eager.name]


def _parity(suite: Suite, cand: Candidate, measured: Measured) -> dict[str, Any] | None:
    reference = _eager(suite) if cand.name != EAGER else None
    if reference is None or reference.subject.model.model_id != measured.subject.model.model_id:
        return None
    return {
        "reference": EAGER,
        "floor": parity_floor(cand.precision),
        "image": cosine_stats(reference.image_embeddings, measured.image_embeddings).to_dict(),
        "text": cosine_stats(reference.text_embeddings, measured.text_embeddings).to_dict(),
    }


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("cand", CANDIDATES, ids=lambda c: c.name)
def test_latency(benchmark, suite: Suite, cand: Candidate, stage: str) -> None:
    """SingleStream latency of one stage at batch 1; figures of the same subject in extra_info."""
    measured = suite.get(cand)
    benchmark.group = f"{MODEL} {stage}, batch 1, {THREADS} threads"
    benchmark.extra_info.update(
        target=cand.target,
        precision=cand.precision,
        baseline=cand.kind == "eager",
        runtime=measured.subject.runtime(),
        model_id=measured.subject.model.model_id,
        size_bytes=measured.subject.size_bytes,
        accuracy=measured.accuracy.to_dict(),
        parity=_parity(suite, cand, measured),
    )
    run = measured.subject.build_stages(suite.image, suite.text, measured.head, 1)[stage]
    benchmark.pedantic(run, **ROUNDS)


@pytest.mark.parametrize("cand", [c for c in CANDIDATES if c.kind == "bundle"], ids=lambda c: c.name)
def test_parity_with_eager(suite: Suite, cand: Candidate) -> None:
    """Every bundle that runs here reproduces PyTorch eager on the accuracy set, to its precision's floor."""
    measured = suite.get(cand)
    parity = _parity(suite, cand, measured)
    if parity is None:
        pytest.skip("no PyTorch eager row (add torch to EDGECLIP_BENCH_TARGETS) or other weights")
    floor = parity["floor"]
    for role in ("image", "text"):
        assert floor is None or parity[role]["min"] >= floor, f"{cand.name} {role}: {parity[role]} < {floor}"
