"""edgeclip: CLIP-class models to phones and edge devices, with proof that the deployed model is the model."""

from __future__ import annotations

import importlib
from typing import Any

from edgeclip._version import __version__

# Resolved on first access so that `import edgeclip` stays light and never imports torch.
_LAZY = {
    "load_bundle": "edgeclip.runtimes",
    "Bundle": "edgeclip.runtimes",
    "BundleManifest": "edgeclip.runtimes",
    "Head": "edgeclip.runtimes",
    "ZeroShotClassifier": "edgeclip.runtimes",
    "build_zero_shot_head": "edgeclip.runtimes",
    "LivenessDetector": "edgeclip.runtimes.liveness",
    "QualityScorer": "edgeclip.runtimes.quality",
    "export_bundle": "edgeclip.export",
    "EdgeclipError": "edgeclip.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeclip' has no attribute {name!r}")
