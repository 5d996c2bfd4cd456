"""What a lower-precision export was asked for, as every precision step reads it (built from typed target options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeclip.calibration.sets import CalibrationSet


@dataclass(frozen=True)
class PrecisionRequest:
    """The validated int8/fp16 request: a precision and the target options that shape it."""

    precision: str
    # A CalibrationSet, or a path to a .npz, a folder or a captions file.
    calibration: CalibrationSet | str | Path | None
    method: str
    auto_exclude: bool
    dynamic: bool
    max_cosine_drop: float | None
    text_int8: str = "dynamic"  # static int8 only: how the text encoder is quantized ("dynamic" or "static")

    @classmethod
    def of(cls, precision: str, options: Any) -> PrecisionRequest:
        """The request from typed target options (OnnxOptions, or any with `calibration`/`calibration_method`)."""
        return cls(
            precision,
            options.calibration,
            options.calibration_method,
            getattr(options, "auto_exclude", False),
            getattr(options, "dynamic", False),
            getattr(options, "max_cosine_drop", None),
            getattr(options, "text_int8", "dynamic"),
        )

    def static_roles(self) -> tuple[str, ...]:
        """The encoders quantized statically from the calibration set."""
        return ("image", "text") if self.text_int8 == "static" else ("image",)
