"""ExecuTorch backend: runs a bundle's `.pte` encoders with `executorch.runtime` and its XNNPACK kernels (the CPU
kernels ExecuTorch runs on Android and iOS), with the thread count always set.

A `.pte` holds one method per exported batch size (`forward` for the smallest, `batch_<n>` for the others); the
batch of each is read from the program itself, and a batch is cut into runs of those sizes. ExecuTorch's Python
runtime takes and returns `torch.Tensor` only (it links libtorch and imports torch itself), so this module converts
numpy arrays with torch at run time; nothing of edgeclip's imports torch when this module loads.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import BundleError, RuntimeUnavailable, UsageError
from edgeclip.runtimes.backends import RuntimeOptions, register_backend
from edgeclip.runtimes.manifest import EncoderSpec, TensorSpec
from edgeclip.runtimes.placement import Placement

DELEGATE = "XnnpackBackend"
PLACEMENT_SUFFIX = ".placement.json"  # written beside each .pte at export (covered by the bundle's checksums)
EXTRA_HINT = "pip install 'edgeclip[executorch]' (ExecuTorch 1.5 runs with torch 2.13)"
# ExecuTorch ScalarType codes of the inputs edgeclip exports.
_DTYPES = {6: np.float32, 4: np.int64, 3: np.int32}


def default_threads() -> int:
    """Threads when none are asked: the CPUs this process may use (XNNPACK's pool otherwise keeps its last size)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def executorch_runtime() -> tuple[Any, Any]:
    """`executorch.runtime.Runtime.get()` and the pybindings module (thread pool); RuntimeUnavailable if missing."""
    try:
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
    except (ImportError, OSError) as e:  # OSError: the runtime's libtorch does not match the installed torch
        raise RuntimeUnavailable(f"ExecuTorch bundles need the ExecuTorch runtime: {EXTRA_HINT} ({e})") from None
    runtime = Runtime.get()
    if not runtime.backend_registry.is_available(DELEGATE):
        raise RuntimeUnavailable(f"this ExecuTorch runtime has no {DELEGATE}: {EXTRA_HINT}")
    return runtime, portable_lib


def set_threads(portable_lib: Any, threads: int) -> None:
    """Size XNNPACK's (process-wide) thread pool; done before every run, since another backend may have changed it."""
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


@register_backend("executorch", targets=("executorch",))
class ExecuTorchBackend:
    """One `.pte` encoder run by ExecuTorch's XNNPACK delegate; RuntimeOptions.threads sizes its thread pool."""

    def __init__(self, path: Path, encoder: EncoderSpec, options: RuntimeOptions) -> None:
        if options.providers:
            raise UsageError(
                f"ExecuTorch bundles run on {DELEGATE} (delegated at export): drop providers {options.providers}"
            )
        runtime, self._lib = executorch_runtime()
        self.path = Path(path)
        self.input: TensorSpec = encoder.inputs[0]
        self.threads = options.threads or default_threads()
        set_threads(self._lib, self.threads)
        try:
            program = runtime.load_program(self.path)
            methods = {name: program.load_method(name) for name in sorted(program.method_names)}
        except Exception as e:  # the pybindings raise RuntimeError/ValueError on a corrupt or foreign file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{self.path} could not be loaded by ExecuTorch: {first}") from None
        self._methods: dict[int, Any] = {}
        self._dtype: Any = None
        for name, method in methods.items():
            meta = method.metadata
            if meta.num_inputs() != 1:
                raise BundleError(f"{self.path} method {name!r} takes {meta.num_inputs()} inputs: expected 1")
            tensor = meta.input_tensor_meta(0)
            sizes = tuple(tensor.sizes())
            dtype = _DTYPES.get(int(tensor.dtype()))
            if not sizes or dtype is None:
                raise BundleError(f"{self.path} method {name!r} takes {sizes} of type code {tensor.dtype()}")
            self._methods[int(sizes[0])] = method
            self._dtype = dtype
        if not self._methods:
            raise BundleError(f"{self.path} holds no method")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes this file was exported for (one method each)."""
        return tuple(sorted(self._methods))

    def method_for(self, batch: int) -> Any:
        """The method that takes exactly `batch` rows, or a UsageError naming the batch sizes that were exported."""
        if batch not in self._methods:
            sizes = ", ".join(map(str, self.batch_sizes))
            raise UsageError(
                f"batch size {batch} was not exported in {self.path.name}: it takes {sizes} "
                f"(export with --batch-sizes to add one)"
            )
        return self._methods[batch]

    def run_batch(self, array: np.ndarray) -> np.ndarray:
        """One run of exactly an exported batch size (UsageError otherwise); the first output as float32."""
        import torch  # ExecuTorch's pybindings take torch tensors only (see the module docstring)

        method = self.method_for(len(array))
        set_threads(self._lib, self.threads)
        data = torch.from_numpy(np.ascontiguousarray(array, dtype=self._dtype))
        return np.asarray(method.execute([data])[0].numpy(), dtype=np.float32)

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        array = np.asarray(inputs[self.input.name])
        sizes = self.batch_sizes
        out = []
        start = 0
        while start < len(array):
            left = len(array) - start
            fits = [s for s in sizes if s <= left]
            run = max(fits) if fits else min(sizes)
            chunk = array[start : start + min(run, left)]
            if run > len(chunk):  # fewer rows than the smallest exported batch: pad, then drop the padding
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], run - len(chunk), axis=0)])
            out.append(self.run_batch(chunk)[: min(run, left)])
            start += min(run, left)
        return [np.concatenate(out) if out else np.zeros((0,), np.float32)]

    def placement(self) -> Placement:
        """The delegation summary recorded at export (ExecuTorch's get_delegation_info of the lowered graph)."""
        record_path = self.path.with_name(self.path.name.removesuffix(".pte") + PLACEMENT_SUFFIX)
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            return Placement(
                backend="executorch",
                delegate=str(record["delegate"]),
                total_ops=int(record["total_ops"]),
                delegated_ops=int(record["delegated_ops"]),
                pieces=int(record["pieces"]),
                fallback={str(k): int(v) for k, v in dict(record["fallback"]).items()},
                note=str(record.get("note", "")),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BundleError(
                f"{record_path} is missing or malformed ({e}): expected the export's placement record"
            ) from None


ENVELOPE_EVENTS = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL")


def op_times(
    path: Path, array: np.ndarray, threads: int, runs: int = 10, envelopes: bool = False
) -> list[tuple[str, float]]:
    """Median µs of each operator inside the XNNPACK delegate over `runs` calls, in execution order.

    For profiling, not serving: the program is loaded with ETDump on (the PyPI runtime records XNNPACK's own
    per-operator events, e.g. `Convolution (NHWC, F32) DWConv #3`); ops outside the delegate appear as
    `native_call_<op>`. The first two calls are warm-up and not counted. `envelopes` adds the events that enclose
    ops (ENVELOPE_EVENTS: the whole method, each delegate call), to account for time spent between ops.
    """
    import statistics
    import tempfile

    import torch
    from executorch.devtools import Inspector

    _, lib = executorch_runtime()
    set_threads(lib, threads)
    module = lib._load_for_executorch(str(path), enable_etdump=True)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    for _ in range(runs + 2):
        module.forward([tensor])
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(dump))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Output Buffer not found": no tensors were asked for, only times
            blocks = Inspector(etdump_path=str(dump)).event_blocks
    return [
        (event.name, 1e3 * statistics.median(list(event.perf_data.raw)[2:]))
        for block in blocks
        if block.name == "Execute"
        for event in block.events
        if event.perf_data is not None and (envelopes or event.name not in ENVELOPE_EVENTS)
    ]
