"""`edgeclip bench`: export a model to every requested target/precision (or take bundles), measure each on this
device, check parity against a reference, and gather it all into one BenchResult.

Targets and precisions come from the export target registry, so a new target or precision is benchmarked without
a change here; ``torch`` names the PyTorch eager baseline. A target that cannot be exported becomes an
``export_failed`` row, one that cannot run here (CoreML on Linux) a ``failed_checks`` row: the rest is still measured.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip._version import __version__
from edgeclip.bench.accuracy import (
    SHAPES_EVAL,
    read_labelled_folder,
    write_shapes_eval,
)
from edgeclip.bench.device import DeviceInfo, collect_device_info
from edgeclip.bench.results import BenchEntry, BenchResult, ModelIdentity, Parity
from edgeclip.bench.worker import MeasureRequest, measure
from edgeclip.errors import EdgeclipError, RuntimeUnavailable, UsageError
from edgeclip.metrics.parity import cosine_stats, parity_floor, parity_shortfall

if TYPE_CHECKING:
    from edgeclip.export.target_options import TargetOptions

EAGER = "torch"  # the PyTorch eager baseline's name in --targets
ALL = "all"  # every registered target x precision, plus the eager baseline
DEFAULT_TEMPLATES = "simple"
StepCallback = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    """One row to produce: a target/precision to export and run, the eager baseline, or a given bundle folder."""

    name: str
    kind: str  # "bundle" or "eager"
    target: str
    precision: str
    path: Path | None = None  # a given bundle folder
    export: bool = False  # export the model to this target/precision first
    options: tuple[tuple[str, Any], ...] = ()  # the target options as written in the item, e.g. (("dynamic", True),)
    invalid: str | None = None  # why the target refuses this request (rows that `all` expands to): an ❌ row
    target_options: TargetOptions | None = None  # `options` parsed by the target (the typed object the export gets)


def _split_options(item: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """`onnx:int8+dynamic+max_cosine_drop=0.02` -> ("onnx:int8", (("dynamic", True), ("max_cosine_drop", "0.02")))."""
    base, *parts = item.split("+")
    options = []
    for part in parts:
        key, sep, value = part.partition("=")
        if not key.strip() or (sep and not value.strip()):
            raise UsageError(f"--targets item {item!r}: target options read +KEY or +KEY=VALUE, e.g. onnx:int8+dynamic")
        options.append((key.strip(), value.strip() if sep else True))
    return base.strip(), tuple(options)


def _check_export_request(cand: Candidate) -> Candidate:
    """The target's own check of precision and options, before any model is loaded: the candidate with its typed
    options (and, where this machine cannot build it, why: an ❌ row), or a UsageError naming the problem."""
    from edgeclip.export.options import ExportOptions
    from edgeclip.export.targets import get_target

    target = get_target(cand.target)
    parsed = target.parse_options(dict(cand.options), cand.precision)  # the one parser: the CLI flags use it too
    cand = replace(cand, target_options=parsed)
    try:
        target.validate_options(ExportOptions(target=cand.target, precision=cand.precision, target_options=parsed))
    except RuntimeUnavailable as e:  # the request is right, this machine cannot build it (TensorRT without a GPU)
        return replace(cand, invalid=str(e))
    return cand


def parse_targets(items: Sequence[str]) -> list[Candidate]:
    """`onnx:fp32`, `coreml` (its default precision), `onnx:int8+dynamic` (with target options), `torch`, or `all`.

    Names, precisions and options are checked against the target registry before any work: a bad item is a
    UsageError. `all` expands to every registered target x precision with default options; one of those that its
    target refuses without options (e.g. int8 needing calibration) becomes an ❌ row saying what to ask for. A target
    that cannot be built on this machine (RuntimeUnavailable: TensorRT without an NVIDIA GPU) is an ❌ row with why.
    """
    from edgeclip.export.targets import get_target, list_targets

    candidates: list[Candidate] = []
    for raw in items:
        item, options = _split_options(raw.strip())
        if item == ALL and not options:
            for spec in list_targets():
                for p in spec.precisions:
                    cand = Candidate(f"{spec.name}:{p}", "bundle", spec.name, p, export=True)
                    try:
                        cand = _check_export_request(cand)
                    except UsageError as e:
                        keys = ", ".join(spec.options)
                        hint = f" (ask for it as {cand.name}+KEY[=VALUE]; {spec.name} options: {keys})"
                        cand = replace(cand, invalid=f"{e}{hint}")
                    candidates.append(cand)
            candidates.append(Candidate(EAGER, "eager", EAGER, "fp32"))
        elif item == EAGER and not options:
            candidates.append(Candidate(EAGER, "eager", EAGER, "fp32"))
        else:
            name, _, precision = item.partition(":")
            if not name:
                raise UsageError(f"--targets item {raw!r} is empty: expected TARGET[:PRECISION], {EAGER} or {ALL}")
            spec = get_target(name).spec
            precision = precision or spec.default_precision or spec.precisions[0]  # TargetSpec fills the default
            if precision not in spec.precisions:
                raise UsageError(
                    f"target {name!r} has no precision {precision!r}: expected one of {', '.join(spec.precisions)}"
                )
            # A file option is named by its file name, so the same row matches across machines and folders.
            label = f"{name}:{precision}" + "".join(
                f"+{k}" if v is True else f"+{k}={PurePath(str(v)).name or v}" for k, v in options
            )
            cand = Candidate(label, "bundle", name, precision, export=True, options=options)
            try:
                cand = _check_export_request(cand)
            except UsageError as e:
                keys = ", ".join(spec.options) or "none"
                raise UsageError(
                    f"--targets {label}: {e} (target options go in the item: "
                    f"{name}:{precision}+KEY[=VALUE]; {name} takes {keys})"
                ) from None
            candidates.append(cand)
    unique: list[Candidate] = []
    for cand in candidates:  # a row asked for twice is measured once, where first asked for
        if cand.name not in {u.name for u in unique}:
            unique.append(cand)
    if not unique:
        raise UsageError(f"--targets is empty: expected TARGET[:PRECISION] items, {EAGER} or {ALL}")
    return unique


def bundle_candidates(paths: Sequence[str | Path]) -> list[Candidate]:
    """A row per given bundle folder, named after the folder and what its manifest says it holds."""
    from edgeclip.runtimes.manifest import MANIFEST_NAME, BundleManifest

    candidates: list[Candidate] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise UsageError(
                f"bundle {path} {'is not a folder' if path.exists() else 'does not exist'}: "
                "expected a bundle folder written by `edgeclip export`"
            )
        target, precision = "?", "?"
        try:  # a bundle whose manifest cannot be read still gets a row, with the reason, when it is measured
            manifest = BundleManifest.from_json((path / MANIFEST_NAME).read_text(encoding="utf-8"), str(path))
            target, precision = manifest.target, manifest.precision
        except (OSError, UnicodeDecodeError, EdgeclipError):
            pass
        name = f"{path.name} ({target}:{precision})"
        taken = {c.name for c in candidates}
        n = 2
        while name in taken:
            name, n = f"{path.name} ({target}:{precision}) #{n}", n + 1
        candidates.append(Candidate(name, "bundle", target, precision, path=path))
    return candidates


def run_bench(
    *,
    model: str | None = None,
    pretrained: str | None = None,
    random_init: bool = False,
    targets: Sequence[str] | None = None,
    bundles: Sequence[str | Path] = (),
    batch_sizes: Sequence[int] = (1,),
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    backend: str | None = None,
    precision_hint: str | None = None,
    dataset: str | Path | None = None,
    eval_images: int = 200,
    templates: str | Sequence[str] = DEFAULT_TEMPLATES,
    reference: str | None = None,
    label: str | None = None,
    device_name: str | None = None,
    bundle_dir: str | Path | None = None,
    isolate: bool = True,
    verify: bool = True,
    on_step: StepCallback | None = None,
) -> BenchResult:
    """Benchmark the given `bundles` and/or a `model` exported to `targets` (with its PyTorch eager baseline) here.

    `targets` defaults to every target and precision (`all`) for a model alone, and to the eager baseline only
    (`torch`) when bundles are given too: that measures existing bundles against PyTorch without exporting again.

    Each row is measured in a fresh process when `isolate` (cold start and peak memory then belong to it alone).
    `verify=False` skips the sha256 check of each bundle's files as it loads (as `--no-verify` does).
    `reference` names the row parity is measured against (default: the eager baseline, else the first fp32 row).
    `backend` and `precision_hint` are passed to every bundle row's `load_bundle` (e.g. "auto"; None: each
    bundle's own backend); each row's runtime then says what ran and why it was picked.
    """
    step = on_step or (lambda _msg: None)
    batch_sizes = _check_settings(model, bundles, targets, batch_sizes, runs, warmup, eval_images, threads)
    device = collect_device_info(device_name)
    candidates = bundle_candidates(bundles)
    if model is not None:
        from edgeclip.models.loading import check_architecture

        model = check_architecture(model)
        if random_init == bool(pretrained):
            raise UsageError("give --pretrained FILE or --random-init (one of them) with --model")
        # With bundles, the model adds the PyTorch eager baseline unless --targets asks for more.
        candidates += parse_targets(list(targets) if targets else [EAGER if bundles else ALL])
    if reference is not None and reference not in {c.name for c in candidates}:
        if model is not None:
            names = ", ".join(c.name for c in candidates)
            raise UsageError(f"--reference {reference!r} is not one of the rows: {names}")
        candidates += [c for c in bundle_candidates([reference]) if c.path not in {x.path for x in candidates}]
        reference = next(c.name for c in candidates if c.path == Path(reference))
    template_arg = templates if isinstance(templates, str) else tuple(templates)

    work = Path(tempfile.mkdtemp(prefix="edgeclip-bench-"))
    try:
        if dataset is None:
            folder, dataset_name = write_shapes_eval(work / SHAPES_EVAL, eval_images), SHAPES_EVAL
        else:
            folder, dataset_name = Path(dataset), Path(dataset).name
        data = read_labelled_folder(folder, dataset_name)
        exports = Path(bundle_dir) if bundle_dir is not None else work / "bundles"
        entries, embeddings = [], {}
        for i, cand in enumerate(candidates):
            entry: BenchEntry | None = None
            source: dict[str, Any] = {}  # what the row's subject opens: set below for every row measured
            runtime = {"verify": verify, "backend": backend, "precision_hint": precision_hint}
            export_s = None
            if cand.kind == "eager":
                source = {"architecture": model, "pretrained": pretrained, "random_init": random_init}
            elif cand.invalid:
                entry = BenchEntry(
                    cand.name,
                    cand.kind,
                    "export_failed",
                    cand.target,
                    cand.precision,
                    reason=cand.invalid,
                    model=ModelIdentity(_model_of(cand, model), None, pretrained, random_init),
                )
            elif cand.export:
                step(f"exporting {cand.name}")
                out = exports / f"{model}.{re.sub(r'[^A-Za-z0-9._=-]+', '-', cand.name)}.edgeclip"
                started = time.perf_counter()
                entry = _export(_model_of(cand, model), pretrained, random_init, cand, out)
                export_s = round(time.perf_counter() - started, 2)
                source = {"path": str(out), **runtime}
            else:
                source = {"path": str(cand.path), **runtime}
            if entry is None:
                step(f"measuring {cand.name}")
                request = MeasureRequest(
                    name=cand.name,
                    kind=cand.kind,
                    source=source,
                    target=cand.target,
                    precision=cand.precision,
                    batch_sizes=batch_sizes,
                    runs=runs,
                    warmup=warmup,
                    dataset=str(folder),
                    dataset_name=dataset_name,
                    templates=template_arg,
                    embeddings=str(work / f"{i}.embeddings.npz"),
                    threads=threads,
                    providers=tuple(providers) if providers else None,
                )
                entry = _measure_in_child(request, work, i) if isolate else measure(request)
                if entry.status == "ok":
                    embeddings[cand.name] = request.embeddings
            entries.append(replace(entry, export_s=export_s))
        reference = _choose_reference(entries, reference)
        entries = _check_parity(entries, embeddings, reference)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    settings: dict[str, Any] = {
        "mode": "+".join(m for m, on in (("bundles", bool(bundles)), ("model", model is not None)) if on),
        "batch_sizes": list(batch_sizes),
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "providers": list(providers) if providers else None,
        "backend": backend,
        "precision_hint": precision_hint,
        "isolated": isolate,
        "reference": reference,
        "dataset": {
            "name": dataset_name,
            "path": None if dataset is None else str(dataset),
            "images": len(data.paths),
            "classes": len(data.classes),
            "templates": template_arg if isinstance(template_arg, str) else list(template_arg),
        },
    }
    return BenchResult(
        label=label or default_label(device, threads),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        edgeclip_version=__version__,
        device=device,
        settings=settings,
        entries=tuple(entries),
    )


def default_label(device: DeviceInfo, threads: int | None) -> str:
    """How reports name a run unless told: the device and its thread setting."""
    return f"{device.name} · {threads or 'default'} threads"


def _check_settings(
    model: str | None,
    bundles: Sequence[str | Path],
    targets: Sequence[str] | None,
    batch_sizes: Sequence[int],
    runs: int,
    warmup: int,
    eval_images: int,
    threads: int | None,
) -> tuple[int, ...]:
    if model is None and not bundles:
        raise UsageError("give bundle folders or --model NAME to benchmark")
    if targets and model is None:
        raise UsageError("--targets chooses what --model is exported to: bundles are measured as they are")
    sizes = tuple(sorted(set(int(b) for b in batch_sizes)))
    if not sizes or min(sizes) < 1:
        raise UsageError(f"batch sizes {list(batch_sizes)}: expected whole numbers >= 1, e.g. 1,8")
    if runs < 1 or warmup < 0:
        raise UsageError(f"--runs {runs} and --warmup {warmup}: expected runs >= 1 and warmup >= 0")
    if eval_images < 1:
        raise UsageError(f"--eval-images {eval_images}: expected at least 1")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: expected a positive number")
    return sizes


def _model_of(cand: Candidate, model: str | None) -> str:
    """The --model a row exports (rows to export come from --targets, which needs --model)."""
    if model is None:
        raise UsageError(f"row {cand.name} exports a model: give --model NAME")
    return model


def _export(model: str, pretrained: str | None, random_init: bool, cand: Candidate, out: Path) -> BenchEntry | None:
    """Export one target/precision; None when it worked, else an `export_failed` entry with the reason."""
    from edgeclip.export import export_bundle

    try:
        export_bundle(
            model,
            pretrained,
            out,
            target=cand.target,
            precision=cand.precision,
            random_init=random_init,
            target_options=cand.target_options if cand.target_options is not None else dict(cand.options),
            force=True,
        )
    except Exception as e:  # any export failure (ours, or a converter's own) is this row's reason; the run goes on
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = text if isinstance(e, EdgeclipError) else f"{type(e).__name__}: {text}".rstrip(": ")
        return BenchEntry(
            cand.name,
            cand.kind,
            "export_failed",
            cand.target,
            cand.precision,
            reason=reason,
            model=ModelIdentity(model, None, pretrained, random_init),
        )
    return None


def _measure_in_child(request: MeasureRequest, work: Path, index: int) -> BenchEntry:
    """Measure in a fresh Python process; a worker that dies gives a `failed_checks` entry with its last words."""
    import json

    request_path, out_path = work / f"{index}.request.json", work / f"{index}.entry.json"
    request_path.write_text(json.dumps(request.to_dict()), encoding="utf-8")
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "edgeclip.bench.worker", str(request_path), str(out_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode == 0 and out_path.is_file():
        return BenchEntry.from_dict(json.loads(out_path.read_text(encoding="utf-8")), f"worker {request.name}")
    if proc.returncode < 0:  # a signal: SIGKILL is most often the out-of-memory killer
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "a signal"
        why = f"benchmark worker was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        last = next((line for line in reversed(proc.stderr.strip().splitlines()) if line.strip()), "no output")
        why = f"benchmark worker exited with code {proc.returncode}: {last.strip()}"
    return BenchEntry(request.name, request.kind, "failed_checks", request.target, request.precision, reason=why)


def _choose_reference(entries: Sequence[BenchEntry], reference: str | None) -> str | None:
    """The row parity is measured against: the one asked for, else the eager baseline, else the first fp32 row."""
    ran = [e for e in entries if e.status == "ok"]
    if reference is not None:
        return reference
    chosen = next((e for e in ran if e.kind == "eager"), None) or next((e for e in ran if e.precision == "fp32"), None)
    return chosen.name if chosen else None


def _check_parity(entries: list[BenchEntry], embeddings: dict[str, str], reference: str | None) -> list[BenchEntry]:
    """Cosine of each row's embeddings to the reference's (same weights only); below the precision's floor fails."""
    if reference is None or reference not in embeddings:
        return entries
    ref_entry = next(e for e in entries if e.name == reference)
    ref = np.load(embeddings[reference])
    out = []
    for entry in entries:
        if entry.name == reference:
            out.append(replace(entry, baseline=True))
            continue
        same_weights = entry.model and ref_entry.model and entry.model.model_id == ref_entry.model.model_id
        if entry.name not in embeddings or not same_weights:
            out.append(entry)
            continue
        own = np.load(embeddings[entry.name])
        floor = parity_floor(entry.precision)
        parity = Parity(
            reference,
            cosine_stats(ref["image"], own["image"]).rounded(8),
            cosine_stats(ref["text"], own["text"]).rounded(8),
            floor,
        )
        entry = replace(entry, parity=parity)
        missed = {
            role: parity_shortfall(stats.min, stats.mean, entry.precision)
            for role, stats in (("image", parity.image), ("text", parity.text))
        }
        role = next((r for r, m in missed.items() if m), None)
        if role is not None:
            entry = replace(
                entry,
                status="failed_checks",
                reason=f"{role} encoder parity: {missed[role]} to {reference} (the {entry.precision} floor)",
            )
        out.append(entry)
    return out
