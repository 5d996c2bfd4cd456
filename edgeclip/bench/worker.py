"""Measure one subject: cold start, SingleStream latency per stage and batch, peak memory, zero-shot accuracy,
and the embeddings that parity is computed from.

`run_bench` runs this in a fresh process per subject (``python -m edgeclip.bench.worker REQUEST OUT``), so that
cold start and peak resident memory belong to that subject alone and one crash cannot take the run down.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bench.accuracy import accuracy_of, read_labelled_folder
from edgeclip.bench.latency import current_rss_mb, measure_stages, peak_rss_mb
from edgeclip.bench.results import BenchEntry
from edgeclip.errors import EdgeclipError
from edgeclip.runtimes.backends import RuntimeOptions

# The end-to-end input: a camera-sized frame of the shapes dataset, so preprocessing does real resizing.
SAMPLE_IMAGE_SIZE = 640
SAMPLE_TEXT = "a photo of a red circle in the center of a striped background"


@dataclass(frozen=True)
class MeasureRequest:
    """Everything a worker needs: what to open, how to run it, what to measure and where to put embeddings."""

    name: str
    kind: str  # a registered subject kind: "bundle" or "eager"
    source: dict[str, Any]  # bundle: {"path"}; eager: {"architecture", "pretrained", "random_init"}
    target: str
    precision: str
    batch_sizes: tuple[int, ...]
    runs: int
    warmup: int
    dataset: str  # a labelled folder
    dataset_name: str
    templates: str | tuple[str, ...]
    embeddings: str  # .npz written with the image and prompt embeddings of the dataset
    threads: int | None = None
    providers: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "batch_sizes": list(self.batch_sizes),
            "templates": self.templates if isinstance(self.templates, str) else list(self.templates),
            "providers": list(self.providers) if self.providers else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasureRequest:
        templates = data["templates"]
        return cls(
            **{
                **data,
                "batch_sizes": tuple(data["batch_sizes"]),
                "templates": templates if isinstance(templates, str) else tuple(templates),
                "providers": tuple(data["providers"]) if data.get("providers") else None,
            }
        )


def sample_inputs() -> tuple[Any, str]:
    """The image (PIL, 640x640) and caption every stage is timed on."""
    from PIL import Image

    from edgeclip.data.shapes import ShapesDataset

    return Image.fromarray(ShapesDataset("eval", size=SAMPLE_IMAGE_SIZE, seed=7)[0].image), SAMPLE_TEXT


def _reason(error: BaseException) -> str:
    """One line: edgeclip's own message, or a foreign exception's type and first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, EdgeclipError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def measure(request: MeasureRequest, on_stage: Callable[[str], None] | None = None) -> BenchEntry:
    """Open, time and score one subject; a subject that cannot run here gives a `failed_checks` entry with why."""
    from edgeclip.bench.subjects import open_subject
    from edgeclip.runtimes.zeroshot import build_zero_shot_head

    base = BenchEntry(request.name, request.kind, "failed_checks", request.target, request.precision)
    options = RuntimeOptions(request.providers, request.threads)
    image, text = sample_inputs()
    data = read_labelled_folder(request.dataset, request.dataset_name)
    before = current_rss_mb()

    start = time.perf_counter()
    try:
        subject = open_subject(request.kind, request.source, options)
    except Exception as e:  # any failure to open (EdgeclipError, a runtime's own) is this row's reason
        return replace(base, reason=_reason(e))
    try:
        subject.encoder.encode_image([image])
        loaded_image = time.perf_counter()
        subject.encoder.encode_text([text])
        loaded_text = time.perf_counter()
        runtime = subject.runtime()
        placement = subject.placement()  # the sessions that are timed below, as their runtime placed the ops

        head = build_zero_shot_head(subject.encoder, data.class_labels, request.templates)
        stages: dict[str, dict[int, Any]] = {}
        for batch in request.batch_sizes:
            for stage, fn in subject.build_stages(image, text, head, batch).items():
                stages.setdefault(stage, {})[batch] = fn
        latency = measure_stages(stages, request.runs, request.warmup, on_stage)
        peak = peak_rss_mb()

        image_embeddings = subject.encoder.encode_image(list(data.paths), batch_size=32)
        prompt_embeddings = subject.encoder.encode_text(data.prompts(request.templates))
    except Exception as e:  # e.g. RuntimeUnavailable (CoreML off Apple) or a runtime's own error: the row says why
        return replace(
            base, model=subject.model, size_bytes=subject.size_bytes, bundle=subject.bundle, reason=_reason(e)
        )
    finally:
        subject.close()
    np.savez(request.embeddings, image=image_embeddings, text=prompt_embeddings)
    return replace(
        base,
        model=subject.model,
        size_bytes=subject.size_bytes,
        bundle=subject.bundle,
        status="ok",
        runtime=runtime,
        placement=placement,
        latency=latency,
        cold_start_ms={
            "image": round((loaded_image - start) * 1e3, 2),
            "text": round((loaded_text - loaded_image) * 1e3, 2),
            "total": round((loaded_text - start) * 1e3, 2),
        },
        memory_mb={k: v for k, v in (("before_load", before), ("peak", peak)) if v is not None},
        accuracy=accuracy_of(data, image_embeddings, head, subject.encoder.logit_scale),
    )


def main(argv: list[str]) -> int:
    """Worker entry: read a request, measure, write the entry as JSON; exit 0 unless the worker itself broke."""
    request_path, out_path = Path(argv[0]), Path(argv[1])
    request = MeasureRequest.from_dict(json.loads(request_path.read_text(encoding="utf-8")))
    entry = measure(request)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry.to_dict()), encoding="utf-8")
    tmp.replace(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
