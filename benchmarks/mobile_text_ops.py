"""Op by op: where a text encoder's time goes in ONNX Runtime fp32 and in ExecuTorch's XNNPACK fp32 and int8
`.pte` files, to see how far int8 GEMMs can carry the whole encoder (the float ops they leave set the ceiling).

Takes the bundles `benchmarks/mobile_runtimes.py` wrote into its `--out` folder (onnx-fp32, executorch-fp32,
executorch-int8):

    PYTHONPATH=$PWD python -m benchmarks.mobile_text_ops /tmp/m7/vit --threads 2

Results: docs/mobile.md ("The text encoder's ceiling").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _print_largest(groups: dict[str, list[float]], top: int) -> None:
    """The `top` groups of ops by summed time: ms, how many ops, name."""
    for name, us in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"  {sum(us) / 1e3:7.2f} ms  x{len(us):<4} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out folder of benchmarks.mobile_runtimes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="profiled runs per file (median per op)")
    parser.add_argument("--top", type=int, default=10, help="op kinds to list per file")
    args = parser.parse_args()

    from benchmarks.mobile_ops import executorch_profile, ort_profile
    from benchmarks.mobile_runtimes import cpu_facts
    from edgeclip.runtimes import load_bundle

    print(f"text encoders in {args.out}, batch 1, {args.threads} threads; {cpu_facts()}")
    onnx = load_bundle(args.out / "onnx-fp32.edgeclip")
    ids = onnx.tokenizer.encode(["a photo of an astronaut floating above the earth"]).astype(np.int64)
    classes, whole = ort_profile(
        onnx.path / onnx.manifest.encoders["text"].file, {"token_ids": ids}, args.threads, args.runs
    )
    print(f"\nONNX Runtime fp32: whole run {whole / 1e3:.2f} ms (profiled)")
    _print_largest(classes, len(classes))
    for label in ("executorch-fp32", "executorch-int8"):
        bundle = args.out / f"{label}.edgeclip"
        if not bundle.exists():
            print(f"\n{label}: no bundle in {args.out}")
            continue
        spec = load_bundle(bundle).manifest.encoders["text"]
        kinds, whole = executorch_profile(bundle / spec.file, ids, args.threads, args.runs, group=str)
        gemm = sum(sum(v) for k, v in kinds.items() if k.startswith("Fully Connected"))
        rest = sum(sum(v) for v in kinds.values()) - gemm
        print(
            f"\n{label}: whole run {whole / 1e3:.2f} ms (profiled); "
            f"linear layers {gemm / 1e3:.2f} ms, the rest {rest / 1e3:.2f} ms"
        )
        _print_largest(kinds, args.top)


if __name__ == "__main__":
    main()
