"""The accuracy gate: a quantized or fp16 encoder pair against its fp32 ONNX export, on held-out inputs.

Held-out images never take part in calibration. Per encoder: mean and 1st-percentile cosine to fp32; for the
pair: how often zero-shot predictions over a label set agree with fp32's top-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.errors import ExportError

GATE_PROMPT = "a photo of a {}"


@dataclass(frozen=True)
class EncoderAgreement:
    """One encoder's embeddings against fp32: mean and 1st-percentile cosine over `samples` inputs."""

    samples: int
    mean_cosine: float
    p1_cosine: float
    min_cosine: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "samples": self.samples,
            "mean_cosine": self.mean_cosine,
            "p1_cosine": self.p1_cosine,
            "min_cosine": self.min_cosine,
        }


@dataclass(frozen=True)
class GateReport:
    """What the gate measured, against which reference, and whether it passed `max_cosine_drop`."""

    reference: str
    image: EncoderAgreement
    text: EncoderAgreement
    top1_agreement: float
    labels: int
    max_cosine_drop: float | None
    # Distinct labels fp32 predicts over the held-out images: 1 (random weights, say) makes top-1 agreement a coin.
    reference_labels: int

    @property
    def worst_drop(self) -> float:
        return max(1.0 - self.image.mean_cosine, 1.0 - self.text.mean_cosine)

    @property
    def passed(self) -> bool:
        """Both encoders' mean cosine to fp32 within `max_cosine_drop` of 1 (always, when no limit was asked)."""
        return self.max_cosine_drop is None or self.worst_drop <= self.max_cosine_drop

    def to_dict(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "image": self.image.to_dict(),
            "text": self.text.to_dict(),
            "top1_agreement": self.top1_agreement,
            "labels": self.labels,
            "reference_labels": self.reference_labels,
            "max_cosine_drop": self.max_cosine_drop,
            "passed": self.passed,
        }

    def check(self) -> None:
        """Raise ExportError naming the encoder and figures when the mean-cosine drop exceeds the limit."""
        if self.passed:
            return
        role, agree = max((("image", self.image), ("text", self.text)), key=lambda r: 1.0 - r[1].mean_cosine)
        raise ExportError(
            f"accuracy gate failed: {role} encoder mean cosine to fp32 is {agree.mean_cosine:.4f} (drop "
            f"{1 - agree.mean_cosine:.4f} > --max-cosine-drop {self.max_cosine_drop}) over {agree.samples} held-out "
            f"inputs; top-1 agreement {self.top1_agreement:.3f}. Try --auto-exclude or another --calibration-method"
        )


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def agreement(reference: np.ndarray, candidate: np.ndarray) -> EncoderAgreement:
    """Row-wise cosine statistics of `candidate` against `reference`."""
    cos = (_unit(reference) * _unit(candidate)).sum(-1)
    return EncoderAgreement(int(cos.size), float(cos.mean()), float(np.percentile(cos, 1)), float(cos.min()))


def _session(path: Path):
    import onnxruntime

    from edgeclip.runtimes.backends.ort import session_options

    return onnxruntime.InferenceSession(str(path), session_options(None), providers=["CPUExecutionProvider"])


def _embed(path: Path, name: str, batch: np.ndarray, batch_size: int = 16) -> np.ndarray:
    session = _session(path)
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
    top_ref = (_unit(ref_img) @ _unit(ref_lab).T).argmax(-1)
    top_cand = (_unit(cand_img) @ _unit(cand_lab).T).argmax(-1)
    return GateReport(
        reference=reference_name,
        image=agreement(ref_img, cand_img),
        text=agreement(ref_txt, cand_txt),
        top1_agreement=float((top_ref == top_cand).mean()),
        labels=len(labels),
        max_cosine_drop=max_cosine_drop,
        reference_labels=len(set(top_ref.tolist())),
    )
