"""LiteRT backend: runs a bundle's `.tflite` encoders with ai-edge-litert's Interpreter, XNNPACK on, threads set.

The files take a fixed batch (1 unless exported otherwise): a larger batch runs row group by row group, in order.
Inputs are cast to the dtypes the manifest records (token ids are int32 in LiteRT bundles). The thread count is
always passed to the interpreter (its own default is one thread): RuntimeOptions.threads, else the CPUs this
process may use. Torch-free.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import BundleError, UsageError
from edgeclip.runtimes.backends import RuntimeOptions, register_backend
from edgeclip.runtimes.manifest import EncoderSpec
from edgeclip.runtimes.placement import Placement

DELEGATE = "XNNPACK"
INSTALL_HINT = "pip install 'edgeclip[litert]'"
_NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "int64": np.int64, "float16": np.float16}


def default_threads() -> int:
    """Threads when none are asked: the CPUs this process may run on (LiteRT's own default is 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def make_interpreter(path: Path, threads: int, *, xnnpack: bool = True) -> Any:
    """An Interpreter over `path` with `threads` threads and XNNPACK applied (or explicitly off), tensors allocated."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise UsageError(f"LiteRT bundles need ai-edge-litert: {INSTALL_HINT}") from None
    # BUILTIN applies the default delegate (XNNPACK) at allocation; the *_WITHOUT_DEFAULT_DELEGATES kind keeps it off.
    resolver = OpResolverType.BUILTIN if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:  # a file that is not a LiteRT flatbuffer, or one it cannot prepare
        raise BundleError(f"{path} could not be loaded by the LiteRT interpreter: {_first_line(e)}") from None
    return interpreter


def delegate_coverage(ops: Sequence[Mapping[str, Any]]) -> tuple[int, int, int, dict[str, int]]:
    """(total ops, ops inside delegate partitions, partitions, op name -> count left out) of an allocated graph.

    `ops` is the interpreter's node list (`_get_ops_details()`): the model's own nodes, then one DELEGATE node per
    partition a delegate took. A partition's nodes are found from its boundary: walking back from the DELEGATE
    node's output tensors through their producers, stopping at its input tensors, reaches exactly the nodes it
    replaced (a partition is a convex subgraph). No log is read.
    """
    model_ops = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producer = {int(t): op["index"] for op in model_ops for t in op["outputs"] if int(t) >= 0}
    by_index = {op["index"]: op for op in model_ops}
    covered: set[int] = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer or producer[tensor] in covered:
                continue
            index = producer[tensor]
            covered.add(index)
            stack.extend(int(t) for t in by_index[index]["inputs"] if int(t) >= 0)
    fallback = Counter(op["op_name"] for op in model_ops if op["index"] not in covered)
    return len(model_ops), len(covered), len(delegates), dict(sorted(fallback.items()))


@register_backend("litert", targets=("litert",))
class LiteRTBackend:
    """One LiteRT interpreter over one `.tflite` encoder (its default signature), XNNPACK on, thread count set."""

    def __init__(self, path: Path, encoder: EncoderSpec, options: RuntimeOptions) -> None:
        if options.providers and any(p.upper() != DELEGATE for p in options.providers):
            raise UsageError(f"the litert backend runs on the CPU with {DELEGATE}: got providers {options.providers}")
        self.path = path
        self.threads = options.threads or default_threads()
        self.interpreter = make_interpreter(path, self.threads)
        signatures = self.interpreter.get_signature_list()
        if len(signatures) != 1:
            raise BundleError(f"{path}: expected one signature (one encoder per file), found {sorted(signatures)}")
        self.signature = next(iter(signatures))
        self.runner = self.interpreter.get_signature_runner(self.signature)
        details = self.runner.get_input_details()
        wanted = [t.name for t in encoder.inputs]
        if sorted(details) != sorted(wanted):
            raise BundleError(
                f"{path}: the encoder takes inputs {sorted(details)}: expected {wanted} as the manifest says "
                "(encoder replaced or manifest edited)"
            )
        self.input_dtypes = {t.name: _NUMPY_DTYPES.get(t.dtype, np.float32) for t in encoder.inputs}
        self.batch = {name: int(d["shape"][0]) for name, d in details.items()}
        self.output_names = [t.name for t in encoder.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feed = {name: np.ascontiguousarray(arr, dtype=self.input_dtypes.get(name)) for name, arr in inputs.items()}
        rows = len(next(iter(feed.values())))
        step = max(self.batch.values()) if self.batch else rows
        chunks: list[dict[str, np.ndarray]] = []
        for start in range(0, rows, step):
            part = {name: arr[start : start + step] for name, arr in feed.items()}
            short = step - len(next(iter(part.values())))
            if short:  # a last, partial group: padded with its first row, the padding dropped from the outputs
                part = {name: np.concatenate([arr, np.repeat(arr[:1], short, axis=0)]) for name, arr in part.items()}
            out = self.runner(**part)
            chunks.append({name: np.asarray(out[name])[: step - short] for name in self.output_names})
        return [np.concatenate([c[name] for c in chunks]) for name in self.output_names]

    def placement(self) -> Placement:
        """XNNPACK coverage of the loaded graph: its nodes, those inside XNNPACK partitions, and the rest by op."""
        total, delegated, pieces, fallback = delegate_coverage(self.interpreter._get_ops_details())
        return Placement(
            backend="litert",
            delegate=DELEGATE,
            total_ops=total,
            delegated_ops=delegated,
            pieces=pieces,
            fallback=fallback,
            note=f"interpreter execution plan after XNNPACK ({self.threads} threads): nodes replaced by each "
            "DELEGATE node, found from its boundary tensors",
        )
