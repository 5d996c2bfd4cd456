"""ONNX Runtime backend: runs `.onnx` encoder files on CPU, CUDA, TensorRT or CoreML execution providers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgeclip.errors import BundleError, UsageError
from edgeclip.runtimes.backends import RuntimeOptions, register_backend
from edgeclip.runtimes.manifest import EncoderSpec

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, best first."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _session_options(threads: int | None):  # -> onnxruntime.SessionOptions
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


@register_backend("onnxruntime", targets=("onnx",))
class OnnxRuntimeBackend:
    """One ONNX Runtime session over one encoder file; inputs are cast to the dtypes the manifest records."""

    def __init__(self, path: Path, encoder: EncoderSpec, options: RuntimeOptions) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UsageError("ONNX bundles need onnxruntime: pip install onnxruntime") from None
        available = available_providers()
        providers = list(options.providers) if options.providers else ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise UsageError(
                f"execution provider {missing[0]} is not available here: expected one of {', '.join(available)}"
            )
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), sess_options=_session_options(options.threads), providers=providers
            )
        except Exception as e:  # onnxruntime raises its own exception types, one per failure kind
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{path} could not be loaded by onnxruntime: {first_line}") from None
        self.input_dtypes = {t.name: _NUMPY_DTYPES.get(t.dtype, np.float32) for t in encoder.inputs}
        self.output_names = [t.name for t in encoder.outputs]
        self.providers = tuple(self.session.get_providers())

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feed = {name: np.ascontiguousarray(arr, dtype=self.input_dtypes.get(name)) for name, arr in inputs.items()}
        return self.session.run(self.output_names, feed)
