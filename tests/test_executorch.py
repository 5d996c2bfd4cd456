"""The executorch target and backend: real `.pte` files of the tiny model run by ExecuTorch's XNNPACK runtime, the
module rewrites that raise delegation, placement records, batch methods, threads and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeclip.cli import cli
from edgeclip.data.shapes import ShapesDataset, write_image_folder
from edgeclip.errors import BundleError, RuntimeUnavailable, UsageError
from edgeclip.export import export_bundle
from edgeclip.export.targets.executorch import executorch_unavailable
from edgeclip.models.encoders import ImageEncoder, TextEncoder
from edgeclip.models.loading import load_model
from edgeclip.precision.module_rewrites import MODULE_REWRITES, XNNPACK_REWRITES, apply_module_rewrites
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.backends import RuntimeOptions
from edgeclip.runtimes.placement import placement_of
from tests.conftest import TINY, cosine_rows

UNAVAILABLE = executorch_unavailable()
needs_executorch = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"ExecuTorch is not usable here: {UNAVAILABLE}")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Ops XNNPACK must take for a graph to count as delegated: the compute-heavy ones.
HEAVY = ("convolution", "linear", "addmm", "mm", "bmm", "matmul")


@pytest.fixture(scope="module")
def tiny_model():
    return load_model(TINY, random_init=True).model


def test_module_rewrites_compute_what_the_modules_they_replace_compute(tiny_model) -> None:
    """LayerNorm and attention rewrites are exact rewrites (float error only), on both towers and timm FastViT."""
    from timm.models.fastvit import Attention

    pixels = torch.randn(2, 3, 64, 64)
    tokens = torch.randint(1, 49000, (2, 77))
    for encoder, x in ((ImageEncoder(tiny_model).eval(), pixels), (TextEncoder(tiny_model).eval(), tokens)):
        rewritten, counts = apply_module_rewrites(encoder, XNNPACK_REWRITES)
        assert counts["layernorm-4d"] > 0 and counts["attention-bmm"] > 0, counts
        assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.MultiheadAttention)) for m in rewritten.modules())
        with torch.no_grad():
            torch.testing.assert_close(rewritten(x), encoder(x), atol=2e-5, rtol=1e-4)
        assert any(isinstance(m, torch.nn.LayerNorm) for m in encoder.modules())  # the caller's module is untouched
    attention = Attention(dim=64, head_dim=32).eval()
    rewritten, counts = apply_module_rewrites(torch.nn.Sequential(attention), ["attention-bmm"])
    assert counts == {"attention-bmm": 1}
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), attention(x), atol=2e-5, rtol=1e-4)
    with pytest.raises(UsageError, match="unknown module rewrite 'layernorm': expected one of"):
        apply_module_rewrites(attention, ["layernorm"])
    assert set(XNNPACK_REWRITES) <= set(MODULE_REWRITES) and "depthwise-bands" in XNNPACK_REWRITES


def test_depthwise_bands_split_only_large_depthwise_convs_and_compute_the_same() -> None:
    """Depthwise convs over XNNPACK's 25-tap tile become row bands of <= 25 taps, exactly; every other conv stays."""
    from torch import nn

    from edgeclip.precision.module_rewrites import XNNPACK_DEPTHWISE_TAPS, BandedDepthwiseConv2d

    cases = [
        nn.Conv2d(8, 8, 7, padding=3, groups=8),
        nn.Conv2d(8, 8, 7, stride=2, padding=3, groups=8, bias=False),
        nn.Conv2d(8, 8, (9, 5), padding=(4, 1), groups=8),  # 5 taps wide: bands of 5 rows
        nn.Conv2d(8, 8, (6, 6), stride=(2, 1), padding=0, groups=8),
        nn.Conv2d(8, 8, 7, stride=3, padding=2, groups=8),
    ]
    untouched = [
        nn.Conv2d(8, 8, 5, padding=2, groups=8),  # 25 taps: XNNPACK's own depthwise kernel takes it
        nn.Conv2d(8, 8, 7, padding=3),  # a dense conv
        nn.Conv2d(8, 16, 7, padding=3, groups=8),  # depth multiplier 2
        nn.Conv2d(8, 8, 7, padding=6, dilation=2, groups=8),
        nn.Conv2d(8, 8, (1, 31), padding=(0, 15), groups=8),  # wider than one band can be
        nn.Conv2d(8, 8, 7, padding="same", groups=8),
    ]
    for conv in cases:
        rewritten, counts = apply_module_rewrites(nn.Sequential(conv.eval()), ["depthwise-bands"])
        assert counts == {"depthwise-bands": 1}, conv
        banded = rewritten[0]
        assert isinstance(banded, BandedDepthwiseConv2d)
        assert all(w.shape[2] * w.shape[3] <= XNNPACK_DEPTHWISE_TAPS for w in banded.weights)
        for height in (23, 24, 9):  # odd and even heights, under stride 2 and 3 as well
            x = torch.randn(2, 8, height, 17)
            with torch.no_grad():
                torch.testing.assert_close(rewritten(x), conv(x), atol=1e-5, rtol=1e-5)
    for conv in untouched:
        rewritten, counts = apply_module_rewrites(nn.Sequential(conv), ["depthwise-bands"])
        assert counts == {"depthwise-bands": 0} and type(rewritten[0]) is nn.Conv2d, conv
    # MobileCLIP2-S0's reparameterized image tower: its 21 7x7 depthwise convs (ConvFFN, patch embeddings, the
    # conditional positional encodings), and the tower computes the same
    from edgeclip.export import _reparameterized_copy

    s0 = ImageEncoder(_reparameterized_copy(load_model("MobileCLIP2-S0", random_init=True).model)).eval()
    rewritten, counts = apply_module_rewrites(s0, ["depthwise-bands"])
    assert counts == {"depthwise-bands": 21}
    pixels = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(pixels), s0(pixels), atol=1e-5, rtol=1e-4)


@needs_executorch
def test_xnnpack_runs_a_7x7_depthwise_conv_as_igemm_and_the_bands_as_depthwise_kernels(tmp_path: Path) -> None:
    """The reason for depthwise-bands, on the real runtime: XNNPACK's own per-operator events name the kernel."""
    from torch import nn

    from edgeclip.export.targets.executorch import _lower
    from edgeclip.runtimes.backends.executorch import op_times

    conv = nn.Sequential(nn.Conv2d(16, 16, 7, padding=3, groups=16)).eval()
    x = torch.randn(1, 16, 20, 20)
    kernels = {}
    for rewrites in ((), ("depthwise-bands",)):
        path = tmp_path / f"{len(rewrites)}.pte"
        path.write_bytes(_lower("image", conv, x, (1,), rewrites, None).buffer)
        names = [name for name, _ in op_times(path, x.numpy(), threads=1, runs=2)]
        kernels[rewrites] = sorted({n.rsplit(" #", 1)[0] for n in names if n.startswith("Convolution")})
    assert kernels[()] == ["Convolution (NHWC, F32) IGEMM"]
    assert kernels[("depthwise-bands",)] == ["Convolution (NHWC, F32) DWConv"]
    # With envelopes: the method and the delegate call around the ops, which only ops are without.
    timed = dict(op_times(path, x.numpy(), threads=1, runs=2, envelopes=True))
    assert {"Method::execute", "DELEGATE_CALL"} <= timed.keys() and not {"Method::execute"} & set(names)
    assert timed["Method::execute"] >= max(us for n, us in timed.items() if n.startswith("Convolution"))


@needs_executorch
def test_depthwise_bands_lower_to_int8_inside_a_quantized_network(tmp_path: Path) -> None:
    """As in FastViT: a 7x7 depthwise conv fed by another quantized op, then BatchNorm. XNNPACK must compile the
    int8 program (an int8 pad between two differently quantized tensors does not), run it on its depthwise kernels,
    and stay close to float."""
    from torch import nn

    from edgeclip.export.targets.executorch import _lower
    from edgeclip.runtimes.backends.executorch import ExecuTorchBackend, op_times
    from edgeclip.runtimes.manifest import EncoderSpec, TensorSpec

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 16, 7, padding=3, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, 1),
    ).eval()
    x = torch.randn(1, 16, 20, 20)
    feeds = [{"pixels": torch.randn(16, 16, 20, 20).numpy()}]
    path = tmp_path / "int8.pte"
    path.write_bytes(_lower("image", net, x, (1,), ("depthwise-bands",), feeds).buffer)
    spec = EncoderSpec(path.name, "", (TensorSpec("pixels", (1, 16, 20, 20), "float32"),), ())
    got = ExecuTorchBackend(path, spec, RuntimeOptions(threads=1)).run({"pixels": x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert cosine_rows(want.reshape(1, -1), got.reshape(1, -1)).min() > 0.99
    convs = {n.rsplit(" #", 1)[0] for n, _ in op_times(path, x.numpy(), threads=1, runs=2) if "Convolution" in n}
    assert convs and not any("IGEMM" in c for c in convs), convs


def test_the_backend_module_loads_without_torch() -> None:
    code = (
        "import sys\nfor m in ('torch', 'open_clip', 'timm'): sys.modules[m] = None\n"
        "import edgeclip.runtimes.backends.executorch as b; print(b.DELEGATE)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "XnnpackBackend"


def test_int8_without_calibration_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs --calibration") as err:
        export_bundle(TINY, output=tmp_path / "b", target="executorch", precision="int8", random_init=True)
    assert "\n" not in str(err.value) and not (tmp_path / "b").exists()


@needs_executorch
@pytest.mark.slow
class TestTinyBundle:
    """One fp32 export with two batch sizes (1 and 3), held to parity, placement, batching and thread checks."""

    @pytest.fixture(scope="class")
    @classmethod
    def bundle(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        out = tmp_path_factory.mktemp("et") / "tiny.edgeclip"
        export_bundle(TINY, output=out, target="executorch", random_init=True, target_options={"batch_sizes": "1,3"})
        return out

    def test_manifest_parity_and_files(self, bundle: Path) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["target"] == "executorch" and manifest["precision"] == "fp32"
        assert manifest["target_info"]["methods"] == {"forward": 1, "batch_3": 3}
        for role in ("image", "text"):
            enc = manifest["encoders"][role]
            assert enc["file"] == f"{role}_encoder.pte" and enc["inputs"][0]["shape"][0] == "batch"
            assert enc["parity"]["min_cosine"] >= 0.9999, enc["parity"]
            assert f"{role}_encoder.placement.json" in manifest["checksums"]  # placement is covered, like the .pte
        assert (bundle / "image_encoder.pte").read_bytes()[4:8] == b"ET12"  # an ExecuTorch flatbuffer program

    def test_placement_every_heavy_op_delegated_in_few_pieces(self, bundle: Path) -> None:
        loaded = load_bundle(bundle, threads=1)
        for role in ("image", "text"):
            placement = placement_of(loaded.encoder(role))
            assert placement is not None and placement.delegate == "XnnpackBackend"
            assert placement.pieces <= 5 and placement.fraction > 0.9, placement
            assert not [op for op in placement.fallback if any(h in op for h in HEAVY)], placement.fallback

    def test_runs_match_pytorch_on_photos_at_any_batch(self, bundle: Path, photos, tiny_model) -> None:
        loaded = load_bundle(bundle, threads=2)
        images = [*photos.values(), ShapesDataset("eval", size=64, seed=3)[0].image]
        got = loaded.encode_image(images, batch_size=4)  # 4 rows: one run of 3 and one of 1
        from edgeclip.runtimes.preprocess import preprocess

        pixels = preprocess(images, loaded.manifest.preprocess)
        with torch.no_grad():
            want = ImageEncoder(tiny_model).eval()(torch.from_numpy(pixels)).numpy()
        assert cosine_rows(got, want).min() > 0.9999
        texts = ["a photo of a cat", "", "café crème — 2 €"]
        with torch.no_grad():
            want_text = TextEncoder(tiny_model).eval()(torch.from_numpy(loaded.tokenizer.encode(texts))).numpy()
        assert cosine_rows(loaded.encode_text(texts), want_text).min() > 0.9999

    def test_a_batch_size_not_exported_names_the_ones_that_were(self, bundle: Path) -> None:
        encoder = load_bundle(bundle, threads=1).encoder("image")
        assert encoder.batch_sizes == (1, 3)  # type: ignore[attr-defined]
        with pytest.raises(UsageError, match=r"batch size 2 was not exported in image_encoder.pte: it takes 1, 3"):
            encoder.run_batch(np.zeros((2, 3, 64, 64), np.float32))  # type: ignore[attr-defined]

    def test_threads_are_always_set(self, bundle: Path) -> None:
        from executorch.extension.pybindings import portable_lib

        from edgeclip.runtimes.backends.executorch import ExecuTorchBackend, default_threads

        spec = load_bundle(bundle).manifest.encoders["text"]
        two = ExecuTorchBackend(bundle / spec.file, spec, RuntimeOptions(threads=2))
        one = ExecuTorchBackend(bundle / spec.file, spec, RuntimeOptions(threads=1))
        assert portable_lib._threadpool_get_thread_count() == 1
        two.run({"token_ids": np.ones((1, 77), np.int64)})
        assert portable_lib._threadpool_get_thread_count() == 2  # each backend runs with its own setting
        default = ExecuTorchBackend(bundle / spec.file, spec, RuntimeOptions())
        assert default.threads == default_threads() and portable_lib._threadpool_get_thread_count() == default.threads
        assert one.threads == 1

    def test_bad_bundles_and_options(self, bundle: Path, tmp_path: Path) -> None:
        from edgeclip.runtimes.backends.executorch import ExecuTorchBackend

        spec = load_bundle(bundle).manifest.encoders["image"]
        with pytest.raises(UsageError, match="drop providers"):
            ExecuTorchBackend(bundle / spec.file, spec, RuntimeOptions(providers=("CPUExecutionProvider",)))
        broken = tmp_path / "image_encoder.pte"
        broken.write_bytes((bundle / spec.file).read_bytes()[:4096])
        with pytest.raises(BundleError, match="could not be loaded by ExecuTorch"):
            ExecuTorchBackend(broken, spec, RuntimeOptions())
        alone = tmp_path / "alone" / spec.file  # the .pte without the placement record written beside it
        alone.parent.mkdir()
        alone.write_bytes((bundle / spec.file).read_bytes())
        with pytest.raises(BundleError, match="placement record"):
            ExecuTorchBackend(alone, spec, RuntimeOptions()).placement()
        result = CliRunner().invoke(cli, ["info", str(bundle), "--verify"])
        assert result.exit_code == 0 and "verified" in result.output, result.output


@needs_executorch
@pytest.mark.slow
def test_int8_is_calibrated_gated_and_close_to_pytorch(tmp_path: Path, photos) -> None:
    """PT2E int8 from a calibration folder: the gate recorded against PyTorch fp32, parity over the int8 floor."""
    folder = write_image_folder(ShapesDataset("train", size=64, seed=9), tmp_path / "calib", 24)
    out = tmp_path / "int8.edgeclip"
    export_bundle(TINY, output=out, target="executorch", precision="int8", random_init=True,
                  target_options={"calibration": folder, "max_cosine_drop": 0.05})  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["calibration"]
    assert record["gate"]["passed"] and record["gate"]["reference"].startswith("pytorch fp32")
    assert record["keep_float"] == ["LayerNorm4d", "BmmAttentionCore", "BandedDepthwiseConv2d"]
    assert record["set"]["images"] > 0
    assert record["text_int8"] == "dynamic" and "text encoder's scaled per run" in record["method"]
    # Dynamic int8 linears (activation scales chosen per run) are XNNPACK ops too: nothing heavy falls out.
    text = manifest["target_info"]["placement"]["text"]
    assert text["pieces"] <= 5 and not [op for op in text["fallback"] if any(h in op for h in HEAVY)], text
    for role in ("image", "text"):
        assert manifest["encoders"][role]["parity"]["mean_cosine"] >= 0.99
    # int8 weights: the file is much smaller than fp32's would be (the tiny text encoder is mostly its embedding).
    assert (out / "image_encoder.pte").stat().st_size < 400_000


def test_missing_executorch_is_one_line_naming_the_extra(monkeypatch, tmp_path: Path) -> None:
    """Where ExecuTorch cannot import, export stops before loading the model, naming the extra."""
    monkeypatch.setitem(sys.modules, "executorch", None)
    monkeypatch.setitem(sys.modules, "executorch.exir", None)
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'edgeclip\[executorch\]'") as err:
        export_bundle(TINY, output=tmp_path / "b", target="executorch", random_init=True)
    assert "\n" not in str(err.value) and not (tmp_path / "b").exists()
