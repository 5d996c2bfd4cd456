"""Mobile runtimes side by side: each row's bundle exported from the same random-weight model, then file size,
cosine to PyTorch on real photos (from the export's own parity run of the written file), delegate placement, and
latency at batch 1 in ONE interleaved run against ONNX Runtime fp32 (ratios, not absolute ms). By default each
row is timed in its own process, one at a time (benchmarks.timing.time_in_processes): in one process the
runtimes' thread pools disturb each other on 2 cores (`--timing inprocess` for comparison).

    PYTHONPATH=$PWD python -m benchmarks.mobile_runtimes --arch MobileCLIP2-S0 --threads 2 --out /tmp/mobile
    PYTHONPATH=$PWD python -m benchmarks.mobile_runtimes --rows litert:fp32,litert:int8+dynamic --threads 1

Rows live in ROWS (name -> target, precision, options); a new runtime adds its rows there. Bundles already in
--out are reused (delete them to re-export); the table is also written to --out/results.json. Results:
docs/mobile.md (ExecuTorch) and docs/litert.md (LiteRT).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = "onnx:fp32"


@dataclass(frozen=True)
class Row:
    """One benchmark row: what to export (target, precision, target options) and why it is here."""

    target: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    calibrated: bool = False  # gets --calibration (the set built by this script)


ROWS: dict[str, Row] = {
    REFERENCE: Row("onnx", "fp32", note="the reference every ratio is against"),
    "executorch:fp32": Row("executorch", "fp32", note="XNNPACK, LayerNorm/attention rewritten"),
    "executorch:fp32-as-exported": Row(
        "executorch", "fp32", {"no_rewrites": True}, note="XNNPACK, the graph as torch.export gives it"
    ),
    "executorch:int8": Row("executorch", "int8", note="PT2E static int8, rewritten", calibrated=True),
    "litert:fp32": Row("litert", "fp32", note="XNNPACK delegate, NCHW, int32 token ids"),
    "litert:int8+dynamic": Row("litert", "int8", {"dynamic": True}, note="int8 weights, float activations"),
    "litert:int8": Row("litert", "int8", note="static int8 conv/linear, float input and output", calibrated=True),
}


def cpu_facts() -> str:
    """CPU flags that decide kernel choice, and the load average (every figure is printed with them)."""
    flags = subprocess.run(
        "grep -o -w -E 'avx2|avx512[a-z_0-9]*|amx[a-z_0-9]*|fma|f16c' /proc/cpuinfo | sort -u | tr '\\n' ' '",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    machine = platform.processor() or platform.machine()
    return f"{machine}, {os.cpu_count()} CPUs, flags: {flags}; load {os.getloadavg()}"


def calibration_folder(root: Path, count: int) -> Path:
    """Shapes-dataset images plus scikit-image photos the parity run does not use, as a calibration folder."""
    from PIL import Image
    from skimage import data

    from edgeclip.data.shapes import ShapesDataset

    folder = root / "calibration"
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    for name in ("camera", "cat", "horse", "retina", "page", "text", "moon", "brick"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{name}.png")
    shapes = ShapesDataset(split="train", size=256, seed=7)
    for i in range(count):
        Image.fromarray(shapes[i].image).save(folder / f"shape{i:03d}.png")
    return folder


def export_row(name: str, row: Row, arch: str, root: Path, calibration: Path) -> Path | None:
    """The row's bundle: reused when already in `root`, else exported (random weights, seed 0) and timed; None
    (and why, printed) when the export refuses it, e.g. an int8 file under its parity floor."""
    from edgeclip.errors import EdgeclipError
    from edgeclip.export import export_bundle

    path = root / (name.replace(":", "-") + ".edgeclip")
    if (path / "manifest.json").exists():
        return path
    options = {**row.options, **({"calibration": str(calibration)} if row.calibrated else {})}
    start = time.perf_counter()
    try:
        export_bundle(arch, output=path, target=row.target, precision=row.precision, random_init=True,
                      target_options=options, on_step=lambda m: print(f"  {name}: {m}", flush=True))  # fmt: skip
    except EdgeclipError as e:
        print(f"  {name}: REFUSED after {time.perf_counter() - start:.0f} s: {e}", flush=True)
        return None
    print(f"  {name}: exported in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def size_mb(bundle: Path, file: str) -> float:
    path = bundle / file
    total = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total / 1e6


def bundle_runner(path: str, role: str, threads: int, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    """One encoder of a bundle as a no-argument call (built inside a timing worker process)."""
    from edgeclip.runtimes import load_bundle

    encoder = load_bundle(path, threads=threads).encoder(role)
    return lambda: encoder.run(feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="MobileCLIP2-S0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgeclip-mobile"))
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median per candidate)")
    parser.add_argument("--calibration-images", type=int, default=96)
    parser.add_argument("--export-only", action="store_true")
    parser.add_argument(
        "--timing",
        choices=("process", "inprocess"),
        default="process",
        help="process: each row in its own process, one at a time (default); inprocess: all in this one, interleaved",
    )
    args = parser.parse_args()

    from benchmarks.timing import time_in_processes, time_interleaved
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.placement import placement_of
    from edgeclip.runtimes.preprocess import preprocess

    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}: expected some of {', '.join(ROWS)}")
    if REFERENCE not in names and not args.export_only:
        names.insert(0, REFERENCE)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{args.arch}, random weights (seed 0), batch 1, {args.threads} threads; {cpu_facts()}", flush=True)
    calibration = calibration_folder(args.out, args.calibration_images)
    exported = {name: export_row(name, ROWS[name], args.arch, args.out, calibration) for name in names}
    refused = [name for name, path in exported.items() if path is None]
    paths = {name: path for name, path in exported.items() if path is not None}
    if refused:
        print(f"refused by their export (not timed): {', '.join(refused)}", flush=True)
    if args.export_only or REFERENCE not in paths:
        return
    bundles = {name: load_bundle(path, threads=args.threads) for name, path in paths.items()}
    from skimage import data

    first = bundles[REFERENCE]
    pixels = preprocess([data.astronaut()], first.manifest.preprocess)
    tokens = first.tokenizer.encode(["a photo of an astronaut floating above the earth"])
    table = []
    for role, batch in (("image", pixels), ("text", tokens)):
        runners, factories = {}, {}
        for name, bundle in bundles.items():
            encoder = bundle.encoder(role)
            spec = bundle.manifest.encoders[role]
            feed = {spec.inputs[0].name: batch.astype(np.dtype(spec.inputs[0].dtype))}
            runners[name] = lambda encoder=encoder, feed=feed: encoder.run(feed)
            factories[name] = functools.partial(bundle_runner, str(paths[name]), role, args.threads, feed)
        print(
            f"timing the {role} encoders ({len(runners)} interleaved, {args.timing}; load {os.getloadavg()})",
            flush=True,
        )
        if args.timing == "process":
            ms = time_in_processes(factories, rounds=args.rounds)
        else:  # every round is kept (no quiet-round filter); ratios within one run still hold
            ms = time_interleaved(runners, rounds=args.rounds, inner=3, max_other=1e9)
        for name, bundle in bundles.items():
            spec = bundle.manifest.encoders[role]
            placement = placement_of(bundle.encoder(role))
            gate = (bundle.manifest.calibration or {}).get("gate", {}).get(role, {})
            table.append(
                {
                    "row": name,
                    "encoder": role,
                    "MB": size_mb(paths[name], spec.file),
                    "min_cos": spec.parity.min_cosine if spec.parity else float("nan"),
                    "mean_cos": spec.parity.mean_cosine if spec.parity else float("nan"),
                    "gate_mean": gate.get("mean_cosine", float("nan")),
                    "pieces": placement.pieces if placement else None,
                    "delegated": placement.fraction if placement else None,
                    "fallback": ", ".join(f"{k}x{v}" for k, v in (placement.fallback if placement else {}).items()),
                    "ms": ms[name],
                    "vs_onnx": ms[REFERENCE] / ms[name],
                }
            )
    print(f"\nload after timing {os.getloadavg()}")
    print("| row | encoder | MB | min cos vs PyTorch | mean cos | gate mean | pieces | delegated | ms | x ONNX fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        delegated = "-" if r["delegated"] is None else f"{r['delegated']:.3f}"
        gate = "-" if math.isnan(r["gate_mean"]) else f"{r['gate_mean']:.5f}"  # NaN: no int8 gate (fp32)
        print(
            f"| {r['row']} | {r['encoder']} | {r['MB']:.1f} | {r['min_cos']:.6f} | {r['mean_cos']:.6f} | "
            f"{gate} | {r['pieces'] if r['pieces'] is not None else '-'} | {delegated} | "
            f"{r['ms']:.1f} | {r['vs_onnx']:.2f} |"
        )
    print("\nops left outside the delegate (forward method):")
    for r in table:
        if r["fallback"]:
            print(f"  {r['row']} {r['encoder']}: {r['fallback']}")
    (args.out / "results.json").write_text(
        json.dumps({"arch": args.arch, "threads": args.threads, "cpu": cpu_facts(), "rows": table}, indent=1) + "\n"
    )
    print(f"\nresults: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
