"""LiteRT rows against ONNX Runtime fp32, one interleaved run: size, parity on real photos, XNNPACK coverage, latency.

Random-weight MobileCLIP2-S0 (or --arch), batch 1, 2 threads. Each row is a real `edgeclip export --target litert`
bundle (its parity is the export's own, on scikit-image photos and tricky strings, run from the written file);
latency is the runtime backend each bundle is served with, all candidates interleaved in one process.

    PYTHONPATH=$PWD python benchmarks/litert_speed.py --out /tmp/litert-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

# bench row name (the spelling) -> (precision, target options): the typed-options grammar of `--target litert`
ROWS = {
    "litert:fp32": ("fp32", {}),
    "litert:dynamic-int8": ("int8", {"dynamic": True}),  # = litert:int8+dynamic
    "litert:int8": ("int8", {"calibration": "CALIB"}),  # = litert:int8+calibration=calib.npz
}


def cpu_flags() -> str:
    pattern = r"avx2|avx512[a-z_0-9]*|amx[a-z_0-9]*|fma|f16c"
    cmd = f"grep -o -w -E '{pattern}' /proc/cpuinfo | sort -u | tr '\\n' ' '"
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True).stdout.strip()


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="MobileCLIP2-S0")
    parser.add_argument("--out", type=Path, default=None, help="folder for the bundles (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to build")
    args = parser.parse_args()

    import open_clip
    import torch
    from safetensors.torch import save_file
    from skimage import data

    from benchmarks.timing import time_interleaved
    from edgeclip.calibration import build_calibration_set
    from edgeclip.data.shapes import ShapesDataset, write_image_folder
    from edgeclip.export import export_bundle
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.placement import placement_of
    from edgeclip.runtimes.preprocess import preprocess

    root = args.out or Path(tempfile.mkdtemp(prefix="litert-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = open_clip.create_model(args.arch, pretrained=None).eval()
    ckpt = root / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))

    def exported(name: str, target: str, precision: str, options: dict) -> Path:
        out = root / (name.replace(":", "-") + ".edgeclip")
        if not (out / "manifest.json").exists():
            start = time.perf_counter()
            export_bundle(args.arch, str(ckpt), out, target=target, precision=precision, target_options=options)
            print(f"exported {name} in {time.perf_counter() - start:.0f} s", flush=True)
        return out

    bundles = {"onnx:fp32": exported("onnx:fp32", "onnx", "fp32", {})}
    spec = load_bundle(bundles["onnx:fp32"]).manifest.preprocess
    calib_path = root / "calib.npz"
    if not calib_path.exists():
        folder = write_image_folder(ShapesDataset("train", size=96, seed=9), root / "calib-images", 64)
        build_calibration_set(folder, spec, count=64, seed=0)[0].save(calib_path)
    for name in args.rows.split(","):
        precision, options = ROWS[name]
        options = {k: str(calib_path) if v == "CALIB" else v for k, v in options.items()}
        bundles[name] = exported(name, "litert", precision, options)

    pixels = preprocess([data.astronaut()], spec)
    loaded = {name: load_bundle(path, threads=args.threads) for name, path in bundles.items()}
    tokens = loaded["onnx:fp32"].tokenizer.encode(["a photo of an astronaut floating above the earth"])
    flags, load = cpu_flags(), os.getloadavg()
    print(f"\n{args.arch}, random weights, batch 1, {args.threads} threads; CPU flags: {flags}; load {load}")
    results: dict[str, dict] = {}
    for role, batch in (("image", pixels), ("text", tokens)):
        runners = {}
        for name, bundle in loaded.items():
            encoder = bundle.encoder(role)
            input_name = bundle.manifest.encoders[role].inputs[0].name
            runners[name] = lambda e=encoder, n=input_name, b=batch: e.run({n: b})
        ms = time_interleaved(runners, args.rounds, max_other=float("inf"))
        print(f"\n{role} encoder (load during the run: {os.getloadavg()})")
        print("| row | MB | cos min / mean vs PyTorch | XNNPACK ops (fraction) | pieces | left out | ms | x ORT fp32 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, bundle in loaded.items():
            spec_ = bundle.manifest.encoders[role]
            placement = placement_of(bundle.encoder(role))
            parity = spec_.parity
            coverage = (
                f"{placement.delegated_ops}/{placement.total_ops} ({placement.fraction:.3f})" if placement else "-"
            )
            left = ", ".join(f"{k} {v}" for k, v in placement.fallback.items()) if placement else "-"
            speedup = ms["onnx:fp32"] / ms[name]
            row = {
                "mb": round(size_mb(bundle.path / spec_.file), 1),
                "cos_min": parity.min_cosine if parity else None,
                "cos_mean": parity.mean_cosine if parity else None,
                "placement": placement.to_dict() if placement else None,
                "ms": round(ms[name], 2),
                "speedup_vs_ort_fp32": round(speedup, 2),
            }
            results.setdefault(name, {})[role] = row
            cos = f"{parity.min_cosine:.6f} / {parity.mean_cosine:.6f}" if parity else "-"
            pieces = placement.pieces if placement else "-"
            print(f"| {name} | {row['mb']} | {cos} | {coverage} | {pieces} | {left or '-'} | {ms[name]:.1f} | "
                  f"{speedup:.2f}x |")  # fmt: skip
    for name, bundle in loaded.items():
        gate = (bundle.manifest.calibration or {}).get("gate")
        if gate:
            print(f"{name} accuracy gate vs litert fp32: image mean {gate['image']['mean_cosine']:.5f}, text mean "
                  f"{gate['text']['mean_cosine']:.5f}, top-1 agreement {gate['top1_agreement']:.3f}")  # fmt: skip
    (root / "results.json").write_text(json.dumps({"cpu_flags": flags, "load": load, "rows": results}, indent=1))
    print(f"\nresults: {root / 'results.json'}")


if __name__ == "__main__":
    main()
