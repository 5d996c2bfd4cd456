"""Image and text towers of a CLIP model as separate modules that export cleanly, with L2-normalized output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.models.loading import ClipModel


class ImageEncoder(nn.Module):
    """`pixels [B, 3, H, W] float32 -> embeddings [B, D]`, L2-normalized."""

    def __init__(self, clip: ClipModel) -> None:
        super().__init__()
        self.visual = clip.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels), dim=-1)


class TextEncoder(nn.Module):
    """`token_ids [B, context_length] int -> embeddings [B, D]`, L2-normalized."""

    def __init__(self, clip: ClipModel) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(token_ids.long()), dim=-1)
