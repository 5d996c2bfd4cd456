"""Where does ONNX Runtime lose time on a CLIP model, and how fast is edgeclip's ONNX export? (a script, not a test)

Builds open_clip's MobileCLIP2-S0 with random weights (seed 0; no download), then times at batch 1 on the CPU:

  eager           open_clip model in PyTorch, as created
  eager-reparam   after timm's reparameterize_model (what every export starts from)
  ort-baseline    plain torch.onnx.export (TorchScript exporter, opset 17), default ORT session + thread count
  ort-edgeclip-*  edgeclip.export.onnx_graph.export_onnx_graph's file, ORT at BASIC / EXTENDED / ALL optimization,
                  "all-nospin" = ALL without intra-op spinning; "all" is edgeclip's runtime setting
  ov-f32 / ov-default  OpenVINO CPU on the same edgeclip file, INFERENCE_PRECISION_HINT f32 / left at its default
                  (bf16 on CPUs with AVX512_BF16 or AMX: not an fp32 number)

Candidates run interleaved in shuffled order; a round counts only when other processes used < 5% of a CPU during
it (the machine is shared), and the table reports the median of the kept rounds. --profile prints ORT's per-op
profile of the baseline and edgeclip graphs at ALL.

    python -m benchmarks.explore_onnx_speed [--threads 2] [--rounds 15] [--profile] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import open_clip
import torch
from timm.utils.model import reparameterize_model

from benchmarks.timing import op_profile, time_interleaved
from edgeclip.export.onnx_graph import export_onnx_graph
from edgeclip.models.encoders import ImageEncoder, TextEncoder
from edgeclip.runtimes.backends.ort import session_options

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def edgeclip_session(path: Path, threads: int, level: str = "all", spin: bool = True, profile: bool = False):
    """An ORT session with the runtime backend's settings, the optimization level and spinning overridable."""
    so = session_options(threads)
    so.graph_optimization_level = LEVELS[level]
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.enable_profiling = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def default_session(path: Path, threads: int, profile: bool = False):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def runner(session, x: np.ndarray):
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)[0]


def openvino_runner(path: Path, x: np.ndarray, threads: int, precision: str | None):
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda: next(iter(request.infer({0: x}).values()))


def torch_runner(module: torch.nn.Module, x: torch.Tensor):
    def run():
        with torch.inference_mode():
            return module(x).numpy()

    return run


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MobileCLIP2-S0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", type=Path, help="write the ONNX files here instead of a temporary folder")
    parser.add_argument("--only", choices=["image", "text"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = open_clip.create_model(args.model).eval()
    reparam = reparameterize_model(clip)
    image_size = clip.visual.preprocess_cfg["size"] if hasattr(clip.visual, "preprocess_cfg") else 224
    image_size = image_size if isinstance(image_size, int) else image_size[-1]
    rng = np.random.default_rng(0)
    towers = {
        "image": (ImageEncoder, rng.standard_normal((1, 3, image_size, image_size), dtype=np.float32), "pixels"),
        "text": (TextEncoder, rng.integers(1, 49407, (1, 77)).astype(np.int64), "token_ids"),
    }
    work = args.keep or Path(tempfile.mkdtemp(prefix="edgeclip-onnx-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    for tower, (wrap, x_np, input_name) in towers.items():
        if args.only and tower != args.only:
            continue
        eager, eager_reparam = wrap(clip).eval(), wrap(reparam).eval()
        x = torch.from_numpy(x_np)
        baseline, ours = work / f"{tower}_baseline.onnx", work / f"{tower}_edgeclip.onnx"
        start = time.perf_counter()
        torch.onnx.export(
            eager_reparam, (x,), str(baseline), input_names=[input_name], output_names=["embeddings"],
            opset_version=17, dynamo=False, dynamic_axes={input_name: {0: "batch"}},
        )  # fmt: skip
        print(f"{tower}: baseline export {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        export_onnx_graph(eager_reparam, x, ours, input_name=input_name, output_name="embeddings")
        print(f"{tower}: edgeclip export {time.perf_counter() - start:.1f} s")
        t = args.threads
        fns = {
            "eager": torch_runner(eager, x),
            "eager-reparam": torch_runner(eager_reparam, x),
            "ort-baseline": runner(default_session(baseline, t), x_np),
            "ort-edgeclip-basic": runner(edgeclip_session(ours, t, "basic"), x_np),
            "ort-edgeclip-extended": runner(edgeclip_session(ours, t, "extended"), x_np),
            "ort-edgeclip-all-nospin": runner(edgeclip_session(ours, t, "all", spin=False), x_np),
            "ort-edgeclip-all": runner(edgeclip_session(ours, t, "all"), x_np),
            "ov-f32": openvino_runner(ours, x_np, t, "f32"),
            "ov-default": openvino_runner(ours, x_np, t, None),
        }
        reference = fns["eager"]()
        cosines = {name: cosine(fn(), reference) for name, fn in fns.items()}
        ms = time_interleaved(fns, args.rounds)
        print(f"\n{tower} encoder, batch 1, {t} threads: median ms | x faster than eager | / ov-f32 | cosine")
        for name, value in ms.items():
            print(
                f"  {name:26s} {value:7.2f} | {ms['eager'] / value:5.2f}x | {value / ms['ov-f32']:5.2f}"
                f" | {cosines[name]:.7f}"
            )
        if args.profile:
            for name, session in (
                ("ort-baseline", default_session(baseline, t, profile=True)),
                ("ort-edgeclip-all", edgeclip_session(ours, t, "all", profile=True)),
            ):
                print(f"  profile {name}:")
                op_profile(session, runner(session, x_np))
        print()


if __name__ == "__main__":
    main()
