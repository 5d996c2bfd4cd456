"""ONNX graph rewrites for lower-precision encoders: a graph index, and GELU fusions ONNX Runtime runs faster.

Each rewrite edits an in-memory `onnx.ModelProto` and returns how many places it changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class GraphIndex:
    """A graph's initializers, which node produces each tensor and which nodes read it (node filters, rewrites)."""

    initializers: dict[str, onnx.TensorProto]
    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphIndex:
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for name in n.input:
                consumers.setdefault(name, []).append(n)
        return cls({t.name: t for t in model.graph.initializer},
                   {out: n for n in model.graph.node for out in n.output}, consumers)  # fmt: skip


def _scalar(initializers: dict[str, onnx.TensorProto], name: str) -> float | None:
    from onnx import numpy_helper

    tensor = initializers.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return float(value.ravel()[0]) if value.size == 1 else None


GELU_OPS = {"exact": "Gelu", "tanh": "FastGelu"}  # com.microsoft ops: erf GELU, and its tanh approximation
GELU_FORMS = (*GELU_OPS, "quick")  # quick: x * sigmoid(1.702 x) in uint8 between Q/DQ, tanh GELU elsewhere
QUICK_GELU_ALPHA = 1.702


def fuse_gelu(model: onnx.ModelProto, form: str = "exact") -> int:
    """Replace exact-erf GELU chains, `(x * (1 + erf(x / sqrt2))) * 0.5`, by ONNX Runtime's Gelu op; the count.

    ORT fuses these itself in a float graph, but not once x comes out of a DequantizeLinear, and the unfused
    Div/Erf/Add/Mul/Mul chain also breaks its NCHWc layout. `form="tanh"` writes FastGelu, the tanh approximation
    (within 5e-4 of erf GELU, ~1.7x faster in ORT); `form="quick"` then moves each FastGelu that sits between a
    DequantizeLinear and a QuantizeLinear into uint8 (`quantized_quick_gelu`, CPU kernels). The result uses the
    com.microsoft domain, which ONNX Runtime runs on every execution provider edgeclip uses.
    """
    from onnx import helper

    if form not in GELU_FORMS:
        raise ValueError(f"GELU form {form!r} is unknown: expected one of {', '.join(GELU_FORMS)}")
    if form == "quick":
        fused = fuse_gelu(model, "tanh")
        quantized_quick_gelu(model)
        return fused
    graph = model.graph
    index = GraphIndex.of(model)
    inits, producer, consumers = index.initializers, index.producer, index.consumers

    def only_consumer(name: str, op_type: str) -> onnx.NodeProto | None:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def close(name: str | None, value: float) -> bool:
        got = _scalar(inits, name) if name else None
        return got is not None and abs(got - value) < 1e-3

    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not close(div.input[1], 2**0.5):
            continue
        x = div.input[0]
        add = only_consumer(erf.output[0], "Add")
        mul = only_consumer(add.output[0], "Mul") if add is not None else None
        half = only_consumer(mul.output[0], "Mul") if mul is not None and x in mul.input else None
        if add is None or mul is None or half is None:
            continue
        if not close(next((i for i in add.input if i != erf.output[0]), None), 1.0):
            continue
        if not close(next((i for i in half.input if i != mul.output[0]), None), 0.5):
            continue
        dropped |= {id(div), id(erf), id(add), id(mul)}
        replaced[id(half)] = helper.make_node(
            GELU_OPS[form], [x], [half.output[0]], name=f"{erf.name}_gelu", domain="com.microsoft"
        )
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def quantized_quick_gelu(model: onnx.ModelProto, alpha: float = QUICK_GELU_ALPHA) -> int:
    """Rewrite DequantizeLinear -> FastGelu -> QuantizeLinear as uint8 x * sigmoid(alpha x); the count.

    ONNX Runtime has no integer GELU. Its QLinearSigmoid is a 256-entry lookup table, and sigmoid(alpha x) needs no
    extra op: it is QLinearSigmoid of the same uint8 tensor read at scale alpha * s. QLinearMul then multiplies x by
    it and requantizes to the QuantizeLinear's scale and zero point, so the conv chain never leaves uint8.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    index = GraphIndex.of(model)
    inits, producer, consumers = index.initializers, index.producer, index.consumers
    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    for gelu in [n for n in graph.node if n.op_type == "FastGelu" and len(n.input) == 1]:
        dq = producer.get(gelu.input[0])
        after = consumers.get(gelu.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(consumers[dq.output[0]]) != 1 or len(after) != 1:
            continue
        q = after[0]
        params = [*dq.input[1:3], *q.input[1:3]]
        if q.op_type != "QuantizeLinear" or len(params) != 4 or any(i not in inits for i in params):
            continue
        scale, zero, _, q_zero = (numpy_helper.to_array(inits[i]) for i in params)
        if scale.size != 1 or zero.dtype != np.uint8 or q_zero.dtype != np.uint8:  # per-tensor uint8, as recipes write
            continue
        k = f"{gelu.name}_quick"
        graph.initializer.extend([
            numpy_helper.from_array(np.asarray(float(scale.reshape(())) * alpha, np.float32), f"{k}_x_scale"),
            numpy_helper.from_array(np.asarray(1 / 255, np.float32), f"{k}_sigmoid_scale"),
            numpy_helper.from_array(np.asarray(0, np.uint8), f"{k}_sigmoid_zero_point"),
        ])  # fmt: skip
        x, x_scale, x_zero = dq.input[0], dq.input[1], dq.input[2]
        sig = [f"{k}_sigmoid", f"{k}_sigmoid_scale", f"{k}_sigmoid_zero_point"]
        replaced[id(q)] = [
            helper.make_node("QLinearSigmoid", [x, f"{k}_x_scale", x_zero, sig[1], sig[2]], [sig[0]],
                             name=f"{k}_sigmoid", domain="com.microsoft"),
            helper.make_node("QLinearMul", [x, x_scale, x_zero, *sig, q.input[1], q.input[2]], [q.output[0]],
                             name=f"{k}_mul", domain="com.microsoft"),
        ]  # fmt: skip
        dropped |= {id(dq), id(gelu)}
    nodes = [m for n in graph.node if id(n) not in dropped for m in replaced.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def fuse_gelu_file(path: Path, form: str = "exact") -> None:
    """`fuse_gelu` on the ONNX file at `path`, rewritten in place only when a chain was fused."""
    import onnx

    model = onnx.load(str(path))
    if fuse_gelu(model, form):
        onnx.save(model, str(path))


def _reach(
    start: list[str],
    index: GraphIndex,
    *,
    forward: bool,
    stop: onnx.NodeProto | None = None,
    limit: int = 400,
    barrier: Callable[[onnx.NodeProto], bool] | None = None,
) -> dict[int, onnx.NodeProto]:
    """Nodes reached from the tensors `start` through consumers (`forward`) or producers, not through `stop`;
    nodes for which `barrier` holds are reached but not gone through."""
    seen: dict[int, onnx.NodeProto] = {}
    todo = list(start)
    while todo and len(seen) < limit:
        name = todo.pop()
        step = index.consumers.get(name, []) if forward else [index.producer[name]] if name in index.producer else []
        for node in step:
            if id(node) in seen or node is stop:
                continue
            seen[id(node)] = node
            if barrier is None or not barrier(node):
                todo.extend(node.output if forward else node.input)
    return seen


def _linear_weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """A MatMul/Gemm's constant 2-D weight as [in, out]; None when it has none or Gemm scales/transposes its input."""
    from onnx import helper, numpy_helper

    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
        return None
    w = numpy_helper.to_array(inits[node.input[1]])
    if w.ndim != 2:
        return None
    return w.T if attrs.get("transB", 0) else w


@dataclass
class _Attention:
    """One matched self-attention: its input, packed projections, heads, and the nodes it replaces."""

    x: str  # [batch, seq, D]
    y: str  # the [batch, seq, D] tensor after the out-projection (and its bias)
    w_in: np.ndarray  # [D, 3D], Q | K | V
    b_in: np.ndarray
    w_out: np.ndarray  # [D, D]
    b_out: np.ndarray | None
    heads: int
    causal: bool  # a constant upper-triangular -inf mask added to the scores: Attention's unidirectional
    replaced: list[onnx.NodeProto]


def _is_causal(mask: np.ndarray) -> bool:
    """Whether a [..., S, S] additive mask is 0 on and below the diagonal and <= -1e4 (or -inf) above it."""
    square = mask.reshape(-1, *mask.shape[-2:])
    upper = np.triu(np.ones(mask.shape[-2:], bool), 1)
    return bool(np.all(square[:, ~upper] == 0) and np.all(square[:, upper] <= -1e4))


def _constant_of_size(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], skip: str, size: int) -> str | None:
    """The name of `node`'s constant input of `size` elements other than `skip`, if any."""
    other = next((i for i in node.input if i != skip), "")
    return other if other in inits and int(np.prod(inits[other].dims)) == size else None


def _match_attention(softmax: onnx.NodeProto, model: onnx.ModelProto, index: GraphIndex, heads_of: dict[str, int]):
    """The self-attention around `softmax`, or None when the graph does not have that shape there."""
    from onnx import numpy_helper

    inits, nodes = index.initializers, list(model.graph.node)

    def linear(n: onnx.NodeProto) -> bool:
        return _linear_weight(n, inits) is not None

    up = _reach([softmax.input[0]], index, forward=False, limit=200, barrier=linear).values()
    ins = [n for n in up if (w := _linear_weight(n, inits)) is not None and w.shape[1] == 3 * w.shape[0]]
    if len(ins) != 1:
        return None
    in_mm = ins[0]
    w_in = _linear_weight(in_mm, inits)
    assert w_in is not None
    d = w_in.shape[0]
    down = _reach(list(softmax.output), index, forward=True, limit=200, barrier=linear).values()
    outs = [n for n in down if (w := _linear_weight(n, inits)) is not None and w.shape == (d, d)]
    if not outs:
        return None
    out_mm = min(outs, key=nodes.index)
    # the nodes between the projections, which must feed nothing else
    fwd = _reach(list(in_mm.output), index, forward=True, stop=out_mm)
    bwd = _reach([out_mm.input[0]], index, forward=False, stop=in_mm)
    region = [n for k, n in fwd.items() if k in bwd] + [in_mm]
    inside = {id(n) for n in region} | {id(out_mm)}
    graph_outputs = {o.name for o in model.graph.output}
    leaks = (c for n in region for o in n.output for c in index.consumers.get(o, []))
    if id(softmax) not in inside or any(id(c) not in inside for c in leaks):
        return None
    if any(o in graph_outputs for n in region for o in n.output):
        return None
    x, src = in_mm.input[0], index.producer.get(in_mm.input[0])
    perm = [a for a in src.attribute if a.name == "perm"] if src is not None and src.op_type == "Transpose" else []
    seq_first = bool(perm) and list(perm[0].ints) == [1, 0, 2]
    if seq_first:
        x = src.input[0]  # type: ignore[union-attr]
    b_in, causal = np.zeros(3 * d, np.float32), False
    for n in region:  # constants added in between: the in-projection's bias, and a causal mask or nothing
        if n.op_type == "Add" and in_mm.output[0] in n.input:
            name = _constant_of_size(n, inits, in_mm.output[0], 3 * d)
            b_in = numpy_helper.to_array(inits[name]).reshape(-1) if name else b_in
        elif n.op_type == "Add" and any(i in inits for i in n.input):
            mask = numpy_helper.to_array(inits[next(i for i in n.input if i in inits)])
            if mask.ndim < 2 or mask.shape[-1] != mask.shape[-2] or not _is_causal(mask):
                return None
            causal = True
    b_out = None
    if out_mm.op_type == "Gemm" and len(out_mm.input) > 2 and out_mm.input[2]:
        if out_mm.input[2] not in inits:
            return None
        b_out = numpy_helper.to_array(inits[out_mm.input[2]])
    # after the out-projection: its bias Add, and (seq-first) the Reshape/Transpose back to [batch, seq, D]
    tail, y = [], out_mm.output[0]
    while len(after := index.consumers.get(y, [])) == 1 and y not in graph_outputs:
        n = after[0]
        bias = _constant_of_size(n, inits, y, d) if n.op_type == "Add" and b_out is None else None
        if not (bias or n.op_type == "Reshape" or (n.op_type == "Transpose" and seq_first)):
            break
        b_out = numpy_helper.to_array(inits[bias]) if bias else b_out
        tail.append(n)
        y = n.output[0]
        if n.op_type == "Transpose":
            break
    if seq_first and not (tail and tail[-1].op_type == "Transpose"):
        return None
    heads = heads_of.get(softmax.input[0], 0)
    if not heads or d % heads:
        return None
    w_out = _linear_weight(out_mm, inits)
    assert w_out is not None
    return _Attention(x, y, w_in, b_in, w_out, b_out, heads, causal, [*region, out_mm, *tail])


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace each multi-head self-attention between its packed in-projection and its out-projection by
    com.microsoft Attention, then MatMul (and Add) for the out-projection; the count.

    PyTorch's nn.MultiheadAttention exports as ~40 nodes per layer (seq-first transposes, the Q/K/V split, head
    reshapes, two matmuls, a softmax), most of them single-threaded layout copies in ONNX Runtime. Attention
    does the same in one kernel, and quantize_dynamic makes it QAttention (int8 in-projection). The match is
    structural (a [D, 3D] in-projection, a Softmax, a [D, D] out-projection, nothing else reading the tensors
    between): `fuse_attention_file` checks the rewritten graph numerically.
    """
    from onnx import helper, numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model).graph.value_info
    heads_of = {  # the Softmax input is [batch, heads, seq, seq]
        v.name: v.type.tensor_type.shape.dim[1].dim_value for v in inferred if len(v.type.tensor_type.shape.dim) == 4
    }
    graph, fused = model.graph, 0
    # graph.node.extend copies nodes, so each round looks its Softmax up again by position among the Softmaxes
    for i in range(sum(n.op_type == "Softmax" for n in graph.node) - 1, -1, -1):
        softmax = [n for n in graph.node if n.op_type == "Softmax"][i]
        match = _match_attention(softmax, model, GraphIndex.of(model), heads_of)
        if match is None:
            continue
        k = f"{softmax.name}_attention"
        projected = match.y if match.b_out is None else f"{k}_projected"
        new = [
            helper.make_node("Attention", [match.x, f"{k}_qkv_weight", f"{k}_qkv_bias"], [f"{k}_out"], name=k,
                             domain="com.microsoft", num_heads=match.heads, unidirectional=int(match.causal)),
            helper.make_node("MatMul", [f"{k}_out", f"{k}_out_weight"], [projected], name=f"{k}_out_proj"),
        ]  # fmt: skip
        tensors = {"qkv_weight": match.w_in, "qkv_bias": match.b_in, "out_weight": match.w_out}
        if match.b_out is not None:
            tensors["out_bias"] = match.b_out.reshape(-1)
            new.append(helper.make_node("Add", [projected, f"{k}_out_bias"], [match.y], name=f"{k}_out_bias"))
        graph.initializer.extend(
            numpy_helper.from_array(np.ascontiguousarray(v, np.float32), f"{k}_{name}") for name, v in tensors.items()
        )
        last, drop = match.replaced[-1], {id(n) for n in match.replaced}
        kept = [m for n in graph.node if id(n) not in drop or n is last for m in (new if n is last else [n])]
        del graph.node[:]
        graph.node.extend(kept)
        fused += 1
    if fused:
        _drop_dead(model)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


def _drop_dead(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nothing reads, and initializers no node reads."""
    graph = model.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        live = [n for n in graph.node if any(o in read for o in n.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    read = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _probe_feeds(model: onnx.ModelProto, batch: int = 2) -> dict[str, np.ndarray]:
    """Inputs for checking a rewrite: small token ids for integer inputs, a fixed normal draw for float ones."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        shape = [batch if i == 0 else (d.dim_value or 1) for i, d in enumerate(t.shape.dim)]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if t.elem_type in (TensorProto.INT64, TensorProto.INT32):
            feeds[value.name] = rng.integers(0, 10, shape).astype(dtype)  # valid ids for any vocabulary
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


ATTENTION_TOLERANCE = 1e-4  # max |fused - unfused| relative to max |unfused| on the probe inputs


def fuse_attention_file(src: Path, dst: Path) -> int:
    """`fuse_attention` from `src` into `dst`, kept only where the fused graph computes what `src` does; the count.

    The check runs both graphs in ONNX Runtime on probe inputs (batch 2); a mismatch keeps the unfused graph and
    warns, as the match is structural and a graph exported another way could fit it without being attention.
    """
    import warnings

    import onnx
    import onnxruntime as ort

    model = onnx.load(str(src))
    count = fuse_attention(model)
    if count:
        onnx.save(model, str(dst))
        feeds = _probe_feeds(model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        want, got = (ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                     for p in (src, dst))  # fmt: skip
        if np.abs(want - got).max() > ATTENTION_TOLERANCE * max(float(np.abs(want).max()), 1e-12):
            warnings.warn(f"{Path(src).name}: fused attention does not match the graph; left unfused", stacklevel=2)
            count = 0
    if not count:
        onnx.save(onnx.load(str(src)), str(dst))
    return count
