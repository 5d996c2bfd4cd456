"""The ONNX target's precision options: what --precision fp16/int8 may be combined with, checked before any work.

The fp16 and int8 work itself lives in `edgeclip.precision` (`lower_precision` in precision/lower.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeclip.calibration import CalibrationSet
from edgeclip.errors import UsageError
from edgeclip.precision.static import check_method

OPTIONS = ("calibration", "calibration_method", "auto_exclude", "dynamic", "max_cosine_drop", "text_int8")
# Static int8 quantizes the text encoder dynamically unless asked: docs/quantization.md#the-text-encoder
TEXT_INT8_MODES = ("dynamic", "static")


@dataclass(frozen=True)
class PrecisionRequest:
    """The validated int8/fp16 target options."""

    precision: str
    calibration: object | None  # a CalibrationSet, or a path to a .npz, a folder or a captions file
    method: str
    auto_exclude: bool
    dynamic: bool
    max_cosine_drop: float | None
    text_int8: str = "dynamic"  # static int8 only: how the text encoder is quantized (TEXT_INT8_MODES)

    def static_roles(self) -> tuple[str, ...]:
        """The encoders quantized statically from the calibration set."""
        return ("image", "text") if self.text_int8 == "static" else ("image",)


def parse_options(precision: str, options: dict[str, object]) -> PrecisionRequest:
    """Check the ONNX target's precision options before any work; UsageError names the bad one."""
    calibration = options.get("calibration")
    if isinstance(calibration, (list, tuple)):
        if len(calibration) != 1:
            raise UsageError(
                f"the onnx target takes one --calibration (a .npz, folder or captions file), got {len(calibration)}"
            )
        calibration = calibration[0]
    dynamic = bool(options.get("dynamic", False))
    auto_exclude = bool(options.get("auto_exclude", False))
    method = check_method(str(options.get("calibration_method", "minmax")))
    drop = options.get("max_cosine_drop")
    if drop is not None:
        drop = float(drop)
        if not 0.0 <= drop <= 1.0:
            raise UsageError(f"max_cosine_drop is {drop}: expected a number between 0 and 1")
    if precision == "fp32" and drop is not None:
        raise UsageError("--max-cosine-drop gates fp16 and int8 exports against fp32; it does not apply to fp32")
    if precision != "int8":
        given = [k for k in ("calibration", "calibration_method", "auto_exclude", "dynamic") if options.get(k)]
        if given:
            raise UsageError(f"option {given[0]!r} only applies to --precision int8 (got --precision {precision})")
    elif calibration is None and not dynamic:
        raise UsageError(
            "--precision int8 needs --calibration (a .npz from `edgeclip calibrate`, or a folder of "
            "images), or --dynamic for dynamic int8 without calibration"
        )
    elif calibration is not None and dynamic:
        raise UsageError("--dynamic quantizes without calibration: drop --calibration, or drop --dynamic")
    if auto_exclude and dynamic:
        raise UsageError("--auto-exclude needs static int8 (a --calibration set), not --dynamic")
    text_int8 = options.get("text_int8")
    if text_int8 is not None:
        if text_int8 not in TEXT_INT8_MODES:
            raise UsageError(f"--text-int8 is {text_int8!r}: expected one of {', '.join(TEXT_INT8_MODES)}")
        if precision != "int8" or dynamic:
            raise UsageError(
                "--text-int8 chooses how static int8 (--precision int8 --calibration) quantizes the "
                "text encoder; it does not apply here"
            )
    if calibration is not None and not isinstance(calibration, CalibrationSet):
        path = Path(str(calibration))
        if not path.exists():
            raise UsageError(
                f"calibration {path} does not exist: expected a .npz, a folder of images or a captions file"
            )
        calibration = path
    return PrecisionRequest(precision, calibration, method, auto_exclude, dynamic, drop, text_int8 or "dynamic")
