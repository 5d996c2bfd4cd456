"""Op by op: where ExecuTorch XNNPACK fp32 spends an image encoder's time against ONNX Runtime fp32, and what the
`depthwise-bands` rewrite changes.

First one depthwise conv of each kernel size (64 channels, 64x64) is lowered alone and XNNPACK's own event says
which kernel ran it and how long it took. Then the image encoder is lowered as the executorch target lowers it,
once with every XNNPACK rewrite and once without `depthwise-bands`, and exported to ONNX, and:
1. each op is timed inside its runtime: XNNPACK's own per-operator events (ETDump, which the PyPI runtime records
   inside the delegate) and ONNX Runtime's profiler, medians over runs, summed per op class;
2. the whole run is timed three ways: as the profiler saw it (ORT's `model_run`, ExecuTorch's `Method::execute`),
   unprofiled in the profiling process right after it, and each file in its own process, one at a time, in ONE
   interleaved run at batch 1 (the way benchmarks/mobile_runtimes.py times rows): the first two account for the
   time between ops, the last is the comparison.

    PYTHONPATH=$PWD python -m benchmarks.mobile_ops --arch MobileCLIP2-S0 --threads 2

Results: docs/mobile.md#why-the-fp32-image-encoder-was-slower-op-by-op.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# XNNPACK operator names (ETDump event names without their " #n") and ONNX Runtime op types, as one class each.
_XNNPACK_CLASSES = {
    "Fully Connected (NC, F32) GEMM": "1x1 conv / linear (GEMM)",
    "Convolution (NHWC, F32) GEMM": "1x1 conv / linear (GEMM)",
    "Convolution (NHWC, F32) DWConv": "depthwise conv",
    "Convolution (NHWC, F32) IGEMM": "grouped/full conv (IGEMM)",
    "Batch Matrix Multiply (NC, F32) GEMM": "attention bmm",
}


def _ort_class(op: str, shapes: list[dict]) -> str:
    """A class for one ONNX Runtime node from its op type and its weight shape (Conv: [O, I/groups, kh, kw])."""
    if op in ("Conv", "FusedConv"):
        weight = next(iter(shapes[1].values()))
        if weight[2] * weight[3] == 1:
            return "1x1 conv / linear (GEMM)"
        return "depthwise conv" if weight[1] == 1 else "grouped/full conv (IGEMM)"
    if op in ("MatMul", "FusedMatMul", "Gemm"):
        ranks = [len(next(iter(s.values()))) for s in shapes]
        return "attention bmm" if len(ranks) == 2 and min(ranks) >= 3 else "1x1 conv / linear (GEMM)"
    return "other (elementwise, layout, pad/slice, norm)"


def ort_profile(
    path: Path, feed: dict[str, np.ndarray], threads: int, runs: int
) -> tuple[dict[str, list[float]], float]:
    """Median µs per node over `runs` calls, grouped by class ({class: [µs of each node]}), and of the whole run."""
    import onnxruntime

    from edgeclip.runtimes.backends.ort import session_options

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feed)
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    cls: dict[str, str] = {}
    whole: list[float] = []
    for e in json.loads(Path(session.end_profiling()).read_text()):
        if e.get("cat") == "Session" and e["name"] == "model_run":
            whole.append(e["dur"])
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]].append(e["dur"])
            cls[e["name"]] = _ort_class(e["args"]["op_name"], e["args"].get("input_type_shape", []))
    out: dict[str, list[float]] = collections.defaultdict(list)
    for node, us in per_node.items():
        out[cls[node]].append(statistics.median(us[2:] or us))
    return out, statistics.median(whole[2:] or whole)


def xnnpack_class(kind: str) -> str:
    """The op class of an XNNPACK operator kind (its event name without the " #n")."""
    return _XNNPACK_CLASSES.get(kind, "other (elementwise, layout, pad/slice, norm)")


def executorch_profile(
    path: Path, x: np.ndarray, threads: int, runs: int, group: Callable[[str], str] = xnnpack_class
) -> tuple[dict[str, list[float]], float]:
    """XNNPACK's per-operator events (ETDump), median µs per op over `runs` calls grouped by `group(kind)`, and the
    median µs of the whole method (`Method::execute`)."""
    from edgeclip.runtimes.backends.executorch import ENVELOPE_EVENTS, op_times

    out: dict[str, list[float]] = collections.defaultdict(list)
    whole = 0.0
    for name, us in op_times(path, x, threads, runs, envelopes=True):
        if name in ENVELOPE_EVENTS:
            whole = us if name == "Method::execute" else whole
            continue
        out[group(name.rsplit(" #", 1)[0])].append(us)
    return out, whole


def depthwise_kernels(threads: int, runs: int) -> None:
    """Which XNNPACK kernel runs a depthwise conv of each size, and its µs, against ONNX Runtime's for the same op."""
    import torch
    from torch import nn

    from edgeclip.export.onnx_graph import export_onnx_graph
    from edgeclip.export.targets.executorch import _lower
    from edgeclip.runtimes.backends.executorch import op_times

    x = torch.randn(1, 64, 64, 64)
    print(
        "| depthwise kernel (64 ch, 64x64) | taps | XNNPACK kernel | XNNPACK µs: convs / every op but the edge "
        "transposes | ONNX Runtime µs (every node) |"
    )
    print("| --- | --- | --- | --- | --- |")
    cases = [(f"{h}x{w}", (h, w), ()) for h, w in ((3, 3), (5, 5), (3, 7), (4, 6), (4, 7), (7, 7), (9, 9))]
    cases.append(("7x7 as bands (3x7, 3x7, 1x7 convs, each cropped, + adds)", (7, 7), ("depthwise-bands",)))
    with tempfile.TemporaryDirectory() as tmp:
        for label, (kh, kw), rewrites in cases:
            conv = nn.Sequential(nn.Conv2d(64, 64, (kh, kw), padding=(kh // 2, kw // 2), groups=64)).eval()
            path = Path(tmp) / "conv.pte"
            path.write_bytes(_lower("image", conv, x, (1,), rewrites, None).buffer)
            ops = [(n, us) for n, us in op_times(path, x.numpy(), threads, runs) if not n.startswith("Transpose")]
            convs = [(n, us) for n, us in ops if n.startswith("Convolution")]
            kernels = sorted({n.rsplit(" #", 1)[0].split(") ")[-1] for n, _ in convs})
            onnx_path = Path(tmp) / "conv.onnx"
            export_onnx_graph(conv, x, onnx_path, input_name="x", output_name="y")
            ort_us = sum(sum(us) for us in ort_profile(onnx_path, {"x": x.numpy()}, threads, runs)[0].values())
            xnn_us = f"{sum(us for _, us in convs):.0f} / {sum(us for _, us in ops):.0f}"
            print(f"| {label} | {kh * kw} | {', '.join(kernels)} x{len(convs)} | {xnn_us} | {ort_us:.0f} |")


def onnx_runner(path: str, threads: int, x: np.ndarray) -> Callable[[], object]:
    """An ONNX file in ONNX Runtime as edgeclip's backend configures it, as a no-argument call."""
    import onnxruntime

    from edgeclip.runtimes.backends.ort import session_options

    session = onnxruntime.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"pixels": x})


def pte_runner(path: str, threads: int, x: np.ndarray) -> Callable[[], object]:
    """A `.pte` file in edgeclip's ExecuTorch backend, as a no-argument call."""
    from edgeclip.runtimes.backends import RuntimeOptions
    from edgeclip.runtimes.backends.executorch import ExecuTorchBackend
    from edgeclip.runtimes.manifest import EncoderSpec, TensorSpec

    spec = EncoderSpec(Path(path).name, "", (TensorSpec("pixels", tuple(x.shape), "float32"),), ())
    backend = ExecuTorchBackend(Path(path), spec, RuntimeOptions(threads=threads))
    return lambda: backend.run({"pixels": x})


def _median_ms(call: Callable[[], object], runs: int) -> float:
    """Median ms of `runs` calls after two untimed ones."""
    call(), call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _cells(ms: dict[str, float]) -> str:
    return " | ".join(f"{v:.2f}" for v in ms.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="MobileCLIP2-S0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="profiled runs per file (median per op)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the whole-file timing")
    args = parser.parse_args()

    import torch

    from benchmarks.mobile_runtimes import cpu_facts
    from benchmarks.timing import time_in_processes
    from edgeclip.export import _reparameterized_copy
    from edgeclip.export.onnx_graph import export_onnx_graph
    from edgeclip.export.targets.executorch import _lower
    from edgeclip.models.encoders import ImageEncoder
    from edgeclip.models.loading import load_model
    from edgeclip.models.preprocess import preprocess_spec_for
    from edgeclip.precision.module_rewrites import XNNPACK_REWRITES, apply_module_rewrites

    print(f"{args.arch} image encoder, random weights, batch 1, {args.threads} threads; {cpu_facts()}", flush=True)
    depthwise_kernels(args.threads, args.runs)
    loaded = load_model(args.arch, random_init=True)
    encoder = ImageEncoder(_reparameterized_copy(loaded.model)).eval()
    size = preprocess_spec_for(args.arch, None, None)[0].image_size
    example = torch.randn(1, 3, *size)
    x = example.numpy()
    without = tuple(n for n in XNNPACK_REWRITES if n != "depthwise-bands")
    _, counts = apply_module_rewrites(encoder, ("depthwise-bands",))
    print(f"  depthwise-bands replaces {counts['depthwise-bands']} depthwise convs", flush=True)
    files = {"ONNX Runtime": None, "ExecuTorch, no depthwise-bands": without, "ExecuTorch": XNNPACK_REWRITES}
    profiles, factories, profiled_ms, same_process_ms = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, rewrites in files.items():
            if rewrites is None:
                path = Path(tmp) / "image.onnx"
                export_onnx_graph(encoder, example, path, input_name="pixels", output_name="embeddings")
                profiles[label], whole = ort_profile(path, {"pixels": x}, args.threads, args.runs)
                factories[label] = functools.partial(onnx_runner, str(path), args.threads, x)
                profiled_ms[label], same_process_ms[label] = whole / 1e3, _median_ms(factories[label](), args.runs)
                continue
            lowered = _lower("image", encoder, example, (1,), rewrites, None)
            path = Path(tmp) / f"image-{len(rewrites)}.pte"
            path.write_bytes(lowered.buffer)
            print(f"  {label}: {lowered.placement['pieces']} delegate pieces", flush=True)
            profiles[label], whole = executorch_profile(path, x, args.threads, args.runs)
            factories[label] = functools.partial(pte_runner, str(path), args.threads, x)
            profiled_ms[label], same_process_ms[label] = whole / 1e3, _median_ms(factories[label](), args.runs)
        print(f"timing {len(factories)} files, each in its own process (load {os.getloadavg()})", flush=True)
        ms = time_in_processes(factories, rounds=args.rounds)
    print(f"load after {os.getloadavg()}\n")

    classes = sorted({c for p in profiles.values() for c in p}, key=lambda c: -sum(profiles["ONNX Runtime"].get(c, [])))
    print("| op class | " + " | ".join(f"{label}: ops, ms" for label in profiles) + " |")
    print("| --- |" + " --- |" * len(profiles))
    for c in [*classes, "sum of ops"]:
        cells = []
        for p in profiles.values():
            us = [u for k, v in p.items() for u in v] if c == "sum of ops" else p.get(c, [])
            cells.append(f"{len(us)}, {sum(us) / 1e3:.2f}")
        print(f"| {c} | " + " | ".join(cells) + " |")
    print("| whole run, profiled (ORT `model_run`, ExecuTorch `Method::execute`), ms | " + _cells(profiled_ms) + " |")
    print("| whole run, not profiled, in the profiling process after it, ms | " + _cells(same_process_ms) + " |")
    print(
        "| whole file, not profiled, each in its own process (ms) | "
        + " | ".join(f"{ms[k]:.2f}" for k in profiles)
        + " |"
    )
    base = ms["ONNX Runtime"]
    ratios = " | ".join(f"{base / ms[k]:.2f}" for k in profiles)
    print(f"| x ONNX Runtime fp32 (its time over the row's) | {ratios} |")


if __name__ == "__main__":
    main()
