"""Static int8 recipes: which nodes a recipe quantizes and in which integer types, registered by name, and which
recipe each (target, precision) applies to each encoder.

Why each recipe is what it is (the measured speed and accuracy trade-offs): docs/quantization.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgeclip._registry import add_once
from edgeclip.errors import UsageError
from edgeclip.precision.rewrites import GraphIndex

if TYPE_CHECKING:
    import onnx

# Decides per node whether a recipe quantizes it.
NodeFilter = Callable[["onnx.NodeProto", GraphIndex], bool]


def _conv_kind(node: onnx.NodeProto, graph: GraphIndex) -> str | None:
    """'pointwise' (1x1, group 1), 'depthwise' (group > 1), 'spatial' (kxk, group 1) or None for non-Conv nodes."""
    if node.op_type != "Conv":
        return None
    weight = graph.initializers.get(node.input[1])
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if weight is None:
        return "spatial"
    if group > 1:
        return "depthwise"
    return "pointwise" if tuple(weight.dims[2:]) == (1, 1) else "spatial"


def _any(_node: onnx.NodeProto, _graph: GraphIndex) -> bool:
    return True


def linear_matmul(node, graph: GraphIndex) -> bool:
    """MatMul/Gemm with a constant weight (a linear layer), not attention's activation x activation products."""
    return node.op_type in ("MatMul", "Gemm") and any(name in graph.initializers for name in node.input[1:2])


def _conv_residual_add(node: onnx.NodeProto, graph: GraphIndex) -> bool:
    """An Add of two activations, one of them a Conv's output: a conv block's residual connection.

    Not a bias or GELU's `1 + erf` (a constant input), nor a transformer's residual stream, whose outlier channels
    per-tensor int8 handles badly.
    """
    if node.op_type != "Add" or any(name in graph.initializers for name in node.input):
        return False
    return any(getattr(graph.producer.get(name), "op_type", None) == "Conv" for name in node.input)


def _conv_chain(node: onnx.NodeProto, graph: GraphIndex) -> bool:
    """1x1 and depthwise convs, linear MatMul/Gemm and conv residual Adds: what keeps a FastViT block int8."""
    return (
        _conv_kind(node, graph) in ("pointwise", "depthwise")
        or linear_matmul(node, graph)
        or _conv_residual_add(node, graph)
    )


def _conv_or_linear(node: onnx.NodeProto, graph: GraphIndex) -> bool:
    """Every Conv, and MatMul/Gemm with a constant weight (attention's activation products stay float)."""
    return node.op_type == "Conv" or linear_matmul(node, graph)


@dataclass(frozen=True)
class QuantRecipe:
    """Which ops a static int8 quantization touches and in which integer types; everything else stays float."""

    name: str
    description: str
    op_types: tuple[str, ...] | None  # None: every op ONNX Runtime's quantizer knows
    select: NodeFilter = _any
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    extra_options: dict[str, object] = field(default_factory=dict)
    # After quantizing, GELU becomes com.microsoft Gelu ("exact"), FastGelu ("tanh") or uint8 "quick";
    # None leaves GELU as the exporter wrote it (standard ONNX ops, for runtimes other than ONNX Runtime).
    gelu: str | None = "exact"
    float_first: int = 0  # the first N selected nodes in graph order (the stem, the first projection) stay float


RECIPES: dict[str, QuantRecipe] = {}


def register_recipe(recipe: QuantRecipe) -> QuantRecipe:
    """Add a recipe to the registry; names are unique."""
    add_once(RECIPES, recipe.name, recipe, "quantization recipe")
    return recipe


def get_recipe(name: str) -> QuantRecipe:
    """The registered recipe `name`, or a UsageError listing the registered ones."""
    if name not in RECIPES:
        raise UsageError(f"quantization recipe {name!r} is unknown: expected one of {', '.join(RECIPES)}")
    return RECIPES[name]


@dataclass(frozen=True)
class TargetRecipe:
    """The static int8 recipe a target applies to each encoder at one precision."""

    target: str
    precision: str
    image: str  # a name in RECIPES
    text: str

    def for_role(self, role: str) -> QuantRecipe:
        """The recipe for the 'image' or 'text' encoder."""
        return RECIPES[{"image": self.image, "text": self.text}[role]]


TARGET_RECIPES: dict[tuple[str, str], TargetRecipe] = {}


@dataclass(frozen=True)
class DynamicRecipe:
    """A dynamic int8 recipe (weights int8 ahead of time, activation ranges at run time): the ops it quantizes
    and the fp32 graph rewrites made first."""

    name: str
    description: str
    op_types: tuple[str, ...]
    fuse_attention: bool = False  # com.microsoft Attention first (rewrites.fuse_attention), quantized to QAttention


DYNAMIC_RECIPES: dict[str, DynamicRecipe] = {}


def register_dynamic_recipe(recipe: DynamicRecipe) -> DynamicRecipe:
    """Add a dynamic int8 recipe to the registry; names are unique."""
    add_once(DYNAMIC_RECIPES, recipe.name, recipe, "dynamic quantization recipe")
    return recipe


def get_dynamic_recipe(name: str) -> DynamicRecipe:
    """The registered dynamic recipe `name`, or a UsageError listing the registered ones."""
    if name not in DYNAMIC_RECIPES:
        known = ", ".join(DYNAMIC_RECIPES)
        raise UsageError(f"dynamic quantization recipe {name!r} is unknown: expected one of {known}")
    return DYNAMIC_RECIPES[name]


def register_target_recipe(target: str, precision: str, *, image: str, text: str) -> TargetRecipe:
    """Say which registered recipes `target` applies at `precision`; one entry per (target, precision)."""
    if (target, precision) in TARGET_RECIPES:
        raise ValueError(f"a {precision} recipe for target {target!r} is registered twice")
    missing = [name for name in (image, text) if name not in RECIPES]
    if missing:
        raise ValueError(f"target {target!r} {precision} names unregistered recipe {missing[0]!r}")
    TARGET_RECIPES[(target, precision)] = entry = TargetRecipe(target, precision, image, text)
    return entry


def target_recipe(target: str, precision: str) -> TargetRecipe:
    """The recipes registered for (target, precision); ValueError where none is (a programming error)."""
    try:
        return TARGET_RECIPES[(target, precision)]
    except KeyError:
        raise ValueError(f"no {precision} recipe is registered for target {target!r}") from None


# --- the recipes (why each is built this way: docs/quantization.md) ---------------------------------------------

register_recipe(
    QuantRecipe(
        "default",
        "ONNX Runtime's quantize_static defaults (every op, per-tensor, S8S8)",
        None,
        per_channel=False,
        activation_type="int8",
    )
)
# Measured on MobileCLIP2-S0, step by step from ORT defaults: docs/quantization.md#the-onnx-image-recipe
register_recipe(
    QuantRecipe(
        "edgeclip-image",
        "1x1 and depthwise Conv, linear MatMul/Gemm and residual Add, U8S8, "
        "per-channel symmetric weights, uint8 quick GELU between int8 convs (tanh GELU elsewhere)",
        ("Conv", "MatMul", "Gemm", "Add"),
        _conv_chain,
        gelu="quick",
    )
)
# Text tower (a transformer): MatMul weights int8, activations U8; LayerNorm, Softmax, GELU and residual adds float.
register_recipe(
    QuantRecipe(
        "edgeclip-text",
        "linear MatMul/Gemm only, U8S8, per-channel symmetric weights",
        ("MatMul", "Gemm"),
        linear_matmul,
    )
)
# TensorRT 10.1+ builds int8 only from explicit quantization: int8 Q/DQ with zero point 0 and standard ONNX ops
# (precision/qdq.py checks both). The first layer stays float: docs/quantization.md#tensorrt-int8.
register_recipe(
    QuantRecipe(
        "tensorrt",
        "Conv and linear MatMul/Gemm, S8S8 symmetric, per-channel weights, Q/DQ on op inputs only "
        "(TensorRT explicit int8)",
        ("Conv", "MatMul", "Gemm"),
        _conv_or_linear,
        per_channel=True,
        activation_type="int8",
        weight_type="int8",
        gelu=None,  # TensorRT reads standard ONNX ops only, and fuses GELU itself
        float_first=1,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,  # an int32 bias DequantizeLinear is not TensorRT's; it fuses float biases itself
            "OpTypesToExcludeOutputQuantization": ["Conv", "MatMul", "Gemm"],
        },
    )
)

register_target_recipe("onnx", "int8", image="edgeclip-image", text="edgeclip-text")

# Dynamic int8: the text encoder's default under static int8, and both encoders under --dynamic.
# Attention fused first, then QAttention: docs/quantization.md#the-text-encoder
register_dynamic_recipe(
    DynamicRecipe("matmul", "MatMul/Gemm weights int8 (ONNX Runtime's quantize_dynamic on the exported graph)",
                  ("MatMul", "Gemm"))
)  # fmt: skip
register_dynamic_recipe(
    DynamicRecipe(
        "edgeclip-dynamic",
        "self-attention fused into com.microsoft Attention, then MatMul/Gemm and Attention weights int8 (QAttention)",
        ("MatMul", "Gemm", "Attention"),
        fuse_attention=True,
    )
)
# The dynamic recipe each encoder gets (the text encoder under static int8, both under --dynamic). The image
# encoder's two attention blocks sit among convs and measured no faster fused: it keeps plain MatMul/Gemm.
DYNAMIC_RECIPE_FOR = {"image": "matmul", "text": "edgeclip-dynamic"}
register_target_recipe("tensorrt", "int8", image="tensorrt", text="tensorrt")
