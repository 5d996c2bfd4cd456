"""MobileCLIP's training loss: (1-λ)·CLIP contrastive + λ·KD from an ensemble of teachers' similarity matrices.

KD is the cross-entropy between the teachers' target distribution — per teacher k, softmax(s_k · E_img^k
E_txt^k^T) at the teacher's own fixed logit scale s_k, averaged over teachers after the softmax — and the
student's log-softmax of its own similarity matrix (its own learnable scale), image→text and text→image,
averaged. All matrices span the global batch (rows gathered over processes before the call).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch: pair i is the positive of row i and of column i."""
    logits = logit_scale * image @ text.T
    labels = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def teacher_targets(
    image_emb: torch.Tensor, text_emb: torch.Tensor, dims: Sequence[int], scales: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image→text, text→image) target distributions [B, B]: each teacher's softmax at its scale, then averaged."""
    if image_emb.shape[-1] != sum(dims) or text_emb.shape[-1] != sum(dims):
        raise ValueError(f"teacher embeddings are {image_emb.shape[-1]}-d, dims {list(dims)} add up to {sum(dims)}")
    i2t = torch.zeros(len(image_emb), len(text_emb), dtype=torch.float32, device=image_emb.device)
    t2i = torch.zeros(len(text_emb), len(image_emb), dtype=torch.float32, device=image_emb.device)
    pairs = zip(image_emb.split(list(dims), -1), text_emb.split(list(dims), -1), scales, strict=True)
    for img_k, txt_k, scale in pairs:
        sim = float(scale) * img_k.float() @ txt_k.float().T
        i2t += sim.softmax(dim=1)
        t2i += sim.T.softmax(dim=1)
    return i2t / len(dims), t2i / len(dims)


def kd_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Cross-entropy of the student's similarity matrix against the teachers' targets, both directions, averaged."""
    logits = logit_scale * image @ text.T
    i2t, t2i = targets
    loss_i2t = -(i2t * logits.log_softmax(dim=1)).sum(dim=1).mean()
    loss_t2i = -(t2i * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def distill_loss(
    image: torch.Tensor,
    texts: Sequence[torch.Tensor],
    logit_scale: torch.Tensor,
    teacher_image: torch.Tensor | None,
    teacher_texts: Sequence[torch.Tensor] | None,
    dims: Sequence[int],
    scales: Sequence[float],
    lam: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ over captions (ground truth, then one synthetic) of (1-λ)·CLIP + λ·KD; parts returned for the log."""
    total = image.new_zeros(())
    parts: dict[str, float] = {}
    for c, text in enumerate(texts):
        name = "gt" if c == 0 else "syn"
        if lam < 1:
            loss = clip_loss(image, text, logit_scale)
            parts[f"clip_{name}"] = float(loss.detach())
            total = total + (1 - lam) * loss
        if lam > 0:
            if teacher_image is None or teacher_texts is None:
                raise ValueError("λ > 0 needs teacher embeddings")
            loss = kd_loss(image, text, logit_scale, teacher_targets(teacher_image, teacher_texts[c], dims, scales))
            parts[f"kd_{name}"] = float(loss.detach())
            total = total + lam * loss
    return total, parts
