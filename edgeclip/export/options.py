"""Immutable inputs and outputs of an export target: the encoders to convert, the options, the files written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgeclip.errors import ExportError
from edgeclip.metrics.parity import PARITY_FLOORS
from edgeclip.runtimes.manifest import TensorSpec
from edgeclip.runtimes.preprocess import PreprocessSpec
from edgeclip.runtimes.tokenizer import TokenizerSpec

if TYPE_CHECKING:  # target modules import this file; torch is needed only once a model is exported
    import torch
    from torch import nn

    from edgeclip.export.target_options import TargetOptions


@dataclass(frozen=True)
class Encoders:
    """Reparameterized, eval-mode image and text encoders with an example input each."""

    image: nn.Module
    text: nn.Module
    image_example: torch.Tensor
    text_example: torch.Tensor
    # What the encoders expect and whose weights they hold, for targets that write them into their files.
    preprocess: PreprocessSpec | None = None
    tokenizer: TokenizerSpec | None = None
    model_id: str | None = None

    def preprocess_spec(self) -> PreprocessSpec:
        """`preprocess`, for targets that calibrate with it or build it into their files: an ExportError if unset."""
        if self.preprocess is None:
            raise ExportError(
                "these encoders carry no preprocessing spec (Encoders.preprocess), which this export needs"
            )
        return self.preprocess

    def tokenizer_spec(self) -> TokenizerSpec:
        """`tokenizer`, for targets that check their text encoder through it: an ExportError if unset."""
        if self.tokenizer is None:
            raise ExportError("these encoders carry no tokenizer spec (Encoders.tokenizer), which this export needs")
        return self.tokenizer


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked of the target (validated against its spec before any work).

    `target_options` is the target's typed options object once `Target.validate_options` has parsed it (export
    functions receive that); a mapping of strings or values by key is accepted there and parsed by the one parser.
    """

    target: str = "onnx"
    precision: str = "fp32"
    opset: int | None = None
    min_cosine: float = PARITY_FLOORS["fp32"]
    target_options: TargetOptions | Mapping[str, object] | None = None


@dataclass(frozen=True)
class EncoderFile:
    """One file a target wrote, relative to the bundle, with its input and output tensors."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class EncoderFiles:
    """The image and text encoder files a target wrote, plus facts the manifest should carry."""

    image: EncoderFile
    text: EncoderFile
    target_info: dict[str, object] = field(default_factory=dict)
    calibration: dict[str, object] | None = None  # calibration set, method and accuracy gate of fp16/int8 files
