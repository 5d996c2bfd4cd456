"""Torch-module rewrites that raise delegation: named recipes that swap a module for an equivalent one built from ops
an accelerated delegate takes, applied to a copy of an encoder before export.

ExecuTorch's XNNPACK partitioner (1.5) takes no `layer_norm`, averages only 4-D tensors over dims (2, 3), and takes
3-D `bmm` but not the small ops `nn.MultiheadAttention` and 4-D matmuls decompose into; every op it refuses cuts the
graph into one more delegate piece and runs on the portable CPU kernels. Each recipe says which module types it
replaces and which of its new modules an int8 quantizer must leave in float (normalization and softmax statistics
lose accuracy in int8; XNNPACK's int8 depthwise kernel is slower than its fp32 one on x86). Measured effect
(pieces, latency, cosine): docs/mobile.md#module-rewrites.

XNNPACK's depthwise kernels take at most 25 taps: a larger depthwise kernel (FastViT's 7x7) runs as a grouped
IGEMM with one channel per group, 27-38x slower than ONNX Runtime's kernel for the same op (runs of the op-by-op
profile, docs/mobile.md), so it is split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.errors import UsageError


class LayerNorm4d(nn.Module):
    """LayerNorm over the last dimension, computed on a [M, 1, 1, C] view so both means are 4-D means over (2, 3)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.width = int(norm.normalized_shape[-1])
        self.eps = float(norm.eps)
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.float().reshape(-1, 1, 1, self.width)
        centered = x - x.mean(dim=(2, 3), keepdim=True)
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)
        y = centered * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape)


class BmmAttentionCore(nn.Module):
    """Scaled dot-product attention of [B, L, E] q, k, v over `heads` heads as 3-D bmm + softmax + bmm."""

    def __init__(self, heads: int, width: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim**-0.5

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3).reshape(b * self.heads, n, self.head_dim)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, width = q.shape
        scores = torch.bmm(self._split(q) * self.scale, self._split(k).permute(0, 2, 1))
        if mask is not None:
            if mask.dtype == torch.bool:  # True means "may not attend", as nn.MultiheadAttention reads it
                mask = torch.zeros(mask.shape, dtype=scores.dtype).masked_fill(mask, float("-inf"))
            scores = scores + mask
        out = torch.bmm(scores.softmax(dim=-1), self._split(v))
        return out.reshape(b, self.heads, n, self.head_dim).permute(0, 2, 1, 3).reshape(b, n, width)


def _split_linear(weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> list[nn.Linear]:
    """One [parts*E, E] projection as `parts` nn.Linear of [E, E] with the same weights (no slicing in the graph)."""
    out_width, in_width = weight.shape[0] // parts, weight.shape[1]
    linears = []
    for i in range(parts):
        linear = nn.Linear(in_width, out_width, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight[i * out_width : (i + 1) * out_width])
            if bias is not None:
                linear.bias.copy_(bias[i * out_width : (i + 1) * out_width])
        linears.append(linear)
    return linears


class BmmSelfAttention(nn.Module):
    """`nn.MultiheadAttention` used as self-attention (open_clip's text and ViT blocks), as linears + bmm attention."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise UsageError("attention rewrite: nn.MultiheadAttention with separate q/k/v widths is not supported")
        self.batch_first = bool(mha.batch_first)
        self.q, self.k, self.v = _split_linear(mha.in_proj_weight.detach(), _detached(mha.in_proj_bias), 3)
        self.core = BmmAttentionCore(mha.num_heads, mha.embed_dim)
        self.out_proj = nn.Linear(mha.embed_dim, mha.embed_dim, bias=mha.out_proj.bias is not None)
        self.out_proj.load_state_dict(mha.out_proj.state_dict())

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or key_padding_mask is not None or is_causal:
            raise UsageError("attention rewrite: only self-attention without a key padding mask is supported")
        x = query if self.batch_first else query.transpose(0, 1)
        out = self.out_proj(self.core(self.q(x), self.k(x), self.v(x), attn_mask))
        return (out if self.batch_first else out.transpose(0, 1)), None


class BmmConvAttention(nn.Module):
    """timm FastViT's `Attention` over a [B, C, H, W] map (MobileCLIP's image stages), as linears + bmm attention."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        qkv: nn.Linear = attn.qkv  # type: ignore[assignment]
        width = int(qkv.in_features)
        self.q, self.k, self.v = _split_linear(qkv.weight.detach(), _detached(qkv.bias), 3)
        self.core = BmmAttentionCore(int(attn.num_heads), width)  # type: ignore[arg-type]
        self.proj: nn.Module = copy.deepcopy(attn.proj)  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).permute(0, 2, 1)
        out = self.proj(self.core(self.q(tokens), self.k(tokens), self.v(tokens)))
        return out.permute(0, 2, 1).reshape(b, c, h, w)


# The most taps XNNPACK's depthwise convolution kernels take; a larger depthwise kernel falls to grouped IGEMM.
XNNPACK_DEPTHWISE_TAPS = 25


class BandedDepthwiseConv2d(nn.Module):
    """A depthwise conv whose kernel exceeds XNNPACK's depthwise tile, as row bands of at most that many taps summed.

    Each band is a depthwise conv with its own zero padding, cropped to the output rows it contributes to, so the sum
    is the original convolution up to float rounding. No separate pad op: XNNPACK's int8 constant pad refuses an
    input whose quantization differs from its output's, as it does inside a quantized network.
    """

    def __init__(self, conv: nn.Conv2d, max_taps: int = XNNPACK_DEPTHWISE_TAPS) -> None:
        super().__init__()
        weight = conv.weight.detach()
        kh, kw = int(weight.shape[2]), int(weight.shape[3])
        self.channels = int(weight.shape[0])
        self.stride = (int(conv.stride[0]), int(conv.stride[1]))
        self.padding = (int(conv.padding[0]), int(conv.padding[1]))
        self.kernel_rows = kh
        rows_per_band = max(1, max_taps // kw)
        self.starts = list(range(0, kh, rows_per_band))
        self.weights = nn.ParameterList(
            nn.Parameter(weight[:, :, r0 : r0 + rows_per_band].clone(), requires_grad=False) for r0 in self.starts
        )
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def _band_padding(self, r0: int, rows: int, height: int) -> tuple[int, int]:
        """(zero rows on each side, first output row to keep) for the band of kernel rows r0..r0+rows-1."""
        (p, _), (s, _) = self.padding, self.stride
        out_h = (height + 2 * p - self.kernel_rows) // s + 1
        q = max(0, p - r0)
        while (r0 - p + q) % s:  # the band's output rows must land on the original's
            q += 1
        while (r0 - p + q) // s + out_h > (height + 2 * q - rows) // s + 1:
            q += s
        return q, (r0 - p + q) // s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (p, pw), (s, sw) = self.padding, self.stride
        height = int(x.shape[2])
        out_h = (height + 2 * p - self.kernel_rows) // s + 1
        out = None
        for r0, weight in zip(self.starts, self.weights, strict=True):
            q, first = self._band_padding(r0, int(weight.shape[2]), height)
            y = F.conv2d(x, weight, None, (s, sw), (q, pw), 1, self.channels)[:, :, first : first + out_h]
            out = y if out is None else out + y
        assert out is not None
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


def _large_depthwise(module: nn.Module) -> nn.Module | None:
    if type(module) is not nn.Conv2d or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    channels = module.in_channels
    kh, kw = module.kernel_size
    if not (module.groups == channels == module.out_channels) or tuple(module.dilation) != (1, 1):
        return None
    if kh * kw <= XNNPACK_DEPTHWISE_TAPS or kw > XNNPACK_DEPTHWISE_TAPS:
        return None
    return BandedDepthwiseConv2d(module)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _layer_norm(module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return LayerNorm4d(module)
    return None


def _attention(module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.MultiheadAttention):
        return BmmSelfAttention(module)
    try:
        from timm.models.fastvit import Attention as FastVitAttention
    except ImportError:
        return None
    return BmmConvAttention(module) if isinstance(module, FastVitAttention) else None


@dataclass(frozen=True)
class ModuleRewrite:
    """A named rewrite: what it does, how one module is replaced (None: left alone), what stays float in int8."""

    name: str
    description: str
    replace: Callable[[nn.Module], nn.Module | None]
    keep_float: tuple[type[nn.Module], ...] = ()


MODULE_REWRITES: dict[str, ModuleRewrite] = {
    r.name: r
    for r in (
        ModuleRewrite(
            "layernorm-4d",
            "LayerNorm over the last dim as mean/sub/mul/rsqrt on a [M, 1, 1, C] view (XNNPACK takes 4-D means only)",
            _layer_norm,
            keep_float=(LayerNorm4d,),
        ),
        ModuleRewrite(
            "attention-bmm",
            "nn.MultiheadAttention and timm FastViT Attention as q/k/v linears + 3-D bmm + softmax + bmm",
            _attention,
            keep_float=(BmmAttentionCore,),
        ),
        ModuleRewrite(
            "depthwise-bands",
            f"a depthwise conv of more than {XNNPACK_DEPTHWISE_TAPS} taps (FastViT's 7x7) as row bands of at most "
            f"{XNNPACK_DEPTHWISE_TAPS} taps summed (XNNPACK runs larger ones as a slow grouped IGEMM)",
            _large_depthwise,
            # XNNPACK's int8 depthwise kernel is slower than its fp32 one on x86 (docs/mobile.md, op by op)
            keep_float=(BandedDepthwiseConv2d,),
        ),
    )
}
# The recipes the executorch target applies unless asked not to.
XNNPACK_REWRITES = ("layernorm-4d", "attention-bmm", "depthwise-bands")


def apply_module_rewrites(module: nn.Module, names: Sequence[str]) -> tuple[nn.Module, dict[str, int]]:
    """A rewritten deep copy of `module` (the caller's stays untouched) and how many modules each recipe replaced."""
    unknown = [n for n in names if n not in MODULE_REWRITES]
    if unknown:
        raise UsageError(f"unknown module rewrite {unknown[0]!r}: expected one of {', '.join(MODULE_REWRITES)}")
    out = copy.deepcopy(module).eval()
    counts = {}
    for name in names:
        counts[name] = _replace_children(out, MODULE_REWRITES[name].replace)
    return out.eval(), counts


def _replace_children(parent: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> int:
    count = 0
    for child_name, child in list(parent.named_children()):
        new = replace(child)
        if new is not None:
            setattr(parent, child_name, new.eval())
            count += 1
        else:
            count += _replace_children(child, replace)
    return count


def keep_float_types(names: Sequence[str]) -> tuple[type[nn.Module], ...]:
    """Module types the int8 quantizer must leave in float after the named rewrites."""
    return tuple(t for n in names for t in MODULE_REWRITES[n].keep_float)
