"""TensorRT backend: runs a bundle's `.engine` encoders on an NVIDIA GPU (TensorRT 10+ and cuda-python, no torch).

Engines are bound to the TensorRT version and the GPU that built them; the bundle manifest records both
(`target_info.tensorrt`) and a mismatch is refused with that reason before TensorRT sees the file.
Batches larger than the engine's optimization profile are run in pieces of its maximum batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgeclip.errors import BundleError, RuntimeUnavailable, UsageError
from edgeclip.runtimes.backends import RuntimeOptions, register_backend
from edgeclip.runtimes.manifest import MANIFEST_NAME, EncoderSpec, TensorRTRecord

INSTALL = "pip install 'edgeclip[tensorrt]'"


def import_cudart() -> ModuleType:
    """cuda-python's CUDA runtime module (`cuda.bindings.runtime` in 12.6+, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # older cuda-python layout; ImportError propagates when neither exists
    return cudart


def cuda_call(result: tuple[Any, ...], what: str) -> Any:
    """Unwrap cuda-python's (error, value...) tuples; RuntimeError names the call and the CUDA error."""
    err, *rest = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {getattr(err, 'name', err)}")
    return rest[0] if len(rest) == 1 else tuple(rest) or None


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot build or run engines here (None: it can): missing package or no visible NVIDIA GPU."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"the tensorrt package is not installed ({INSTALL})"
    try:
        cudart = import_cudart()
    except ImportError:
        return f"cuda-python is not installed ({INSTALL})"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return f"no NVIDIA GPU is visible to CUDA ({getattr(err, 'name', err) if int(err) else '0 devices'})"
    return None


def device_facts(device: int = 0) -> dict[str, str]:
    """TensorRT version, GPU name and compute capability of the GPU engines are built for or run on."""
    import tensorrt as trt

    prop = cuda_call(import_cudart().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": name.rstrip("\x00").strip(),
        "compute_capability": f"{prop.major}.{prop.minor}",
    }


def _recorded(path: Path) -> TensorRTRecord | None:
    """The TensorRT record of the bundle holding `path` (None while an export is still writing it)."""
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None
    info = json.loads(manifest.read_text(encoding="utf-8")).get("target_info") or {}
    return TensorRTRecord.from_dict(info["tensorrt"]) if "tensorrt" in info else None


@register_backend("tensorrt", targets=("tensorrt",))
class TensorRTBackend:
    """One deserialized engine and execution context over one `.engine` file, with device buffers per shape."""

    def __init__(self, path: Path, encoder: EncoderSpec, options: RuntimeOptions) -> None:
        path = Path(path)
        if path.suffix != ".engine":
            raise RuntimeUnavailable(
                f"{path.name} is a TensorRT-ready ONNX graph (exported with --onnx-only), not an engine: build the "
                "engines on the NVIDIA device with `edgeclip export --target tensorrt`"
            )
        reason = tensorrt_unavailable()
        if reason is not None:
            raise RuntimeUnavailable(f"TensorRT engine {path.name} needs an NVIDIA GPU with TensorRT: {reason}")
        if options.providers or options.threads is not None:
            raise UsageError("TensorRT bundles take no execution providers or threads: drop --providers/--threads")
        import tensorrt as trt

        record = _recorded(path)
        facts = device_facts()
        why = record.mismatch(**facts) if record is not None else None
        if why is not None:
            raise BundleError(f"TensorRT engine {path} cannot run here: {why}; re-export the bundle on this device")
        self.cudart = import_cudart()
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{path} could not be deserialized by TensorRT {trt.__version__} on {facts['gpu_name']}")
        self.context = self.engine.create_execution_context()
        self.input = encoder.inputs[0].name
        self.output = encoder.outputs[0].name
        self.dtypes = {
            name: np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))) for name in (self.input, self.output)
        }
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        self.stream = cuda_call(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)

    def _device(self, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for tensor `name`, grown when a larger batch arrives."""
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_call(self.cudart.cudaFree(ptr), "cudaFree")
            ptr = int(cuda_call(self.cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def _run_piece(self, batch: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        host_in = np.ascontiguousarray(batch, dtype=self.dtypes[self.input])
        if not self.context.set_input_shape(self.input, tuple(host_in.shape)):
            raise UsageError(f"TensorRT engine rejects input shape {tuple(host_in.shape)} for {self.input}")
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        host_out = np.empty(out_shape, dtype=self.dtypes[self.output])
        d_in = self._device(self.input, host_in.nbytes)
        d_out = self._device(self.output, host_out.nbytes)
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cudart.cudaMemcpyAsync(d_in, host_in.ctypes.data, host_in.nbytes, to_device, self.stream), "copy in")
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError(f"TensorRT execution failed for a batch of {len(host_in)}")
        out_ptr = host_out.ctypes.data
        cuda_call(cudart.cudaMemcpyAsync(out_ptr, d_out, host_out.nbytes, to_host, self.stream), "copy out")
        cuda_call(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return host_out.astype(np.float32, copy=False)

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        array = np.asarray(inputs[self.input])
        pieces = [self._run_piece(array[s : s + self.max_batch]) for s in range(0, len(array), self.max_batch)]
        return [np.concatenate(pieces)]

    def __del__(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
