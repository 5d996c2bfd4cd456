"""Export a torch module to a fast, portable ONNX graph, and the ONNX Runtime session settings to run it with.

Measured on MobileCLIP2-S0 (2 AVX-512 cores, batch 1): see benchmarks/explore_onnx_speed.py for the numbers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

# Protobuf cannot hold 2 GiB; leave headroom for the graph and constants folded by the optimizer.
_EXTERNAL_DATA_BYTES = 2**31 - 2**28


def export_onnx_graph(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    output_name: str,
    opset: int = 18,
) -> None:
    """Export `module(example)` to a checked ONNX file at `path` with a dynamic "batch" axis."""
    path = Path(path)
    # Trace at batch >= 2: from a batch-1 example torch.export specializes size-1 dims, and the text tower's
    # nn.MultiheadAttention then came out as a graph that fails at any other batch size.
    if example.shape[0] < 2:
        example = torch.cat([example, example])
    large = _param_bytes(module) > _EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw, basic = Path(tmp) / "raw.onnx", Path(tmp) / "basic.onnx"
        # dynamo exporter: as fast as the TorchScript one once ORT has optimized it (text tower 558 vs 1024
        # nodes after BASIC), and the TorchScript exporter is deprecated. Opset 18 rather than 20+: opset 20's
        # native Gelu and opset 23's Attention measured no faster in ORT, and 18 loads in older runtimes.
        torch.onnx.export(
            module.eval(),
            (example,),
            str(raw),
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamo=True,
            verbose=False,  # the dynamo exporter otherwise prints progress to stdout, which breaks --json
            dynamic_shapes=({0: "batch"},),
            external_data=large,
        )
        _ort_basic_optimize(raw, basic)
        model = onnx.load(str(basic))
    # ORT's saver declares every domain it knows; keep the ones the graph uses (all standard at BASIC level).
    used = {node.domain for node in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    _gelu_in_fusable_order(model)
    _expand_channel_multiplier_convs(model)
    (path.parent / (path.name + ".data")).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(model, str(path), save_as_external_data=large, location=path.name + ".data")
    onnx.checker.check_model(str(path), full_check=True)


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _ort_basic_optimize(src: Path, dst: Path) -> None:
    """Save ORT's BASIC-level graph (constant folding, Conv+BN/Mul/Add folding): standard ops, any EP."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _expand_channel_multiplier_convs(model: onnx.ModelProto) -> None:
    """Rewrite grouped convs with one input and M > 1 outputs per group as channel-repeat + depthwise conv.

    ORT has no NCHWc kernel for a channel multiplier, so FastViT's 7x7 stride-2 downsampling convs fell back to
    im2col + GEMM per group (3.6 of 105 profiled ms); repeating each input channel M times is exact.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in [*inferred.graph.value_info, *inferred.graph.input]
    }
    weights = {t.name: t.dims for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = weights.get(node.input[1]) if node.op_type == "Conv" else None
        spatial = shapes.get(node.input[0], [])[2:]
        if dims and group > 1 and dims[1] == 1 and dims[0] != group and spatial and all(spatial):
            mult, name = dims[0] // group, node.output[0]
            consts = {
                f"{name}__axis": [2],
                f"{name}__repeat": [1, 1, mult, 1, 1],
                f"{name}__shape": [0, group * mult, *spatial],
            }
            model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
            nodes += [
                helper.make_node("Unsqueeze", [node.input[0], f"{name}__axis"], [f"{name}__u"]),
                helper.make_node("Expand", [f"{name}__u", f"{name}__repeat"], [f"{name}__e"]),
                helper.make_node("Reshape", [f"{name}__e", f"{name}__shape"], [f"{name}__in"]),
            ]
            node.input[0] = f"{name}__in"
            next(a for a in node.attribute if a.name == "group").i = group * mult
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _gelu_in_fusable_order(model: onnx.ModelProto) -> None:
    """Reorder the exporter's exact GELU, `x * (0.5 * (1 + erf(x / sqrt 2)))`, to `(x * (1 + erf(..))) * 0.5`.

    Bit-identical (scaling by 0.5 is exact), but only the second order matches ORT's GeluFusion: unfused, the
    Div/Erf/Add/Mul chain also breaks ORT's NCHWc conv layout into ~40 reorders (MobileCLIP2-S0: 36 -> 29 ms).
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    half = {t.name for t in model.graph.initializer if np.prod(t.dims) == 1 and numpy_helper.to_array(t).item() == 0.5}
    for outer in model.graph.node:
        for x, t in (outer.input, outer.input[::-1]) if outer.op_type == "Mul" else ():
            inner = producer.get(t)
            if not inner or inner.op_type != "Mul" or len(consumers[t]) != 1 or len(set(inner.input) - half) != 1:
                continue
            (c05,), (a,) = set(inner.input) & half, set(inner.input) - half
            add = producer.get(a)
            erf = next((producer[i] for i in add.input if i in producer), None) if add else None
            div = producer.get(erf.input[0]) if add and erf and erf.op_type == "Erf" and add.op_type == "Add" else None
            if div and div.input[0] == x:  # x * (0.5 * (1 + erf(x ...)))
                inner.input[:] = [x, a]
                outer.input[:] = [inner.output[0], c05]
                break
