"""The accuracy gate: a quantized or fp16 encoder pair against its fp32 ONNX export, on held-out inputs.

Held-out images never take part in calibration. Per encoder: mean and 1st-percentile cosine to fp32; for the
pair: how often zero-shot predictions over a label set agree with fp32's top-1. The figures and the pass/fail
rule live in edgeclip.metrics.parity (GateReport); this module runs the encoders that produce them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.calibration import CalibrationSet, default_text_strings, feeds, split_held_out
from edgeclip.calibration.text import DEFAULT_LABELS
from edgeclip.errors import ExportError
from edgeclip.metrics.parity import GateReport, cosine_stats, top1_predictions
from edgeclip.runtimes.preprocess import PreprocessSpec

GATE_PROMPT = "a photo of a {}"


def run_onnx_cpu(path: Path, inputs: Mapping[str, np.ndarray], batch: int = 8) -> np.ndarray:
    """The first output of an ONNX file run by ONNX Runtime on CPU, in batches (how the graphs are checked here)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n = len(next(iter(inputs.values())))
    outs = [
        session.run(None, {k: np.ascontiguousarray(v[i : i + batch]) for k, v in inputs.items()})[0]
        for i in range(0, n, batch)
    ]
    return np.concatenate(outs).astype(np.float32)


def _embed(path: Path, name: str, batch: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The encoder's embeddings with the runtime's own CPU session settings (the ones a bundle is served with)."""
    import onnxruntime

    from edgeclip.runtimes.backends.ort import session_options

    session = onnxruntime.InferenceSession(str(path), session_options(None), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(None, {name: batch[i : i + batch_size]})[0] for i in range(0, len(batch), batch_size)]
    )


def measure_gate(
    reference: tuple[Path, Path],
    candidate: tuple[Path, Path],
    pixels: np.ndarray,
    texts: np.ndarray,
    label_tokens: np.ndarray,
    *,
    labels: Sequence[str],
    max_cosine_drop: float | None = None,
    reference_name: str = "onnx fp32 export",
) -> GateReport:
    """Compare (image, text) encoder files against the fp32 pair on held-out pixels, token ids and label prompts."""
    if len(pixels) == 0 or len(texts) == 0:
        raise ExportError("the accuracy gate needs held-out images and texts; none were given")
    ref_img, cand_img = _embed(reference[0], "pixels", pixels), _embed(candidate[0], "pixels", pixels)
    ref_txt, cand_txt = _embed(reference[1], "token_ids", texts), _embed(candidate[1], "token_ids", texts)
    ref_lab, cand_lab = _embed(reference[1], "token_ids", label_tokens), _embed(candidate[1], "token_ids", label_tokens)
    top_ref = top1_predictions(ref_img, ref_lab)
    top_cand = top1_predictions(cand_img, cand_lab)
    return GateReport(
        reference=reference_name,
        image=cosine_stats(ref_img, cand_img),
        text=cosine_stats(ref_txt, cand_txt),
        top1_agreement=float((top_ref == top_cand).mean()),
        labels=len(labels),
        max_cosine_drop=max_cosine_drop,
        reference_labels=len(set(top_ref.tolist())),
    )


def _tokens(tokenizer, texts: Sequence[str]) -> np.ndarray:
    return np.asarray(tokenizer.encode(list(texts)), dtype=np.int64)


@dataclass(frozen=True)
class GateInputs:
    """Held-out images, texts and label prompts the gate compares on, and the calibration feeds (disjoint)."""

    pixels: np.ndarray
    texts: np.ndarray
    labels: tuple[str, ...]
    label_tokens: np.ndarray
    image_feeds: list[dict[str, np.ndarray]]
    text_feeds: list[dict[str, np.ndarray]]

    def feeds_for(self, role: str) -> list[dict[str, np.ndarray]]:
        """The calibration feeds of the 'image' or 'text' encoder."""
        return {"image": self.image_feeds, "text": self.text_feeds}[role]


def gate_inputs(calib: CalibrationSet | None, spec: PreprocessSpec, tokenizer) -> GateInputs:
    """Split the calibration set into calibration and held-out parts; add edgeclip's parity photos and strings."""
    from edgeclip.export import parity  # the sample photos and strings export parity uses (export side)
    from edgeclip.runtimes.preprocess import preprocess

    sample_pixels = preprocess(parity.sample_images(), spec)
    sample_texts = list(parity.SAMPLE_TEXTS)
    labels = DEFAULT_LABELS
    label_tokens = _tokens(tokenizer, [GATE_PROMPT.format(label) for label in labels])
    if calib is None:
        return GateInputs(sample_pixels, _tokens(tokenizer, sample_texts), labels, label_tokens, [], [])
    held = max(1, min(64, len(calib) // 5))
    keep, out = split_held_out(len(calib), held, seed=calib.seed)
    texts = list(calib.texts) or list(default_text_strings())
    text_keep = [t for i, t in enumerate(texts) if i % 5 != 4] or texts
    text_out = [t for i, t in enumerate(texts) if i % 5 == 4]
    return GateInputs(
        pixels=np.concatenate([calib.pixels[out], sample_pixels]),
        texts=_tokens(tokenizer, text_out + sample_texts),
        labels=labels,
        label_tokens=label_tokens,
        image_feeds=feeds({"pixels": calib.pixels[keep]}, 1),
        text_feeds=feeds({"token_ids": _tokens(tokenizer, text_keep)}, 1),
    )
