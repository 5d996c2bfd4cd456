"""Calibration sets: choosing, storing and feeding the inputs that quantizers calibrate activations on (torch-free).

One protocol feeds every backend: an iterable of ``dict[str, np.ndarray]`` (see `feeds`), adapted per backend
(`OrtCalibrationReader` for ONNX Runtime's quantizer).
"""

from __future__ import annotations

from edgeclip.calibration.feeds import OrtCalibrationReader, feeds, split_held_out
from edgeclip.calibration.resolve import resolve_calibration
from edgeclip.calibration.sampling import STRATEGIES, image_features, select
from edgeclip.calibration.sets import (
    MIN_RECOMMENDED,
    CalibrationSet,
    build_calibration_set,
    load_calibration_set,
    read_captions,
)
from edgeclip.calibration.text import default_text_strings, read_text_strings

__all__ = [
    "MIN_RECOMMENDED",
    "STRATEGIES",
    "CalibrationSet",
    "OrtCalibrationReader",
    "build_calibration_set",
    "default_text_strings",
    "feeds",
    "image_features",
    "load_calibration_set",
    "read_captions",
    "read_text_strings",
    "resolve_calibration",
    "select",
    "split_held_out",
]
