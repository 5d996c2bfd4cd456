"""Lower precision for exported encoders: fp16, int8 recipes, graph rewrites and the accuracy gate.

- `fp16`: fp16 conversion with overflow-prone ops kept float32.
- `recipes`: static int8 recipes by name (`RECIPES`), and which recipe each (target, precision) applies to each
  encoder (`TARGET_RECIPES`, `target_recipe`).
- `static`: the one static int8 runner, `quantize_static_int8`, and its calibration (minmax, histograms).
- `dynamic`: dynamic int8 (no calibration set).
- `qdq`: TensorRT's explicit-quantization Q/DQ graphs and their check.
- `rewrites`: `GraphIndex` and the GELU fusions that keep ONNX Runtime's int8 graphs fast.
- `gate`: runs the accuracy gate (held-out inputs, the encoders against fp32); its figures are
  `edgeclip.metrics.parity`'s.
- `lower`: `lower_precision`, the ONNX target's fp16/int8 step.

Why each recipe is what it is, with the commands that measured it: docs/quantization.md. Nothing here imports
torch; onnx and onnxruntime are imported where they are used.
"""
