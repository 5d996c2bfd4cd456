"""TensorRT fp16 and int8 engines for MobileCLIP2-S0 against ONNX Runtime CUDA fp32 (a script for a GPU session).

Needs an NVIDIA GPU, `pip install -e ".[tensorrt]"` and onnxruntime-gpu (for the CUDA fp32 reference). Exports,
with random weights (no download; the same weights in every bundle):

  ort-cuda-fp32   --target onnx fp32, run by ONNX Runtime's CUDAExecutionProvider   (the reference)
  trt-fp16        --target tensorrt --precision fp16
  trt-int8        --target tensorrt --precision int8, calibrated on N images of the built-in shapes dataset

then reports, per engine bundle: parity as recorded at export (engine vs ONNX Runtime fp32 and vs PyTorch), parity
measured here against ort-cuda-fp32 on the same photographs and strings, and latency p50/p90 of each encoder at
each batch size (host arrays in, host arrays out: the copies count for every runtime alike).

    python -m benchmarks.tensorrt_engines [--out trt-bench] [--batches 1,32] [--iters 200] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

RUNS = ("ort-cuda-fp32", "trt-fp16", "trt-int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MobileCLIP2-S0", help="open_clip architecture (random weights)")
    parser.add_argument("--out", type=Path, default=Path("trt-bench"), help="folder for the bundles and cache")
    parser.add_argument("--batches", default="1,32", help="batch sizes to time, comma-separated")
    parser.add_argument("--iters", type=int, default=200, help="timed runs per encoder and batch")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first")
    parser.add_argument("--calib-images", type=int, default=128, help="int8 calibration images (shapes dataset)")
    parser.add_argument("--workspace", type=int, default=4096, help="TensorRT workspace limit, MiB")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def export_all(args: argparse.Namespace, max_batch: int) -> dict[str, Path]:
    """The three bundles (reused when already there: delete --out to rebuild)."""
    from edgeclip.data.shapes import ShapesDataset, write_image_folder
    from edgeclip.export import export_bundle

    args.out.mkdir(parents=True, exist_ok=True)
    calib = args.out / "calib-images"
    if not calib.exists():
        write_image_folder(ShapesDataset("train", size=256, seed=0), calib, args.calib_images)
    trt = {"max_batch": max_batch, "workspace": args.workspace, "timing_cache": args.out / "timing.cache"}
    plans = {
        "ort-cuda-fp32": {"target": "onnx", "precision": "fp32", "target_options": {}},
        "trt-fp16": {"target": "tensorrt", "precision": "fp16", "target_options": dict(trt)},
        "trt-int8": {"target": "tensorrt", "precision": "int8", "target_options": {**trt, "calibration": calib}},
    }
    paths = {}
    for name, plan in plans.items():
        path = args.out / f"{name}.edgeclip"
        if not path.exists():
            started = time.perf_counter()
            result = export_bundle(args.model, output=path, random_init=True, **plan)
            print(f"exported {name} in {time.perf_counter() - started:.0f} s ({result.timings})", flush=True)
        paths[name] = path
    return paths


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p90 in milliseconds."""
    p50, p90 = np.percentile(np.asarray(samples) * 1e3, [50, 90])
    return {"p50_ms": float(p50), "p90_ms": float(p90)}


def time_encoder(runner, name: str, batch: np.ndarray, iters: int, warmup: int) -> dict[str, float]:
    """Latency of one encoder at one batch: warm-up, then `iters` timed runs."""
    for _ in range(warmup):
        runner.run({name: batch})
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        runner.run({name: batch})
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def inputs(bundle, batch: int) -> dict[str, np.ndarray]:
    """Real photographs and strings, repeated up to `batch` rows, preprocessed and tokenized by the bundle."""
    from edgeclip.export.parity import SAMPLE_TEXTS, sample_images
    from edgeclip.runtimes.preprocess import preprocess

    pixels = preprocess(sample_images(), bundle.manifest.preprocess)
    tokens = bundle.tokenizer.encode(list(SAMPLE_TEXTS))
    return {"image": np.resize(pixels, (batch, *pixels.shape[1:])), "text": np.resize(tokens, (batch, tokens.shape[1]))}


def main(argv: list[str] | None = None) -> int:
    """Export, measure parity and latency, print a table (and JSON)."""
    args = parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    from edgeclip.metrics.parity import parity_report
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.backends.ort import available_providers
    from edgeclip.runtimes.backends.tensorrt import device_facts, tensorrt_unavailable

    reason = tensorrt_unavailable()
    if reason is not None:
        print(f"tensorrt_engines.py needs an NVIDIA GPU with TensorRT: {reason}", file=sys.stderr)
        return 2
    if "CUDAExecutionProvider" not in available_providers():
        print(
            "the ONNX Runtime CUDA fp32 reference needs onnxruntime-gpu (CUDAExecutionProvider is missing)",
            file=sys.stderr,
        )
        return 2
    facts = device_facts()
    print(f"device: {facts['gpu_name']} (sm {facts['compute_capability']}), TensorRT {facts['tensorrt_version']}")
    paths = export_all(args, max(batches))
    bundles = {
        name: load_bundle(path, providers=["CUDAExecutionProvider"] if name.startswith("ort") else None)
        for name, path in paths.items()
    }
    reference = bundles["ort-cuda-fp32"]
    probe = inputs(reference, 16)
    ref_out = {
        role: reference.encoder(role).run({reference.manifest.encoders[role].inputs[0].name: probe[role]})[0]
        for role in ("image", "text")
    }
    results: dict[str, dict] = {"device": facts, "host": platform.node(), "model": args.model, "runs": {}}
    for name, bundle in bundles.items():
        m = bundle.manifest
        row: dict = {"precision": m.precision, "export_parity": {}, "parity_vs_ort_cuda_fp32": {}, "latency": {}}
        for role in ("image", "text"):
            input_name = m.encoders[role].inputs[0].name
            runner = bundle.encoder(role)
            out = runner.run({input_name: probe[role]})[0]
            row["parity_vs_ort_cuda_fp32"][role] = parity_report(ref_out[role], out, "ort-cuda-fp32").to_dict()
            if m.encoders[role].parity is not None:
                row["export_parity"][role] = {
                    "vs_pytorch": m.encoders[role].parity.to_dict(),
                    "vs_onnxruntime_fp32": m.target_info.get("parity_vs_onnxruntime_fp32", {}).get(role),
                }
            for batch in batches:
                feed = inputs(bundle, batch)[role]
                row["latency"][f"{role}@{batch}"] = time_encoder(runner, input_name, feed, args.iters, args.warmup)
        results["runs"][name] = row

    print(f"\n{'run':<15} {'encoder@batch':<14} {'p50 ms':>9} {'p90 ms':>9}   min cosine vs ort-cuda-fp32")
    for name, row in results["runs"].items():
        for key, lat in row["latency"].items():
            cos = row["parity_vs_ort_cuda_fp32"][key.split("@")[0]]["min_cosine"]
            print(f"{name:<15} {key:<14} {lat['p50_ms']:>9.3f} {lat['p90_ms']:>9.3f}   {cos:.6f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
