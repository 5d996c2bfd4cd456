"""Where ExecuTorch XNNPACK fp32 loses to ONNX Runtime fp32 on a timm FastViT image tower (MobileCLIP2-S0's):
each block (stem, the four stages, final conv + head) exported alone to ONNX and to a `.pte` exactly as the
executorch target exports an encoder (reparameterized, module rewrites, XNNPACK), then timed in ONE interleaved
run at batch 1. The ratio per block says which ops XNNPACK runs slower on this CPU.

    PYTHONPATH=$PWD python -m benchmarks.mobile_blocks --arch MobileCLIP2-S0 --threads 2

Results: docs/mobile.md#why-the-fp32-image-encoder-is-slower.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="MobileCLIP2-S0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    import onnxruntime
    import torch
    from torch import nn

    from benchmarks.mobile_runtimes import cpu_facts
    from benchmarks.timing import time_interleaved
    from edgeclip.export import _reparameterized_copy
    from edgeclip.export.onnx_graph import export_onnx_graph
    from edgeclip.export.targets.executorch import _lower
    from edgeclip.models.loading import load_model
    from edgeclip.precision.module_rewrites import XNNPACK_REWRITES
    from edgeclip.runtimes.backends import RuntimeOptions
    from edgeclip.runtimes.backends.executorch import ExecuTorchBackend
    from edgeclip.runtimes.backends.ort import session_options
    from edgeclip.runtimes.manifest import EncoderSpec, TensorSpec

    print(f"{args.arch} image tower blocks, random weights, batch 1, {args.threads} threads; {cpu_facts()}", flush=True)
    trunk = _reparameterized_copy(load_model(args.arch, random_init=True).model).visual.trunk.eval()

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.final_conv, self.head = trunk.final_conv, trunk.head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.final_conv(x))

    blocks = collections.OrderedDict(
        [("stem", trunk.stem), *((f"stage{i}", s) for i, s in enumerate(trunk.stages)), ("final_conv+head", Head())]
    )
    x = torch.randn(1, 3, 256, 256)
    inputs = {}
    with torch.no_grad():
        for name, block in blocks.items():
            inputs[name] = x
            x = block(x)
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, block in blocks.items():
            example = inputs[name]
            onnx_path = Path(tmp) / f"{name}.onnx"
            export_onnx_graph(block, example, onnx_path, input_name="x", output_name="y")
            session = onnxruntime.InferenceSession(
                str(onnx_path), session_options(args.threads), providers=["CPUExecutionProvider"]
            )
            feed = {"x": example.numpy()}
            runners[f"{name} ort"] = lambda s=session, f=feed: s.run(None, f)
            lowered = _lower("image", block, example, (1,), XNNPACK_REWRITES, None)
            pte = Path(tmp) / f"{name}.pte"
            pte.write_bytes(lowered.buffer)
            spec = TensorSpec("x", tuple(example.shape), "float32")
            options = RuntimeOptions(threads=args.threads)
            backend = ExecuTorchBackend(pte, EncoderSpec(pte.name, "", (spec,), (spec,)), options)
            runners[f"{name} et"] = lambda b=backend, f=feed: b.run(f)
            fallback = ", ".join(f"{k}x{v}" for k, v in lowered.placement["fallback"].items())
            print(f"  {name}: input {tuple(example.shape)}, {lowered.placement['pieces']} pieces, "
                  f"outside: {fallback or '-'}", flush=True)  # fmt: skip
        print(f"timing {len(runners)} interleaved (load {os.getloadavg()})", flush=True)
        ms = time_interleaved(runners, rounds=args.rounds, inner=3, max_other=1e9)
    print(f"load after {os.getloadavg()}")
    print("| block | ORT fp32 ms | ExecuTorch fp32 ms | ExecuTorch / ORT |")
    print("| --- | --- | --- | --- |")
    total = np.zeros(2)
    for name in blocks:
        ort, et = ms[f"{name} ort"], ms[f"{name} et"]
        total += (ort, et)
        print(f"| {name} | {ort:.2f} | {et:.2f} | {et / ort:.2f} |")
    print(f"| sum | {total[0]:.2f} | {total[1]:.2f} | {total[1] / total[0]:.2f} |")


if __name__ == "__main__":
    main()
