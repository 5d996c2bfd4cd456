"""x86 engines side by side: ONNX Runtime and OpenVINO on MobileCLIP2-S0, one interleaved run (a script).

Speed (random-weight MobileCLIP2-S0, batch 1, --threads threads): for the image and the text encoder, rounds of
every row interleaved in one process (benchmarks.timing.time_interleaved), median ms, ratio vs the bundle's ONNX
fp32 and mean / min cosine vs ONNX fp32 over held-out inputs. Rows:

    onnx-fp32        the fp32 bundle, ONNX Runtime (edgeclip's graph and session settings)
    onnx-int8        ONNX int8-edgeclip (edgeclip.precision's recipe: static image, dynamic text)
    ov-f32           `--target openvino --precision fp32` bundle (f32 hint recorded)
    ov-bf16          `--target openvino --precision bf16` bundle (bf16 hint; f32 on a CPU without it)
    ov-int8          `--target openvino --precision int8` bundle (NNCF through edgeclip, the same calibration set)
    peer-ov-default  OpenVINO's defaults on the ONNX file (what a user who picks OpenVINO by hand gets)
    peer-nncf-int8   NNCF's default int8 of the ONNX file (benchmarks.mc2s0.nncf_int8)
    auto             `load_bundle(fp32 bundle, backend="auto")`: what the probe picks here
    auto-f32         the same with precision_hint="f32": what auto picks on a CPU without bf16

Accuracy (--accuracy): the shapes-trained CLIP of benchmarks.quantization_accuracy, exported as each precision;
zero-shot top-1 (shape and colour) on the shapes eval split, for every row that is a bundle.

    python -m benchmarks.x86_engines [--threads 2] [--rounds 10] [--accuracy] [--json F] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROLES = {"image": "pixels", "text": "token_ids"}


def cpu_flags() -> str:
    """The CPU features the rows depend on (bf16: AVX512_BF16/AMX; int8 speed: VNNI)."""
    cmd = "grep -o -w -E 'avx2|avx512[a-z_0-9]*|amx[a-z_0-9]*|fma|f16c' /proc/cpuinfo | sort -u | tr '\\n' ' '"
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def export_openvino(
    arch: str, weights: str | None, root: Path, calib: Path, precisions: tuple[str, ...] = ("fp32", "bf16", "int8")
) -> dict:
    """The openvino bundles (fp32, bf16, int8 through NNCF) exported by edgeclip; a bundle already there is reused."""
    from edgeclip.export import export_bundle

    out = {}
    for precision in precisions:
        if (root / f"ov-{precision}.edgeclip" / "manifest.json").exists():
            out[precision] = root / f"ov-{precision}.edgeclip"
            continue
        options = {"calibration": calib} if precision == "int8" else None
        start = time.perf_counter()
        result = export_bundle(
            arch, weights, root / f"ov-{precision}.edgeclip", target="openvino", precision=precision,
            target_options=options, force=True,
        )  # fmt: skip
        print(f"  exported openvino:{precision} in {time.perf_counter() - start:.0f}s", flush=True)
        out[precision] = result.path
    return out


def bundle_row(bundle, role: str) -> Callable[[np.ndarray], np.ndarray]:
    """One encoder of a loaded bundle as its backend runs it: input array -> embeddings."""
    encoder, name = bundle.encoder(role), ROLES[role]
    return lambda x: np.asarray(encoder.run({name: x})[0])


def ort_row(path: Path, name: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX file in ONNX Runtime with the bundle backend's session settings."""
    import onnxruntime

    from edgeclip.runtimes.backends.ort import session_options

    session = onnxruntime.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {name: x})[0]


def ov_row(core, model, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO model compiled with OpenVINO's defaults (latency hint, threads): what a user gets by hand."""
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda x: np.array(next(iter(request.infer({0: x}).values())))


def one_by_one(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Embeddings of each row of `x` at batch 1 (how every row is timed)."""
    return np.concatenate([run(x[i : i + 1]) for i in range(len(x))])


def reuse_mc2s0(work: Path, threads: int) -> dict | None:
    """What build_mc2s0 made in `work` before (with --keep), or None to build it."""
    from skimage import data

    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.preprocess import preprocess

    if not (work / "mc2s0.edgeclip" / "manifest.json").exists() or not (work / "mc2s0.safetensors").exists():
        return None
    bundle = load_bundle(work / "mc2s0.edgeclip", threads=threads)
    pixels = preprocess([data.astronaut()], bundle.manifest.preprocess)
    tokens = bundle.tokenizer.encode(["a photo of an astronaut floating above the earth"])
    return {"bundle": bundle, "path": bundle.path, "pixels": pixels, "tokens": tokens, "root": work}


def speed(args: argparse.Namespace, work: Path) -> dict:
    """The speed table of both encoders (see the module docstring)."""
    import openvino as ov

    from benchmarks.mc2s0 import ARCH, build_mc2s0, nncf_int8
    from benchmarks.timing import time_interleaved
    from edgeclip.calibration import build_calibration_set
    from edgeclip.data.shapes import ShapesDataset, write_image_folder
    from edgeclip.export.targets.onnx import parse_options
    from edgeclip.metrics.parity import cosine_stats
    from edgeclip.precision.gate import gate_inputs
    from edgeclip.precision.lower import lower_precision
    from edgeclip.runtimes import load_bundle

    print(f"building random-weight {ARCH}: fp32 bundle, ONNX int8-edgeclip, openvino bundles in {work}", flush=True)
    base = reuse_mc2s0(work, args.threads) or build_mc2s0(work, args.threads)
    bundle = base["bundle"]
    m = bundle.manifest
    fp32 = (bundle.path / m.encoders["image"].file, bundle.path / m.encoders["text"].file)
    folder = work / "calib"
    if not folder.exists():
        write_image_folder(ShapesDataset("train", size=256, seed=3), folder, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calib, _ = build_calibration_set(folder, m.preprocess, count=80)
    int8 = (work / "int8-image.onnx", work / "int8-text.onnx")
    if not all(p.exists() for p in int8):
        request = parse_options("int8", {"calibration": [folder]})
        lower_precision(fp32, int8, request, calib, m.preprocess, bundle.tokenizer)
    # The bf16 row is the fp32 IR run with the bf16 hint: byte for byte what an openvino:bf16 bundle runs.
    ov_bundles = export_openvino(ARCH, str(work / "mc2s0.safetensors"), work, folder, ("fp32", "int8"))
    inputs = gate_inputs(calib, m.preprocess, bundle.tokenizer)
    held = {"image": inputs.pixels[:16], "text": inputs.texts[:16]}
    one = {"image": base["pixels"], "text": base["tokens"]}
    core = ov.Core()
    picks = {}
    report: dict = {"architecture": ARCH, "threads": args.threads, "encoders": {}}
    for role, name in ROLES.items():
        i = 0 if role == "image" else 1
        rows: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

        rows["onnx-fp32"] = ort_row(fp32[i], name, args.threads)
        rows["onnx-int8"] = ort_row(int8[i], name, args.threads)
        rows["ov-f32"] = bundle_row(load_bundle(ov_bundles["fp32"], threads=args.threads), role)
        rows["ov-bf16"] = bundle_row(load_bundle(ov_bundles["fp32"], threads=args.threads, precision_hint="bf16"), role)
        rows["ov-int8"] = bundle_row(load_bundle(ov_bundles["int8"], threads=args.threads), role)
        rows["peer-ov-default"] = ov_row(core, core.read_model(str(fp32[i])), args.threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nncf_model = nncf_int8(core.read_model(str(fp32[i])), inputs.feeds_for(role)[:64], role)
        rows["peer-nncf-int8"] = ov_row(core, nncf_model, args.threads)
        for label, hint in (("auto", None), ("auto-f32", "f32")):
            auto = load_bundle(bundle.path, threads=args.threads, backend="auto", precision_hint=hint)
            picks[label] = auto.runtime_summary()
            rows[label] = bundle_row(auto, role)
        reference = one_by_one(rows["onnx-fp32"], held[role])
        cos = {r: cosine_stats(reference, one_by_one(run, held[role])) for r, run in rows.items()}
        print(f"\n{role} encoder, batch 1, {args.threads} threads, load {load_average()}: interleaved", flush=True)
        fns = {r: partial(run, one[role]) for r, run in rows.items()}
        ms = time_interleaved(fns, args.rounds, max_other=args.max_other)
        fastest = min(ms.values())
        print(f"  {'row':16s} {'median ms':>9s}  {'vs onnx fp32':>12s}  {'cos mean':>9s}  {'cos min':>8s}")
        for r, value in ms.items():
            print(f"  {r:16s} {value:9.2f}  {ms['onnx-fp32'] / value:11.2f}x  {cos[r].mean:9.5f}  {cos[r].min:8.5f}")
        print(f"  auto within {ms['auto'] / fastest - 1:+.1%} of the fastest row ({min(ms, key=ms.__getitem__)})")
        report["encoders"][role] = {
            "median_ms": ms,
            "ratio_vs_onnx_fp32": {r: ms["onnx-fp32"] / v for r, v in ms.items()},
            "cosine_vs_onnx_fp32": {r: c.to_dict() for r, c in cos.items()},
        }
    for label, summary in picks.items():
        print(f"\n{label} picked: {summary['backend']} {summary['runs'] or ''}\n  why: {summary['why']}")
    report["auto"] = picks
    return report


def accuracy(args: argparse.Namespace, work: Path) -> dict:
    """Zero-shot top-1 on the shapes eval split of the shapes-trained CLIP, for every precision and engine."""
    from benchmarks.quantization_accuracy import ARCH, register_architecture
    from edgeclip.data.shapes import CLASS_PROMPT, SHAPES, ShapesDataset, write_image_folder
    from edgeclip.distill import DistillConfig, train
    from edgeclip.export import export_bundle
    from edgeclip.runtimes import load_bundle

    register_architecture()
    model_dir = work / "shapes-model"
    weights = model_dir / "model.safetensors"
    if not weights.exists():
        start = time.perf_counter()
        trained = train(DistillConfig(
            model=ARCH, data="shapes:train:4000", output=str(model_dir), loss="clip", steps=args.steps,
            batch_size=64, lr=2e-3, warmup=max(1, args.steps // 10), eval="shapes:eval:400", log_every=100,
        ))  # fmt: skip
        weights = Path(trained.model_path)
        print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f}s: torch top-1 {trained.final_top1:.3f}")
    calib = work / "shapes-calib"
    if not calib.exists():
        write_image_folder(ShapesDataset("train", size=64, seed=7), calib, 320)
    paths = {"onnx-fp32": work / "shapes-onnx-fp32.edgeclip", "onnx-int8": work / "shapes-onnx-int8.edgeclip"}
    export_bundle(ARCH, str(weights), paths["onnx-fp32"], force=True)
    export_bundle(ARCH, str(weights), paths["onnx-int8"], precision="int8", target_options={"calibration": [calib]},
                  force=True)  # fmt: skip
    for precision, path in export_openvino(ARCH, str(weights), work / "shapes", calib).items():
        paths[f"ov-{'f32' if precision == 'fp32' else precision}"] = path
    eval_set = ShapesDataset("eval", size=64, length=args.eval, seed=0)
    images = [eval_set[i].image for i in range(len(eval_set))]
    labels = np.array([eval_set[i].label for i in range(len(eval_set))])
    colours = np.array([eval_set[i].color_label for i in range(len(eval_set))])
    shape_prompts = [CLASS_PROMPT.format(s) for s in SHAPES]
    colour_prompts = [f"a photo of a {c} shape" for c in eval_set.colors]
    rows = {}
    for name, path in {**paths, "auto": paths["onnx-fp32"]}.items():
        b = load_bundle(path, backend="auto" if name == "auto" else None)
        img = b.encode_image(images, batch_size=64)
        shape = float(((img @ b.encode_text(shape_prompts).T).argmax(-1) == labels).mean())
        colour = float(((img @ b.encode_text(colour_prompts).T).argmax(-1) == colours).mean())
        rows[name] = {"shape_top1": shape, "colour_top1": colour, "runtime": b.runtime_summary()["runs"]}
    print(f"\nshapes-trained {ARCH}, eval split ({len(images)} images): zero-shot top-1")
    print(f"  {'row':12s} {'shape':>7s} {'colour':>7s}  {'shape vs fp32':>13s}")
    for name, r in rows.items():
        drop = (r["shape_top1"] - rows["onnx-fp32"]["shape_top1"]) * 100
        print(f"  {name:12s} {r['shape_top1'] * 100:6.2f}% {r['colour_top1'] * 100:6.2f}%  {drop:+12.2f} pt")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="quiet rounds per encoder (default 10)")
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.05,
        help="a round counts when other processes used under this much of a CPU (raise it on a loaded machine)",
    )
    parser.add_argument("--accuracy", action="store_true", help="also the shapes-trained zero-shot top-1 table")
    parser.add_argument("--only-accuracy", action="store_true")
    parser.add_argument("--steps", type=int, default=600, help="shapes training steps (--accuracy)")
    parser.add_argument("--eval", type=int, default=800, help="shapes eval images (--accuracy)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="build the files here instead of a temporary folder")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import os

    work = args.keep or Path(tempfile.mkdtemp(prefix="edgeclip-x86-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # this run's auto probe, not the user's cached pick
    print(f"CPU flags: {cpu_flags()}\nload average: {load_average()}", flush=True)
    report: dict = {"cpu_flags": cpu_flags()}
    if not args.only_accuracy:
        report["speed"] = speed(args, work)
    if args.accuracy or args.only_accuracy:
        report["accuracy"] = accuracy(args, work)
    print(f"\nload average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
