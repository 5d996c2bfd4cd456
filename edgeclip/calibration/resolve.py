"""One calibration source for every target: a CalibrationSet given, a .npz read, or a folder of images drawn."""

from __future__ import annotations

import warnings
from pathlib import Path

from edgeclip.calibration.sets import CalibrationSet, build_calibration_set, load_calibration_set
from edgeclip.runtimes.preprocess import PreprocessSpec


def resolve_calibration(source: CalibrationSet | str | Path, spec: PreprocessSpec) -> CalibrationSet:
    """A CalibrationSet for `spec`: given, read from a .npz (checked against `spec`), or built from a folder."""
    if isinstance(source, CalibrationSet):
        source.check(spec)
        return source
    path = Path(str(source))
    if path.suffix == ".npz":
        return load_calibration_set(path, expect=spec)
    calib, skipped = build_calibration_set(path, spec)
    if skipped:
        warnings.warn(f"calibration skipped {len(skipped)} unreadable images: {'; '.join(skipped)}", stacklevel=2)
    return calib
