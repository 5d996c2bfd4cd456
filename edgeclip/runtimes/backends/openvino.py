"""OpenVINO backend: runs a bundle's OpenVINO IR (`.xml` + `.bin`) or its ONNX files on the CPU plugin.

The precision hint decides the CPU's arithmetic: `f32` (exact, like ONNX Runtime), `bf16` (AVX512_BF16/AMX CPUs:
about 2x faster on MobileCLIP2-S0, cosine ~0.999 to f32) or `auto` (the hint the IR records, else OpenVINO's
own default, bf16 where the CPU has it). bf16 asked on a CPU without it warns once and runs f32, and says so in
`describe()`. Latency settings mirror the ONNX Runtime backend: one stream, the given number of threads.
Measurements and the CPU-feature dependence: docs/openvino.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgeclip.errors import BundleError, UsageError
from edgeclip.runtimes.backends import PRECISION_HINTS, RuntimeOptions, register_backend
from edgeclip.runtimes.manifest import EncoderSpec
from edgeclip.runtimes.placement import Placement

INSTALL = 'pip install "edgeclip[openvino]"'
HINT_KEY = ["runtime_options", "INFERENCE_PRECISION_HINT"]  # where an IR records its precision hint (rt_info)
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
# Runtime-model layers that move or hold data rather than compute: left out of the placement counts.
_NOT_COMPUTE = {"Input", "Output", "Const", "Reorder", "Parameter", "Result", "Constant"}
_warned: set[str] = set()


def import_openvino() -> ModuleType:
    """The openvino package, or a one-line UsageError naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise UsageError(f"OpenVINO is not installed: {INSTALL}") from None
    return openvino


@cache
def _core() -> Any:
    return import_openvino().Core()


def openvino_version() -> str:
    """The installed OpenVINO release (e.g. 2026.4.1)."""
    return str(import_openvino().__version__).split("-")[0]


def cpu_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin says this CPU can compute in (e.g. FP32, BF16, INT8)."""
    return tuple(str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_has_bf16() -> bool:
    """True where the CPU plugin runs bf16 natively (AVX512_BF16 or AMX)."""
    return "BF16" in cpu_capabilities()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


def recorded_hint(model: Any) -> str | None:
    """The precision hint an IR records in its rt_info (the openvino target writes it for bf16 bundles)."""
    if not model.has_rt_info(HINT_KEY):
        return None
    value = str(model.get_rt_info(HINT_KEY).astype(str)).strip().lower()
    return value if value in PRECISION_HINTS else None


def resolve_hint(requested: str | None, recorded: str | None, has_bf16: bool) -> tuple[str, str]:
    """The hint to compile with ('f32', 'bf16' or 'default') and why, from the request, the IR and the CPU."""
    hint = requested if requested not in (None, "auto") else recorded
    if hint in (None, "auto"):
        if has_bf16:
            return "bf16", "OpenVINO's default on this CPU (it has bf16)"
        return "f32", "OpenVINO's default on this CPU (no bf16)"
    source = "asked" if requested not in (None, "auto") else "recorded in the IR"
    if hint == "bf16" and not has_bf16:
        return "f32", f"bf16 {source}, but this CPU has no AVX512_BF16/AMX: ran f32"
    return str(hint), source


def _check_inputs(path: Path, model: Any, encoder: EncoderSpec) -> None:
    """The model's inputs must be the manifest's: same names, same rank, same fixed sizes (one line otherwise)."""
    actual = [(p.get_any_name(), p.get_partial_shape()) for p in model.inputs]
    expected = [(t.name, list(t.shape)) for t in encoder.inputs]
    if [a[0] for a in actual] != [e[0] for e in expected]:
        raise BundleError(
            f"{path}: the encoder takes inputs {[a[0] for a in actual]}: expected {[e[0] for e in expected]} "
            "as the manifest says (encoder replaced or manifest edited)"
        )
    for (name, shape), (_, want) in zip(actual, expected, strict=True):
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else None
        fixed = dims is not None and len(dims) == len(want)
        if fixed and dims is not None:
            fixed = all(a is None or not isinstance(w, int) or a == w for a, w in zip(dims, want, strict=True))
        if not fixed:
            shown = f"[{', '.join('?' if d is None else str(d) for d in dims)}]" if dims is not None else "dynamic rank"
            raise BundleError(
                f"{path}: the encoder's input {name!r} has shape {shown}: expected {want} as the manifest says"
            )


@register_backend("openvino", targets=("openvino", "onnx"), precision_hints=("f32", "bf16"))
class OpenVinoBackend:
    """One OpenVINO compiled model over one encoder file (IR or ONNX), compiled for latency on the CPU plugin."""

    def __init__(self, path: Path, encoder: EncoderSpec, options: RuntimeOptions) -> None:
        ov = import_openvino()
        if options.providers:
            raise UsageError("OpenVINO takes no execution providers: drop --provider (they are ONNX Runtime's)")
        hint = options.precision_hint
        path = Path(path)
        core = _core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError with a multi-line trace for an unreadable file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{path} could not be read by OpenVINO {openvino_version()}: {first[:300]}") from None
        _check_inputs(path, model, encoder)
        self.hint, self.hint_reason = resolve_hint(hint, recorded_hint(model), cpu_has_bf16())
        if "ran f32" in self.hint_reason:
            _warn_once(f"OpenVINO: {self.hint_reason}")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        config["INFERENCE_PRECISION_HINT"] = {"f32": ov.Type.f32, "bf16": ov.Type.bf16}[self.hint]
        if options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = options.threads
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # a model the CPU plugin cannot compile: one line, the file named
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{path} could not be compiled by OpenVINO's CPU plugin: {first[:300]}") from None
        self.request = self.compiled.create_infer_request()
        self.path = path
        self.input_dtypes = {t.name: _NUMPY_DTYPES.get(t.dtype, np.float32) for t in encoder.inputs}

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feed = {name: np.ascontiguousarray(arr, dtype=self.input_dtypes.get(name)) for name, arr in inputs.items()}
        result = self.request.infer(feed)
        return [np.array(result[out]) for out in self.compiled.outputs]

    def describe(self) -> str:
        """What runs, for info and bench: 'CPU bf16 (asked)'."""
        return f"CPU {self.hint} ({self.hint_reason})"

    def placement(self) -> Placement:
        """Compute layers of the compiled CPU model by the precision they run in (from the runtime model)."""
        by_precision: dict[str, int] = {}
        fallback: dict[str, int] = {}
        total = 0
        target = {"bf16": "bf16", "f32": "f32"}[self.hint]
        quantized = {"i8", "u8"}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = str(info["layerType"].astype(str)) if "layerType" in info else op.get_type_name()
            if kind in _NOT_COMPUTE:
                continue
            precision = str(info["runtimePrecision"].astype(str)) if "runtimePrecision" in info else "?"
            total += 1
            by_precision[precision] = by_precision.get(precision, 0) + 1
            if precision != target and precision not in quantized:
                key = f"{kind}:{precision}"
                fallback[key] = fallback.get(key, 0) + 1
        delegated = total - sum(fallback.values())
        shares = ", ".join(f"{p} {n}" for p, n in sorted(by_precision.items(), key=lambda kv: -kv[1]))
        return Placement(
            backend="openvino",
            delegate=f"CPU plugin ({target})",
            total_ops=total,
            delegated_ops=delegated,
            pieces=1,
            fallback=fallback,
            note=f"compute layers of the compiled runtime model by runtime precision: {shares}; "
            f"delegated = run in {target} or int8",
        )
