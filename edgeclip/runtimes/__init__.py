"""The torch-free device side: bundle reader, runtime backends, preprocessing, tokenizer and task wrappers."""

from edgeclip.runtimes.backends import RuntimeOptions, list_backends
from edgeclip.runtimes.bundle import Bundle, load_bundle
from edgeclip.runtimes.heads import Head
from edgeclip.runtimes.manifest import BundleManifest
from edgeclip.runtimes.zeroshot import Prediction, ZeroShotClassifier, build_zero_shot_head

__all__ = [
    "Bundle",
    "BundleManifest",
    "Head",
    "Prediction",
    "RuntimeOptions",
    "ZeroShotClassifier",
    "build_zero_shot_head",
    "list_backends",
    "load_bundle",
]
