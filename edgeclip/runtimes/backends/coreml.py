"""CoreML backend: runs a bundle's `.mlpackage` encoders with coremltools, on macOS only (Apple runs CoreML only there).

The bundle reader hands every backend the same inputs (normalized float pixels, int64 token ids). Here they are
cast to what the package takes (int32 ids), cut to the batch sizes it accepts, and, for a package with a
`pixels` image input, turned back into the RGB pictures they came from (exact: preprocessing started from uint8).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import BundleError, RuntimeUnavailable, UsageError
from edgeclip.runtimes.backends import RuntimeOptions, register_backend
from edgeclip.runtimes.manifest import EncoderSpec, TensorSpec
from edgeclip.runtimes.placement import Placement, from_assignment

METADATA_PREFIX = "edgeclip."
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32}
# RuntimeOptions.providers for this backend: coremltools' compute units.
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
# The accelerated device a placement report counts for each choice of compute units (the others are fallback).
DELEGATE_DEVICE = {"ALL": "NeuralEngine", "CPU_AND_NE": "NeuralEngine", "CPU_AND_GPU": "GPU", "CPU_ONLY": "CPU"}
# Ops that hold data or names and run on no device; the compute plan gives them no device usage.
_NOT_RUN = frozenset({"const"})


def pixels_to_images(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> list:
    """Normalized [N, 3, H, W] float pixels back to RGB PIL images (rounding undoes float error exactly)."""
    from PIL import Image

    rgb = (pixels.transpose(0, 2, 3, 1) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return [Image.fromarray(image, "RGB") for image in rgb]


def _batch_pieces(n: int, batch: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """(start, stop, run size) chunks covering n rows; a chunk is padded up to an accepted size where needed."""
    kind = batch.get("kind", "range")
    if kind == "range":
        largest = max(int(batch.get("max") or 0), 0) or max(n, 1)  # an unbounded range (-1) takes all at once
        return [(s, min(s + largest, n), min(s + largest, n) - s) for s in range(0, n, largest)]
    sizes = sorted(int(v) for v in batch["sizes"])
    pieces = []
    start = 0
    while start < n:
        left = n - start
        fits = [v for v in sizes if v <= left]
        run = max(fits) if fits else min(sizes)
        stop = start + min(run, left)
        pieces.append((start, stop, run))
        start = stop
    return pieces


@register_backend("coreml", targets=("coreml",))
class CoreMLBackend:
    """One CoreML model over one `.mlpackage`; RuntimeOptions.providers picks compute units (default ALL)."""

    # Declared here: mypy, checking for Linux, reads __init__ past its non-darwin raise as unreachable.
    model: Any  # coremltools.models.MLModel
    input: TensorSpec
    output_name: str
    batch: dict[str, Any]
    pixels: bool
    mean: Sequence[float]
    std: Sequence[float]

    units: str

    def __init__(self, path: Path, encoder: EncoderSpec, options: RuntimeOptions) -> None:
        if sys.platform != "darwin":
            raise RuntimeUnavailable(
                f"CoreML runs only on Apple platforms (macOS/iOS): {Path(path).name} cannot run on "
                f"{platform.system() or sys.platform}; export with --target onnx to run here"
            )
        units = options.providers or ("ALL",)
        if len(units) != 1 or units[0] not in COMPUTE_UNITS:
            raise UsageError(f"CoreML compute units {', '.join(units)}: expected one of {', '.join(COMPUTE_UNITS)}")
        if options.threads is not None:
            raise UsageError("CoreML has no thread setting: drop --threads for CoreML bundles")
        try:
            import coremltools as ct
        except ImportError:
            raise UsageError("CoreML bundles need coremltools: pip install coremltools") from None
        self.units = units[0]
        try:
            self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, units[0]))
        except Exception as e:  # coremltools raises its own and Foundation's errors when compiling fails
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{path} could not be loaded by CoreML: {first}") from None
        meta = dict(self.model.user_defined_metadata)
        self.input = encoder.inputs[0]
        self.output_name = encoder.outputs[0].name
        self.batch = json.loads(meta.get(METADATA_PREFIX + "batch", '{"kind": "range"}'))
        image_input = json.loads(meta.get(METADATA_PREFIX + "image_input", '{"kind": "tensor"}'))
        self.pixels = image_input.get("kind") == "pixels"
        if self.pixels:
            preprocess = json.loads(meta[METADATA_PREFIX + "preprocess"])
            self.mean, self.std = preprocess["mean"], preprocess["std"]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        array = np.asarray(inputs[self.input.name])
        if self.pixels:
            feeds = [{self.input.name: image} for image in pixels_to_images(array, self.mean, self.std)]
            results = self.model.predict(feeds)
            return [np.concatenate([np.asarray(r[self.output_name], np.float32) for r in results])]
        array = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES.get(self.input.dtype, np.float32))
        out = []
        for start, stop, run in _batch_pieces(len(array), self.batch):
            chunk = array[start:stop]
            if run > len(chunk):  # an enumerated size larger than what is left: pad, then drop the padding
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], run - len(chunk), axis=0)])
            result = self.model.predict({self.input.name: chunk})[self.output_name]
            out.append(np.asarray(result, np.float32)[: stop - start])
        return [np.concatenate(out)]

    def placement(self) -> Placement:
        """The compute plan (macOS 14.4+): the device CoreML prefers for each operation of the main function."""
        try:
            import coremltools as ct
            from coremltools.models.compute_plan import MLComputePlan

            plan = MLComputePlan.load_from_path(
                path=self.model.get_compiled_model_path(), compute_units=getattr(ct.ComputeUnit, self.units)
            )
        except Exception as e:  # older macOS or coremltools: no MLComputePlan; Foundation errors while loading
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeUnavailable(f"CoreML gives no compute plan here (needs macOS 14.4+): {first}") from None
        program = plan.model_structure.program
        if program is None:
            raise RuntimeUnavailable("this CoreML model is not an ML Program: it has no per-operation compute plan")
        assigned = []
        for op in program.functions["main"].block.operations:
            if op.operator_name in _NOT_RUN:
                continue
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            device = _device_name(usage.preferred_compute_device) if usage is not None else "unknown"
            assigned.append((device, [op.operator_name]))
        return from_assignment(
            "coreml",
            DELEGATE_DEVICE[self.units],
            assigned,
            note=f"MLComputePlan, compute units {self.units}: the device CoreML prefers per op (const ops left out)",
        )


def _device_name(device: Any) -> str:
    """MLNeuralEngineComputeDevice -> NeuralEngine, MLGPUComputeDevice -> GPU, MLCPUComputeDevice -> CPU."""
    name = type(device).__name__
    return name.removeprefix("ML").removesuffix("ComputeDevice") or name
