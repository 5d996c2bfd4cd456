"""export_onnx_graph on a tiny CLIP: a FastViT-style image tower (the convs and GELUs its rewrites touch) and a
no-causal-mask text transformer, run in a real ONNX Runtime session with edgeclip's session settings."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

open_clip = pytest.importorskip("open_clip")
fastvit = pytest.importorskip("timm.models.fastvit")
from timm.utils.model import reparameterize_model  # noqa: E402

from edgeclip.export.onnx_graph import export_onnx_graph  # noqa: E402
from edgeclip.models.encoders import ImageEncoder, TextEncoder  # noqa: E402
from edgeclip.runtimes.backends.ort import session_options  # noqa: E402

EMBED_DIM = 32


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    """A random tiny CLIP whose image tower is a 4-stage FastViT (RepMixer, SE downsampling, attention)."""
    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=EMBED_DIM,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=64),
        text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=500, width=32, heads=2, layers=2,
                                       no_causal_mask=True),
    )  # fmt: skip
    clip.visual = fastvit.FastVit(
        layers=(1, 1, 1, 1),
        embed_dims=(16, 32, 64, 64),
        mlp_ratios=(2, 2, 2, 2),
        se_downsamples=(False, False, True, True),
        pos_embs=(None, None, None, partial(fastvit.RepConditionalPosEnc, spatial_shape=(7, 7))),
        token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
        num_classes=EMBED_DIM,
    )
    clip.eval()
    with torch.no_grad():  # random BatchNorm statistics, so that folding them is actually tested
        for module in clip.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return reparameterize_model(clip)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(2), providers=["CPUExecutionProvider"])


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.min((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))


@pytest.fixture(scope="module")
def exported(tiny_clip: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each tower exported once: (encoder, input name, inputs [3, ...], onnx path)."""
    gen = torch.Generator().manual_seed(1)
    out = tmp_path_factory.mktemp("onnx_graph")
    towers = {
        "image": (ImageEncoder(tiny_clip).eval(), "pixels", torch.randn(3, 3, 64, 64, generator=gen)),
        "text": (TextEncoder(tiny_clip).eval(), "token_ids", torch.randint(1, 500, (3, 77), generator=gen)),
    }
    result = {}
    for tower, (encoder, name, inputs) in towers.items():
        path = out / f"{tower}.onnx"
        export_onnx_graph(encoder, inputs[:1], path, input_name=name, output_name="embeddings")
        result[tower] = (encoder, name, inputs, path)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("tower", ["image", "text"])
def test_export_runs_in_onnxruntime_with_dynamic_batch(exported: dict, tower: str):
    encoder, name, inputs, path = exported[tower]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, "only standard ops: portable across EPs"
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    (graph_input,) = model.graph.input
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"

    session = _session(path)
    with torch.no_grad():
        expected = encoder(inputs).numpy()
    for batch in (1, 3):
        got = session.run(None, {name: inputs[:batch].numpy()})[0]
        assert got.shape == (batch, EMBED_DIM)
        assert _min_cosine(got, expected[:batch]) >= 0.9999
        np.testing.assert_allclose(got, expected[:batch], atol=1e-4)


@pytest.mark.slow
def test_image_graph_rewrites_applied(exported: dict, tmp_path: Path):
    path = exported["image"][3]
    model = onnx.load(str(path))
    weights = {t.name: t.dims for t in model.graph.initializer}
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:  # depthwise only: no channel-multiplier grouped conv left
            assert weights[node.input[1]][0] == group
    optimized = tmp_path / "extended.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    # ORT fuses the exact GELUs (10 here); it leaves only the one whose input is FastViT's SE gate (a Mul).
    assert ops.count("Gelu") >= 9 and ops.count("Erf") <= 1
