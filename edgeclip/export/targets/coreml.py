"""CoreML target: both encoders as ML Program packages (.mlpackage) that drop into Xcode and behave like PyTorch.

Each encoder goes through ``torch.export`` (``torch.jit.trace`` fails on MobileCLIP's attention mixers) and
``coremltools.convert(convert_to="mlprogram")``. Converting, saving and weight compression run wherever
coremltools installs; running a package needs macOS or iOS, so parity at export time and W8A8 calibration
(which runs the model) happen only on a Mac.

Image input ``pixels`` bakes normalization into the package as ``ct.ImageType(scale, bias)``. CoreML's scale
is one number for all channels, so a per-channel std is split: the ImageType does ``x / 255 - mean`` and a
one-op layer in front of the encoder multiplies each channel by ``1 / std`` (a uniform std needs no layer).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip._version import __version__
from edgeclip.errors import ExportError, RuntimeUnavailable, UsageError
from edgeclip.export.options import EncoderFile, EncoderFiles, Encoders, ExportOptions
from edgeclip.export.target_options import Choice, Files, Ints, TargetOptions, option, options_of
from edgeclip.export.target_options import parse_options as parse_target_options
from edgeclip.export.targets import TargetSpec, register_target
from edgeclip.runtimes.manifest import TensorSpec

IMAGE_INPUTS = ("tensor", "pixels")
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
DEFAULT_DEPLOYMENT_TARGET = "iOS17"
DEFAULT_BATCH_RANGE = (1, 64)
MAX_BATCH = 1024
# Tensors with fewer values stay float (norms, biases, small convs): coremltools' own default threshold.
WEIGHT_THRESHOLD = 2048
OUTPUT_NAME = "embeddings"
INPUT_NAMES = {"tensor": "pixels", "pixels": "image", "text": "token_ids"}
METADATA_PREFIX = "edgeclip."


# --- compressions: one entry each, the single table behind validation, CLI help, docs and tests ----------------


@dataclass(frozen=True)
class Compression:
    """A weight (or weight + activation) compression: what it does, its parity floor, how it is applied."""

    name: str
    # Minimum cosine to PyTorch fp32 the export must reach where parity runs (macOS). The palette and w8a8
    # floors are first estimates: they have not been measured yet on trained weights.
    parity_floor: float
    detail: dict[str, Any]  # recorded in the manifest's target_info
    needs_calibration: bool = False
    needs_macos: bool = False


COMPRESSIONS: dict[str, Compression] = {
    c.name: c
    for c in (
        Compression(
            "int8",
            0.99,  # int8 weights only: held on the worst input as the 8-bit palette is
            {
                "method": "linear_quantize_weights",
                "mode": "linear_symmetric",
                "dtype": "int8",
                "granularity": "per_channel",
            },
        ),
        *(
            Compression(
                f"palettize{bits}",
                floor,
                {
                    "method": "palettize_weights",
                    "mode": "kmeans (optimal 1-D, kmeans1d)",
                    "nbits": bits,
                    "granularity": "per_tensor",
                },
            )
            for bits, floor in ((4, 0.95), (6, 0.98), (8, 0.99))
        ),
        Compression(
            "w8a8",  # image encoder: int8 activations calibrated on images, then int8 weights; text: int8 weights
            0.98,
            {
                "method": "linear_quantize_activations + linear_quantize_weights",
                "mode": "linear_symmetric",
                "dtype": "int8",
            },
            needs_calibration=True,
            needs_macos=True,
        ),
    )
}

# --- options -------------------------------------------------------------------------------------------------


def _calibration_sources(items: tuple[Path, ...]) -> tuple[Path, ...]:
    """w8a8's --calibration: one `.npz` from `edgeclip calibrate` or one folder, as every target takes, or images."""
    from edgeclip.data.images import expand_image_paths

    for item in items:
        if not item.exists():
            raise UsageError(
                f"calibration path {item} does not exist: expected a .npz from `edgeclip calibrate`, "
                f"image files or a folder of them"
            )
    sets = [item for item in items if item.suffix == ".npz"]
    if sets and len(items) > 1:
        others = len(items) - 1
        raise UsageError(
            f"calibration {sets[0]} is a calibration set: pass it alone, not with {others} other "
            f"path{'s' if others > 1 else ''}"
        )
    if sets:
        return (sets[0],)
    images = tuple(expand_image_paths(items))
    if not images:
        raise UsageError(f"calibration {', '.join(map(str, items))} holds no images: expected JPEG/PNG/... files")
    if len(items) == 1 and items[0].is_dir():
        return (items[0],)  # one folder: drawn into a calibration set as the onnx and tensorrt targets draw it
    return images


@dataclass(frozen=True)
class CoreMLOptions(TargetOptions):
    """The target options of a CoreML export."""

    compress: str | None = option(
        Choice(tuple(COMPRESSIONS), none="none"),
        help="weight compression (w8a8: int8 weights and activations, calibrated on a Mac)",
    )
    image_input: str = option(
        Choice(IMAGE_INPUTS),
        IMAGE_INPUTS[0],
        help="tensor (float pixels) or pixels (an RGB image, normalized inside the package)",
    )
    deployment_target: str = option(
        Choice(DEPLOYMENT_TARGETS), DEFAULT_DEPLOYMENT_TARGET, help="the minimum OS the packages need"
    )
    calibration: tuple[Path, ...] = option(
        Files("a .npz from `edgeclip calibrate`, a folder of images or image files", check=_calibration_sources),
        (),
        help="w8a8: the calibration set (.npz), a folder of images, or image files",
    )
    batch_sizes: tuple[int, ...] | None = option(
        Ints(1, MAX_BATCH), help="enumerated batch sizes, e.g. 1,8,32 (default: any from 1 to 64)", metavar="LIST"
    )

    def check(self, precision: str) -> CoreMLOptions:
        if self.calibration and not (self.compression and self.compression.needs_calibration):
            raise UsageError("--calibration is used only by --compress w8a8: drop it, or ask for w8a8")
        comp = self.compression
        if comp is not None and comp.needs_calibration and not self.calibration:
            raise UsageError(
                f"--compress {comp.name} needs calibration images: pass --calibration calib.npz "
                f"(from `edgeclip calibrate`) or a FOLDER of images"
            )
        if comp is not None and comp.needs_calibration and self.deployment_target in ("iOS16", "macOS13"):
            raise UsageError(f"--compress {comp.name} needs --deployment-target iOS17/macOS14 or later")
        return self

    @property
    def compression(self) -> Compression | None:
        return COMPRESSIONS[self.compress] if self.compress else None


SPEC = TargetSpec(
    name="coreml",
    description="Core ML ML Program packages (.mlpackage) for iOS and macOS apps",
    precisions=("fp16", "fp32"),
    default_precision="fp16",
    file_suffix=".mlpackage",
    dynamic_batch=True,
    requires="macOS or iOS to run the packages (converting and weight compression run anywhere)",
    extra="coreml",
    platforms=("macOS", "iOS"),
    options_type=CoreMLOptions,
)


def parse_options(target_options: dict[str, Any], precision: str = "fp16") -> CoreMLOptions:
    """The CoreML options from strings or values by key, or a UsageError naming the bad value."""
    return parse_target_options(CoreMLOptions, SPEC.name, target_options, precision)


def validate_options(options: ExportOptions) -> ExportOptions:
    """Check what the options alone cannot (a calibration file, the platform) before the model loads; the parity
    floor follows the requested compression."""
    opts = options_of(options, CoreMLOptions)
    options = replace(options, target_options=opts)
    comp = opts.compression
    if comp is None:
        return options
    if opts.calibration and opts.calibration[0].suffix == ".npz":
        from edgeclip.calibration import load_calibration_set

        load_calibration_set(opts.calibration[0])  # a corrupt or foreign file fails here, before the model loads
    if comp.needs_macos and sys.platform != "darwin":
        raise RuntimeUnavailable(
            f"--compress {comp.name} calibrates by running the model, which CoreML does only on macOS "
            f"(this is {sys.platform}): use --compress int8 here, or export on a Mac"
        )
    return replace(options, min_cosine=min(options.min_cosine, comp.parity_floor))


# --- conversion ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep coremltools' progress bars and log chatter off the console for one call (restored afterwards)."""
    import logging

    logger = logging.getLogger("coremltools")
    handler = logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _import_coremltools():
    try:
        with _quiet():
            import coremltools
            import coremltools.optimize.coreml
    except ImportError:
        raise UsageError("the coreml target needs coremltools: pip install 'edgeclip[coreml]'") from None
    return coremltools


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class _Batch:
    """The batch sizes an input takes: a range (RangeDim) or a list (EnumeratedShapes; one size is fixed)."""

    kind: str  # "range" | "enumerated" | "fixed"
    sizes: tuple[int, ...]  # (min, max) for a range

    @classmethod
    def of(cls, sizes: tuple[int, ...] | None) -> _Batch:
        if sizes is None:
            return cls("range", DEFAULT_BATCH_RANGE)
        return cls("fixed" if len(sizes) == 1 else "enumerated", sizes)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "range":
            return {"kind": "range", "min": self.sizes[0], "max": self.sizes[1]}
        return {"kind": self.kind, "sizes": list(self.sizes)}

    def coreml_shape(self, ct, rest: tuple[int, ...]):
        if self.kind == "range":
            return (ct.RangeDim(lower_bound=self.sizes[0], upper_bound=self.sizes[1], default=self.sizes[0]), *rest)
        if self.kind == "fixed":
            return (self.sizes[0], *rest)
        return ct.EnumeratedShapes(shapes=[(n, *rest) for n in self.sizes], default=(self.sizes[0], *rest))


@dataclass(frozen=True)
class _PixelNormalization:
    """`pixels` input: ImageType does `scale * x + bias` per channel, then `channel_scale` (if any) in the model."""

    scale: float
    bias: tuple[float, float, float]
    channel_scale: tuple[float, float, float] | None

    @classmethod
    def of(cls, mean: tuple[float, float, float], std: tuple[float, float, float]) -> _PixelNormalization:
        (r, g, b), s = mean, std[0]
        if len(set(std)) == 1:
            return cls(1.0 / (255.0 * s), (-r / s, -g / s, -b / s), None)
        return cls(1.0 / 255.0, (-r, -g, -b), (1.0 / std[0], 1.0 / std[1], 1.0 / std[2]))

    def to_dict(self) -> dict[str, Any]:
        channel_scale = list(self.channel_scale) if self.channel_scale else None
        return {"scale": self.scale, "bias": list(self.bias), "channel_scale": channel_scale}


def _channel_scaled(encoder, channel_scale: tuple[float, float, float]):
    """The encoder behind a layer multiplying each input channel by a constant (the per-channel 1/std)."""
    import torch
    from torch import nn

    class ChannelScaledEncoder(nn.Module):
        channel_scale: torch.Tensor  # a buffer

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.register_buffer("channel_scale", torch.tensor(channel_scale, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.encoder(pixels * self.channel_scale)

    return ChannelScaledEncoder().eval()


@dataclass(frozen=True)
class _Plan:
    """One encoder to convert: the module, its example, the CoreML input and what the manifest records of it."""

    role: str
    module: Any
    example: Any
    input_type: Any
    input_spec: TensorSpec
    batch: _Batch
    normalization: _PixelNormalization | None = None

    @property
    def input_name(self) -> str:
        return self.input_spec.name


def _image_plan(ct, encoders: Encoders, opts: CoreMLOptions) -> _Plan:
    shape = tuple(int(d) for d in encoders.image_example.shape[1:])
    if opts.image_input == "tensor":
        batch = _Batch.of(opts.batch_sizes)
        name = INPUT_NAMES["tensor"]
        input_type = ct.TensorType(name=name, shape=batch.coreml_shape(ct, shape), dtype=np.float32)
        spec = TensorSpec(name, _manifest_shape(batch, shape), "float32")
        return _Plan("image", encoders.image, encoders.image_example, input_type, spec, batch)
    pre = encoders.preprocess
    if pre is None:
        raise ExportError("image input 'pixels' needs the model's preprocessing (mean/std) to fold into the model")
    if pre.channel_order != "RGB" or pre.layout != "NCHW":
        raise UsageError(f"image input 'pixels' takes RGB NCHW preprocessing, not {pre.channel_order} {pre.layout}")
    norm = _PixelNormalization.of(pre.mean, pre.std)
    module = _channel_scaled(encoders.image, norm.channel_scale) if norm.channel_scale else encoders.image
    name = INPUT_NAMES["pixels"]
    input_type = ct.ImageType(
        name=name, shape=(1, *shape), scale=norm.scale, bias=list(norm.bias), color_layout=ct.colorlayout.RGB
    )
    # A CoreML image input holds one image; apps batch with MLBatchProvider (coremltools: predict on a list).
    one = _Batch("fixed", (1,))
    return _Plan("image", module, encoders.image_example, input_type, TensorSpec(name, (1, *shape), "uint8"), one, norm)


def _text_plan(ct, encoders: Encoders, opts: CoreMLOptions) -> _Plan:
    import torch

    shape = tuple(int(d) for d in encoders.text_example.shape[1:])
    batch = _Batch.of(opts.batch_sizes)
    name = INPUT_NAMES["text"]
    input_type = ct.TensorType(name=name, shape=batch.coreml_shape(ct, shape), dtype=np.int32)
    spec = TensorSpec(name, _manifest_shape(batch, shape), "int32")
    return _Plan("text", encoders.text, encoders.text_example.to(torch.int32), input_type, spec, batch)


def _manifest_shape(batch: _Batch, rest: tuple[int, ...]) -> tuple[int | str, ...]:
    return (batch.sizes[0] if batch.kind == "fixed" else "batch", *rest)


def _export_program(plan: _Plan):
    """torch.export with the batch axis dynamic where the CoreML input is; ExportError names the encoder."""
    import torch

    example = plan.example
    if plan.batch.kind == "fixed":
        dynamic_shapes = None
        example = example[:1].expand(plan.batch.sizes[0], *example.shape[1:]).contiguous()
    else:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=max(plan.batch.sizes[-1], 2))},)
        example = example[:1].expand(2, *example.shape[1:]).contiguous()  # 2, not 1: a batch of 1 gets specialized
    try:
        with torch.no_grad():
            program = torch.export.export(plan.module, (example,), dynamic_shapes=dynamic_shapes, strict=False)
            return program.run_decompositions({})
    except Exception as e:  # torch.export raises many kinds (guards, data-dependent branches, unsupported calls)
        raise ExportError(
            f"torch.export cannot capture the {plan.role} encoder: {_first_line(e)}; try --target onnx"
        ) from None


_NODE_IN_ERROR = re.compile(r"(?:fx node|node|converting) '?([A-Za-z_][\w.]*)'?")


def _conversion_error(role: str, program, error: BaseException) -> ExportError:
    """The failing op and the module it sits in, from coremltools' message and torch.export's node metadata."""
    message = _first_line(error)
    nodes = {node.name: node for node in program.graph.nodes}
    for name in _NODE_IN_ERROR.findall(str(error)):
        node = nodes.get(name)
        if node is None:
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path, kind = stack[-1] if stack else ("<top>", "")
        op = getattr(node.target, "__name__", str(node.target))
        return ExportError(
            f"coremltools cannot convert op {op} of the {role} encoder, in module {path or '<top>'} "
            f"({kind.rsplit('.', 1)[-1]}): {message}; try --target onnx"
        )
    return ExportError(f"coremltools cannot convert the {role} encoder: {message}; try --target onnx")


def _compute_precision(ct, precision: str):
    if precision == "fp32":
        return ct.precision.FLOAT32
    # The final L2 norm sums squares: in fp32 a large pre-norm embedding cannot overflow fp16's 65504.
    return ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type != "reduce_l2_norm")


def _convert(ct, plan: _Plan, program, precision: str, deployment_target: str, compress: str | None):
    try:
        with _quiet():
            return ct.convert(
                program,
                convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, deployment_target),
                inputs=[plan.input_type],
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                compute_precision=_compute_precision(ct, precision),
                pass_pipeline=_pipeline(ct, compress),
                skip_model_load=True,
            )
    except Exception as e:  # coremltools raises NotImplementedError, ValueError, RuntimeError ... per op
        raise _conversion_error(plan.role, program, e) from None


# --- compression ---------------------------------------------------------------------------------------------


def _kmeans1d_palette(nbits: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """coremltools' k-means palette with its optimal 1-D solver forced for every tensor.

    In mode "kmeans" coremltools solves only fp16 tensors of 10,000+ values that way and hands the rest (small
    tensors, every fp32 tensor) to scikit-learn, which it does not install and which is slow on large tensors.
    """
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    def palette(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lut, indices = _get_kmeans_lookup_table_and_weight(nbits, weight, force_kmeans1d=True)
        return lut.astype(weight.dtype), indices.astype(np.uint8)

    return palette


def _weight_pass(cto, name: str) -> tuple[str, Any]:
    """The coremltools pass and op config that compress weights as `name` asks (w8a8's weights are int8)."""
    nbits = COMPRESSIONS[name].detail.get("nbits")
    if nbits is None:
        config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD
        )
        return "compression::linear_quantize_weights", config
    palette = _kmeans1d_palette(nbits)
    return "compression::palettize_weights", cto.OpPalettizerConfig(
        mode="custom", lut_function=palette, weight_threshold=WEIGHT_THRESHOLD
    )


def _pipeline(ct, compress: str | None):
    """coremltools' default passes, plus weight compression at the end (one pass over the program, not two)."""
    import coremltools.optimize.coreml as cto

    pipeline = ct.PassPipeline.DEFAULT  # a fresh pipeline on every access
    if compress is not None:
        name, config = _weight_pass(cto, compress)
        pipeline.append_pass(name)
        pipeline.set_options(name, {"config": cto.OptimizationConfig(global_config=config)})
    return pipeline


@dataclass(frozen=True)
class _Calibration:
    """W8A8's calibration pixels (normalized, N x 3 x H x W) and the manifest entry that names where they came from."""

    pixels: np.ndarray
    info: dict[str, Any]


def _calibration(sources: tuple[Path, ...], encoders: Encoders) -> _Calibration:
    """The calibration pixels for the model's preprocessing: a .npz (checked against it) or a folder, as every
    target reads them, or else the image files given, every one of them."""
    from edgeclip.runtimes.preprocess import preprocess

    spec = encoders.preprocess_spec()
    method = {"method": "coremltools linear_quantize_activations (linear symmetric int8)", "encoders": ["image"]}
    if len(sources) == 1 and (sources[0].suffix == ".npz" or sources[0].is_dir()):
        from edgeclip.calibration import resolve_calibration

        calib = resolve_calibration(sources[0], spec)
        return _Calibration(calib.pixels, {**method, "images": len(calib), "set": calib.describe()})
    import hashlib

    from edgeclip.runtimes.bundle import sha256_file

    digest = hashlib.sha256("".join(sorted(sha256_file(p) for p in sources)).encode()).hexdigest()
    pixels = preprocess(list(sources), spec)
    return _Calibration(pixels, {**method, "images": len(sources), "set_sha256": digest})


def _calibration_samples(plan: _Plan, pixels: np.ndarray, encoders: Encoders) -> list[dict[str, Any]]:
    """Calibration inputs in the form `MLModel.predict` takes: PIL images for `pixels`, else float arrays."""
    from edgeclip.runtimes.backends.coreml import pixels_to_images

    if plan.normalization is not None:
        pre = encoders.preprocess_spec()
        return [{plan.input_name: image} for image in pixels_to_images(pixels, pre.mean, pre.std)]
    return [{plan.input_name: pixels[i : i + 1]} for i in range(len(pixels))]


def _calibrated(ct, mlmodel, plan: _Plan, opts: CoreMLOptions, calib: _Calibration, encoders: Encoders, scratch: Path):
    """W8A8: activations calibrated on the user's images, then int8 weights; on a Mac, where the model can run."""
    import shutil

    import coremltools.optimize.coreml as cto

    if opts.compress is None:  # CoreMLOptions.check: only w8a8 asks for calibration
        raise ExportError("Core ML calibration is for --compress w8a8, and no compression was given")
    compress = opts.compress
    samples = _calibration_samples(plan, calib.pixels, encoders)
    try:
        with _quiet():
            mlmodel.save(str(scratch))
            loaded = ct.models.MLModel(str(scratch))  # compiled, so calibration can run it
            activation = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
            quantized = cto.linear_quantize_activations(loaded, activation, samples)
            _, weights = _weight_pass(cto, compress)
            return cto.linear_quantize_weights(quantized, cto.OptimizationConfig(global_config=weights))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- metadata ------------------------------------------------------------------------------------------------


def _metadata(plan: _Plan, encoders: Encoders, opts: CoreMLOptions, precision: str, embed_dim: int) -> dict[str, str]:
    """The manifest facts known at conversion time, as strings for `user_defined_metadata`."""
    facts: dict[str, Any] = {
        "role": plan.role,
        "model_id": encoders.model_id or "",
        "precision": precision,
        "compression": opts.compress or "none",
        "embed_dim": embed_dim,
        "input": plan.input_spec.to_dict(),
        "batch": plan.batch.to_dict(),
        "version": __version__,
    }
    if plan.role == "image":
        facts["image_input"] = _image_input_info(plan, opts)
        if encoders.preprocess is not None:
            facts["preprocess"] = encoders.preprocess.to_dict()
    elif encoders.tokenizer is not None:
        facts["tokenizer"] = encoders.tokenizer.to_dict()
    return {METADATA_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in facts.items()}


def _describe(mlmodel, plan: _Plan, encoders: Encoders, opts: CoreMLOptions, precision: str, embed_dim: int) -> None:
    """Fill what Xcode shows: description, author, license, version, input/output notes, edgeclip metadata."""
    model_id = encoders.model_id or "a CLIP model"
    mlmodel.short_description = (
        f"{plan.role.capitalize()} encoder of {model_id}: L2-normalized {embed_dim}-d CLIP embeddings. "
        f"Exported by edgeclip as part of a bundle ({precision}, {opts.compress or 'no compression'})."
    )
    mlmodel.author = f"edgeclip {__version__}"
    mlmodel.license = "Not set by edgeclip: the license of the source weights applies (see the bundle manifest)"
    mlmodel.version = model_id
    if plan.role == "text":
        n = plan.input_spec.shape[-1]
        note = f"Token ids [batch, {n}] int32 from the bundle's tokenizer.json (tokenizer in the manifest)"
    elif plan.normalization is not None:
        h, w = plan.input_spec.shape[2:]
        note = f"RGB image {w}x{h} (0-255), already resized and cropped as the manifest's preprocess says"
    else:
        h, w = plan.input_spec.shape[2:]
        note = f"Pixels [batch, 3, {h}, {w}] float32, resized, cropped and normalized as the manifest says"
    mlmodel.input_description[plan.input_name] = note
    mlmodel.output_description[OUTPUT_NAME] = f"L2-normalized embeddings [batch, {embed_dim}] float32"
    for key, value in _metadata(plan, encoders, opts, precision, embed_dim).items():
        mlmodel.user_defined_metadata[key] = value


# --- the target ----------------------------------------------------------------------------------------------


@register_target(SPEC, validate=validate_options)
def export(encoders: Encoders, out_dir: Path, options: ExportOptions) -> EncoderFiles:
    """Write image_encoder.mlpackage and text_encoder.mlpackage into `out_dir`."""
    import torch

    ct = _import_coremltools()
    opts = options_of(options, CoreMLOptions)
    plans = (_image_plan(ct, encoders, opts), _text_plan(ct, encoders, opts))
    calib = _calibration(opts.calibration, encoders) if opts.calibration else None
    files = {}
    for plan in plans:
        with torch.no_grad():
            embed_dim = int(plan.module(plan.example[:1]).shape[-1])
        program = _export_program(plan)
        # w8a8's image encoder is converted in float, then calibrated; everything else is compressed while
        # converting. The text encoder has no calibration data: under w8a8 it gets int8 weights.
        calibrate = opts.compression is not None and opts.compression.needs_calibration and plan.role == "image"
        mlmodel = _convert(
            ct, plan, program, options.precision, opts.deployment_target, None if calibrate else opts.compress
        )
        if calibrate:
            if calib is None:  # CoreMLOptions.check: w8a8 comes with calibration images
                raise UsageError(f"--compress {opts.compress} needs calibration images: pass --calibration")
            mlmodel = _calibrated(ct, mlmodel, plan, opts, calib, encoders, out_dir / ".image_float.mlpackage")
        _describe(mlmodel, plan, encoders, opts, options.precision, embed_dim)
        name = f"{plan.role}_encoder.mlpackage"
        with _quiet():
            mlmodel.save(str(out_dir / name))
        output = TensorSpec(OUTPUT_NAME, (plan.input_spec.shape[0], embed_dim), "float32")
        files[plan.role] = EncoderFile(file=name, inputs=(plan.input_spec,), outputs=(output,))
    return EncoderFiles(
        image=files["image"],
        text=files["text"],
        calibration=calib.info if calib else None,
        target_info={
            "format": "mlprogram",
            "minimum_deployment_target": opts.deployment_target,
            "compute_precision": options.precision,
            "compression": _compression_info(opts),
            "image_input": _image_input_info(plans[0], opts),
            "batch": {plan.role: plan.batch.to_dict() for plan in plans},
            "coremltools_version": ct.__version__,
            # coremltools warns when torch is newer than the newest it was tested with; the manifest keeps that.
            "coremltools_tested_torch_max": getattr(sys.modules.get("coremltools._deps"), "_TORCH_MAX_VERSION", None),
        },
    )


def _image_input_info(plan: _Plan, opts: CoreMLOptions) -> dict[str, Any]:
    """What an app must feed the image encoder: float pixels, or an RGB image and the normalization inside."""
    if plan.normalization is None:
        return {"kind": opts.image_input}
    return {"kind": opts.image_input, "color_layout": "RGB", "range": "0-255", **plan.normalization.to_dict()}


def _compression_info(opts: CoreMLOptions) -> dict[str, Any] | None:
    if opts.compression is None:
        return None
    info = {"name": opts.compress, **opts.compression.detail, "weight_threshold": WEIGHT_THRESHOLD}
    if opts.compression.needs_calibration:
        info.update(text_encoder="int8 weights (no text calibration data)")
    return info
