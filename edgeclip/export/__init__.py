"""Export: an open_clip / MobileCLIP checkpoint to a bundle (encoder files + manifest), with a parity report."""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip._version import __version__
from edgeclip.errors import BundleError, ExportError, RuntimeUnavailable, UsageError
from edgeclip.export.options import Encoders, ExportOptions
from edgeclip.export.target_options import TargetOptions
from edgeclip.export.targets import get_target, list_targets
from edgeclip.metrics.parity import PARITY_FLOORS, parity_shortfall
from edgeclip.runtimes.backends import Backend, RuntimeOptions, backend_for_target
from edgeclip.runtimes.bundle import sha256_path
from edgeclip.runtimes.manifest import MANIFEST_NAME, BundleManifest, EncoderSpec, SourceModel
from edgeclip.runtimes.placement import DEFAULT_MIN_DELEGATED, Placement, coverage_problem, placement_of

__all__ = ["ExportResult", "export_bundle", "list_targets"]

StepCallback = Callable[[str], None]
PARITY_REFERENCE = "pytorch fp32, eval mode, before reparameterization"


@dataclass(frozen=True)
class ExportResult:
    """The written bundle, its manifest and how long each step took (seconds)."""

    path: Path
    manifest: BundleManifest
    timings: dict[str, float] = field(default_factory=dict)


def _check_output(output: Path, force: bool) -> None:
    """Refuse an existing output unless --force, and even then unless it is provably an edgeclip bundle (or empty)."""
    if not (output.exists() or output.is_symlink()):
        return
    if not force:
        raise UsageError(f"output {output} exists: pass --force to overwrite it")
    problem = _not_a_bundle(output)
    if problem:
        raise UsageError(f"output {output} is not a bundle: it {problem}; refusing to replace it, even with --force")


def _not_a_bundle(output: Path) -> str | None:
    """Why `output` cannot be proven to be an edgeclip bundle (or an empty folder), or None when it can."""
    if output.is_symlink():
        return "is a symlink"
    if not output.is_dir():
        return "is a file"
    entries = sorted(p.name for p in output.iterdir())
    if not entries:
        return None
    if MANIFEST_NAME not in entries:
        return f"holds {_some(entries)} but no {MANIFEST_NAME}"
    try:
        manifest = BundleManifest.from_json((output / MANIFEST_NAME).read_text(encoding="utf-8"), MANIFEST_NAME)
    except (BundleError, OSError, UnicodeDecodeError, ValueError) as e:
        return f"has a {MANIFEST_NAME} that is not an edgeclip manifest ({e})"
    named = {
        MANIFEST_NAME,
        *(f.split("/")[0] for f in manifest.files()),
        *(f.split("/")[0] for f in manifest.checksums),
    }
    named.add("heads")
    other = [name for name in entries if name not in named]
    heads = output / "heads"
    if heads.is_symlink() or heads.is_file():
        other.append("heads (not a folder)")
    elif heads.is_dir():
        other += [f"heads/{p.name}" for p in sorted(heads.iterdir()) if p.suffix != ".npz" or not p.is_file()]
    if other:
        return f"also holds {_some(other)}, which no edgeclip bundle has"
    return None


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _file_checksums(staging: Path, encoder_specs: dict[str, EncoderSpec]) -> dict[str, str]:
    """sha256 of every file (or package folder) written into the bundle except the manifest itself."""
    known = {spec.file: spec.sha256 for spec in encoder_specs.values()}
    return {
        item.name: known.get(item.name) or sha256_path(item)
        for item in sorted(staging.iterdir())
        if item.name != MANIFEST_NAME
    }


def _make_staging_dir(output: Path) -> Path:
    """A temporary folder beside the output, so the final rename stays on one filesystem."""
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".{output.name}.partial-{time.time_ns()}"
        staging.mkdir()
    except OSError as e:
        raise ExportError(f"cannot write the output {output}: {e.strerror or e}") from None
    return staging


def _publish(staging: Path, output: Path) -> None:
    """Move the finished bundle into place; an old bundle is only removed once the new one is there."""
    old = None
    if output.exists() or output.is_symlink():
        old = output.parent / f".{output.name}.old-{time.time_ns()}"
        output.rename(old)
    try:
        staging.rename(output)
    except BaseException:
        if old is not None and not output.exists():
            old.rename(output)  # put the previous bundle back
        raise
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def _reparameterized_copy(model):
    """Eval-mode copy with MobileOne/RepMixer train-time branches folded; the caller's model is untouched."""
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model.eval(), inplace=False).eval()


def _software_versions() -> dict[str, str]:
    """Versions that decide the exported numbers and token ids (ftfy changes text cleaning between versions)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "open_clip_torch", "timm", "onnx", "onnxruntime", "tokenizers", "ftfy"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def _check_runs(encoders: Encoders, architecture: str, image_size: tuple[int, int]) -> None:
    """Run both encoders once in PyTorch so that a shape the model cannot take fails here, clearly."""
    import torch

    for role, module, example in (
        ("image", encoders.image, encoders.image_example),
        ("text", encoders.text, encoders.text_example),
    ):
        try:
            with torch.no_grad():
                module(example)
        except Exception as e:  # any failure inside the model's forward; reported as one line
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = f" at image size {image_size[0]}x{image_size[1]}" if role == "image" else ""
            raise ExportError(f"{architecture} {role} encoder cannot run{where}: {detail}") from None


def _check_placement(
    runners: Mapping[str, Backend | None], backend: str, require: bool, min_delegated: float
) -> dict[str, Any]:
    """Each written encoder's op placement as its runner reports it, for the manifest; warn or fail on low coverage."""
    recorded: dict[str, Any] = {}
    problems = []
    for role, runner in runners.items():
        try:
            found: Placement | None = placement_of(runner) if runner is not None else None
        except RuntimeUnavailable as e:
            found, why = None, str(e)
        else:
            why = f"backend {backend} does not report op placement" if runner is not None else "it cannot run here"
        if found is None:
            if require:
                raise ExportError(
                    f"--require-delegate: the {role} encoder's delegate coverage cannot be checked: {why}"
                )
            continue
        recorded[role] = found.to_dict()
        problem = coverage_problem(role, found, min_delegated)
        if problem:
            problems.append(problem)
    if problems and require:
        raise ExportError("--require-delegate: " + "; ".join(problems))
    for problem in problems:
        warnings.warn(f"low delegate coverage: {problem}", stacklevel=3)
    return recorded


def export_bundle(
    model: str,
    pretrained: str | None = None,
    output: str | Path = "model.edgeclip",
    *,
    target: str = "onnx",
    precision: str | None = None,
    random_init: bool = False,
    preprocess: dict[str, Any] | None = None,
    opset: int | None = None,
    target_options: TargetOptions | Mapping[str, Any] | None = None,
    force: bool = False,
    require_delegate: bool = False,
    min_delegated: float = DEFAULT_MIN_DELEGATED,
    golden: bool = True,
    on_step: StepCallback | None = None,
) -> ExportResult:
    """Load, reparameterize, split and convert a CLIP model, check parity, and write a bundle atomically.

    `precision` None means the target's default. `target_options` is the target's typed options object (e.g.
    `OnnxOptions(dynamic=True)`), or strings or values by key (`{"dynamic": True}`) parsed by the same one parser
    as CLI flags and bench items; either is checked (see `edgeclip targets`) before the model is loaded.

    After parity, the backend that ran each written file reports its op placement (recorded in the manifest): an
    encoder whose delegate takes less than `min_delegated` of its ops warns naming the ops left outside, or fails
    the export with `require_delegate` (which also fails where the placement cannot be told). `golden` writes the
    known-answer set for app ports (golden/, docs/ports.md).
    """
    import torch

    from edgeclip.export import parity
    from edgeclip.export.tokenizer import write_tokenizer
    from edgeclip.models.encoders import ImageEncoder, TextEncoder
    from edgeclip.models.loading import check_architecture, load_model
    from edgeclip.models.preprocess import preprocess_spec_for
    from edgeclip.runtimes.preprocess import preprocess as preprocess_images
    from edgeclip.runtimes.tokenizer import Tokenizer

    step = on_step or (lambda _msg: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    # Validate everything the user asked for before any heavy work.
    exporter = get_target(target)
    precision = exporter.precision(precision)
    if not 0.0 <= min_delegated <= 1.0:
        raise UsageError(f"min_delegated is {min_delegated}: expected a fraction from 0 to 1")
    architecture = check_architecture(model)
    output = Path(output)
    _check_output(output, force)
    preprocess_spec, preprocess_source = preprocess_spec_for(architecture, pretrained, preprocess)
    options = ExportOptions(
        target=target,
        precision=precision,
        opset=opset,
        min_cosine=PARITY_FLOORS.get(precision, PARITY_FLOORS["fp32"]),
        target_options=target_options,
    )
    options = exporter.validate_options(options)
    used = options.target_options

    staging = _make_staging_dir(output)
    try:
        step(f"loading {architecture} ({'random weights' if random_init else pretrained})")
        loaded = load_model(architecture, pretrained, random_init=random_init)
        source = SourceModel(
            architecture=architecture,
            pretrained=Path(pretrained).name if pretrained and loaded.checkpoint_sha256 else pretrained,
            checkpoint_sha256=loaded.checkpoint_sha256,
            weights_sha256=loaded.weights_sha256(),
            random_init=random_init,
        )
        lap("load")

        step("writing tokenizer data")
        tokenizer_spec = write_tokenizer(architecture, staging / "tokenizer.json")
        tokenizer = Tokenizer.from_file(staging / "tokenizer.json", tokenizer_spec)

        step("reparameterizing (folding train-time branches)")
        deploy = _reparameterized_copy(loaded.model)
        named = parity.named_sample_images()
        pixels = preprocess_images([image for _, image in named], preprocess_spec)
        sample_names = {"image": [name for name, _ in named], "text": parity.sample_text_names()}
        tokens = tokenizer.encode(list(parity.SAMPLE_TEXTS))
        encoders = Encoders(
            image=ImageEncoder(deploy).eval(),
            text=TextEncoder(deploy).eval(),
            image_example=torch.from_numpy(pixels[:2]),
            text_example=torch.from_numpy(tokens[:2]),
            preprocess=preprocess_spec,
            tokenizer=tokenizer_spec,
            model_id=source.model_id,
        )
        _check_runs(encoders, architecture, preprocess_spec.image_size)
        lap("reparameterize")

        step(f"exporting encoders to {target}")
        files = exporter.export(encoders, staging, options)
        lap("convert")

        step("measuring parity against PyTorch")
        backend = backend_for_target(target)
        reference = {"image": ImageEncoder(loaded.model).eval(), "text": TextEncoder(loaded.model).eval()}
        batches = {"image": pixels, "text": tokens}
        encoder_specs = {}
        parity_skipped = None
        runners: dict[str, Backend | None] = {}
        for role, file in (("image", files.image), ("text", files.text)):
            draft = EncoderSpec(file.file, sha256_path(staging / file.file), file.inputs, file.outputs)
            runners[role] = None
            try:
                runner = backend.factory(staging / file.file, draft, RuntimeOptions())
            except RuntimeUnavailable as e:
                # The target's runtime cannot run here (e.g. CoreML on Linux): say so in the manifest.
                parity_skipped = str(e)
                encoder_specs[role] = draft
                continue
            runners[role] = runner
            measured = parity.measure(reference[role], runner, file.inputs[0].name, batches[role], PARITY_REFERENCE)
            report = measured.report
            missed = parity_shortfall(report.min_cosine, report.mean_cosine, precision, options.min_cosine)
            if missed:
                raise ExportError(
                    f"{role} encoder parity failed: {missed} over {report.samples} samples (max abs diff "
                    f"{report.max_abs_diff:.2e}; furthest: {measured.worst(sample_names[role])})"
                )
            encoder_specs[role] = EncoderSpec(draft.file, draft.sha256, draft.inputs, draft.outputs, report)
        placement = _check_placement(runners, backend.name, require_delegate, min_delegated)
        lap("parity")

        if golden:
            from edgeclip.export.golden import write_golden

            step("writing golden files for app ports")
            write_golden(staging, encoders, files, tokenizer, runners, backend.name)
            lap("golden")

        with torch.no_grad():
            embed_dim = int(encoders.image(encoders.image_example[:1]).shape[-1])
        manifest = BundleManifest(
            source=source,
            target=target,
            precision=precision,
            embed_dim=embed_dim,
            logit_scale=float(np.exp(loaded.model.logit_scale.detach().float().numpy()).item()),
            encoders=encoder_specs,
            preprocess=preprocess_spec,
            preprocess_source=preprocess_source,
            tokenizer=tokenizer_spec,
            calibration=files.calibration,
            edgeclip_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            target_info={
                **files.target_info,
                **({"options": used.to_dict()} if isinstance(used, TargetOptions) and used.to_dict() else {}),
                "exported_with": _software_versions(),
                **({"parity_skipped": parity_skipped} if parity_skipped else {}),
                **({"placement": placement} if placement else {}),
            },
            checksums=_file_checksums(staging, encoder_specs),
        )
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        _publish(staging, output)
        lap("write")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    step(f"wrote {output}")
    return ExportResult(output, manifest, timings)
