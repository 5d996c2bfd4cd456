"""ONNX Runtime backend: runs `.onnx` encoder files on CPU, CUDA, TensorRT or CoreML execution providers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeclip.errors import BundleError, RuntimeUnavailable, UsageError
from edgeclip.runtimes.backends import RuntimeOptions, register_backend
from edgeclip.runtimes.manifest import EncoderSpec
from edgeclip.runtimes.placement import Placement, from_assignment

if TYPE_CHECKING:
    import onnxruntime

# Makes the session keep which execution provider got each node (ONNX Runtime 1.22+), for placement().
RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, best first."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def session_options(threads: int | None) -> onnxruntime.SessionOptions:
    """CPU settings for latency at small batch, measured on MobileCLIP2-S0 (benchmarks/explore_onnx_speed.py)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    # ENABLE_ALL adds the NCHWc layout transform (blocked AVX2/AVX-512 convs): 29 ms vs 43 ms at EXTENDED on the
    # MobileCLIP2-S0 image tower. It is hardware-specific, so it is applied at load and never saved in a bundle.
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The encoders are one chain of ops: a second (inter-op) pool only fights the intra-op pool for the cores.
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
    # ORT's default intra-op spinning stays on: -15% latency on an idle machine, slower where cores are shared.
    return opts


@register_backend("onnxruntime", targets=("onnx",))
class OnnxRuntimeBackend:
    """One ONNX Runtime session over one encoder file; inputs are cast to the dtypes the manifest records."""

    def __init__(self, path: Path, encoder: EncoderSpec, options: RuntimeOptions) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UsageError("ONNX bundles need onnxruntime: pip install onnxruntime") from None
        if options.precision_hint == "bf16":
            raise UsageError(
                "onnxruntime runs the file's own precision: --precision-hint bf16 needs --backend openvino (or auto)"
            )
        available = available_providers()
        providers = list(options.providers) if options.providers else ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise UsageError(
                f"execution provider {missing[0]} is not available here: expected one of {', '.join(available)}"
            )
        opts = session_options(options.threads)
        opts.add_session_config_entry(RECORD_ASSIGNMENT, "1")  # a list of node names kept after load: no run cost
        try:
            self.session = onnxruntime.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types, one per failure kind
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{path} could not be loaded by onnxruntime: {first_line}") from None
        self.input_dtypes = {t.name: _NUMPY_DTYPES.get(t.dtype, np.float32) for t in encoder.inputs}
        self.output_names = [t.name for t in encoder.outputs]
        self.providers = tuple(self.session.get_providers())

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feed = {name: np.ascontiguousarray(arr, dtype=self.input_dtypes.get(name)) for name, arr in inputs.items()}
        return self.session.run(self.output_names, feed)

    def placement(self) -> Placement:
        """Nodes of the optimized graph per execution provider; the delegate is the provider asked for first."""
        delegate = self.providers[0]
        try:
            assigned = self.session.get_provider_graph_assignment_info()
        except Exception as e:  # AttributeError before onnxruntime 1.22; its own Fail type if not recorded
            import onnxruntime

            raise RuntimeUnavailable(
                f"onnxruntime {onnxruntime.__version__} does not report node placement ({e}): upgrade to 1.22 or later"
            ) from None
        # Providers are assigned after the basic (provider-independent) optimizations; the fusions that follow
        # happen inside a provider, so they do not move a node from one provider to another.
        note = "nodes as ONNX Runtime assigned them to providers (graph after its basic optimizations)"
        if self.providers == ("CPUExecutionProvider",):
            note += "; CPUExecutionProvider alone: no accelerator provider was asked for"
        return from_assignment(
            "onnxruntime",
            delegate,
            ((sub.ep_name, [n.op_type for n in sub.get_nodes()]) for sub in assigned),
            note=note,
        )
