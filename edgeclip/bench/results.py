"""The benchmark results file: the farm contract. Any device that runs `edgeclip bench` writes one; `bench report`
and `bench compare` read any number of them.

Schema ``edgeclip-bench-results``, version ``MAJOR.MINOR``: a minor bump only adds optional fields (older readers
ignore them); a major bump breaks readers, so a reader refuses any other major version. Layout (JSON object)::

    schema           "edgeclip-bench-results"
    schema_version   "1.0"
    created          ISO 8601 UTC time the run finished
    edgeclip_version the edgeclip that measured
    label            how reports name this run (default "<device name> · <threads> threads")
    device           DeviceInfo: name, system, os_release, platform, machine, cpu_model, board, cpu_logical,
                     cpu_physical, cpu_usable, isa [avx2, avx512_vnni, neon, dotprod, ...], memory_total_mb,
                     gpus [{name, driver, memory_mb}], onnxruntime_providers, python, versions {package: version},
                     load_average [1, 5, 15 min] when the run started (other work on the machine)
    settings         mode ("bundles", "model" or "bundles+model"), batch_sizes, runs, warmup, threads (null: the
                     runtime's default), providers, isolated (each entry measured in its own process),
                     reference (the row parity compares against), dataset {name, path, images, classes, templates}
    entries          one per target/precision or bundle:
      name           unique in the file: "onnx:fp32", "onnx:int8+dynamic" (target options after +), "torch",
                     or "<bundle folder> (<target>:<precision>)"; `bench compare` matches rows by name
      kind           "bundle" (an exported bundle through its runtime) or "eager" (PyTorch, the baseline)
      status         "ok" (ran, checks passed) | "failed_checks" (exported, but cannot run here or failed parity)
                     | "export_failed"
      reason         why, for any status but "ok"
      target, precision, runtime ("onnxruntime 1.32.0 CPUExecutionProvider", "torch 2.5.1 eager, 2 threads")
      baseline       true for the row others are compared with (the PyTorch eager row where there is one)
      model          {architecture, model_id, pretrained, random_init}
      bundle         {path, format_version, edgeclip_version, created, sha256 {role: hex}, target_info} or null
      size_bytes     {image, text}: encoder files (eager: checkpoint or parameter bytes, under "model")
      latency        {stage: [stats per batch]}; stages "image" (encoder, preprocessed input), "text" (encoder,
                     token ids), "end_to_end" (decoded RGB image -> preprocessing -> encoder -> class
                     probabilities); stats {batch, count, min_ms, p50_ms, p90_ms, p99_ms, mean_ms,
                     throughput_per_s = batch / p50}
      cold_start_ms  {image: load to first image result, text: then to first text result, total}
      memory_mb      {before_load: resident memory after imports, peak: peak resident memory}
      accuracy       {dataset, images, classes, top1} zero-shot top-1 (0..1)
      parity         {reference, floor, image {samples, mean, p1, min}, text {...}} cosine to the reference
      export_s       seconds the export took (bundles exported by this run)
      search         (1.1, optional; rows of `edgeclip bench search`) SearchFigures: task ("index" or "query"),
                     method ("pipeline", "encoder only", "exact" or an approximate index such as "usearch"),
                     entries (photos indexed, or vectors searched), dim, storage, images_per_s and
                     encoder_images_per_s (index: the whole pipeline, and the image encoder alone on preprocessed
                     batches, same backend), latency (query: LatencyStats of one query at a time, batch 1),
                     recall_at_10 (query: against exact search)
      placement      (1.2, optional; bundle rows) {role: Placement.to_dict()} as the row's backend reported it:
                     backend, delegate, total_ops, delegated_ops, fraction, pieces, fallback {op: count}, note; or
                     {role: {"unavailable": why}} where the backend cannot tell
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeclip.bench.device import DeviceInfo
from edgeclip.errors import ResultsError
from edgeclip.metrics.parity import CosineStats
from edgeclip.runtimes.checksums import umask_mode

SCHEMA = "edgeclip-bench-results"
SCHEMA_VERSION = "1.2"
STATUSES = ("ok", "failed_checks", "export_failed")
STAGES = ("image", "text", "end_to_end")
KINDS = ("bundle", "eager")


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ResultsError(f"{where} is {type(data).__name__}: expected an object")
    if key not in data:
        raise ResultsError(f"{where} lacks the field {key!r}")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ResultsError(f"{where}.{key} is {value!r}: expected {'/'.join(k.__name__ for k in kinds)}")
    return value


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    return float(_require(data, key, (int, float), where))


def _optional(data: Mapping[str, Any], key: str) -> Any:
    return data.get(key) if isinstance(data, Mapping) else None


@dataclass(frozen=True)
class LatencyStats:
    """SingleStream latency of one stage at one batch size: queries one after another, after a warm-up."""

    batch: int
    count: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def throughput_per_s(self) -> float:
        """Items per second at the median: batch / p50."""
        return self.batch * 1000.0 / self.p50_ms if self.p50_ms > 0 else float("inf")

    def stat(self, name: str) -> float:
        """A statistic by name: min, p50, p90, p99 or mean (milliseconds)."""
        return float(getattr(self, f"{name}_ms"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "count": self.count,
            "min_ms": self.min_ms,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "throughput_per_s": round(self.throughput_per_s, 3),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> LatencyStats:
        return cls(
            batch=_require(data, "batch", int, where),
            count=_require(data, "count", int, where),
            **{k: _number(data, k, where) for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms")},
        )


def _cosine_stats(data: Mapping[str, Any], where: str) -> CosineStats:
    return CosineStats(
        _require(data, "samples", int, where),
        _number(data, "mean", where),
        _number(data, "p1", where),
        _number(data, "min", where),
    )


@dataclass(frozen=True)
class Parity:
    """Cosine to a reference (PyTorch eager or an fp32 bundle) per encoder, and the floor it was held to."""

    reference: str
    image: CosineStats
    text: CosineStats
    # the cosine the worst input of this precision must reach (the mean is held to metrics.parity.mean_floor too);
    # None: not checked
    floor: float | None = None

    @property
    def worst_p1(self) -> float:
        return min(self.image.p1, self.text.p1)

    @property
    def worst_min(self) -> float:
        return min(self.image.min, self.text.min)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "floor": self.floor,
            "image": self.image.to_dict(),
            "text": self.text.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Parity:
        floor = _optional(data, "floor")
        return cls(
            _require(data, "reference", str, where),
            _cosine_stats(_require(data, "image", dict, where), f"{where}.image"),
            _cosine_stats(_require(data, "text", dict, where), f"{where}.text"),
            float(floor) if isinstance(floor, (int, float)) else None,
        )


@dataclass(frozen=True)
class Accuracy:
    """Zero-shot top-1 (0..1) on a labelled image folder, prompts from labels x templates."""

    dataset: str
    images: int
    classes: int
    top1: float

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "images": self.images, "classes": self.classes, "top1": self.top1}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Accuracy:
        return cls(
            _require(data, "dataset", str, where),
            _require(data, "images", int, where),
            _require(data, "classes", int, where),
            _number(data, "top1", where),
        )


@dataclass(frozen=True)
class ModelIdentity:
    """Which model an entry is: architecture and the weights' identity (as in the bundle manifest)."""

    architecture: str
    model_id: str | None = None
    pretrained: str | None = None
    random_init: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "model_id": self.model_id,
            "pretrained": self.pretrained,
            "random_init": self.random_init,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ModelIdentity:
        return cls(
            _require(data, "architecture", str, where),
            _optional(data, "model_id"),
            _optional(data, "pretrained"),
            bool(_optional(data, "random_init")),
        )


@dataclass(frozen=True)
class SearchFigures:
    """Photo-search figures of a row: index throughput against the encoder's own, or query latency and recall."""

    task: str  # "index" or "query"
    method: str
    entries: int
    dim: int
    storage: str
    images_per_s: float | None = None
    encoder_images_per_s: float | None = None
    latency: LatencyStats | None = None
    recall_at_10: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "method": self.method,
            "entries": self.entries,
            "dim": self.dim,
            "storage": self.storage,
            "images_per_s": self.images_per_s,
            "encoder_images_per_s": self.encoder_images_per_s,
            "latency": self.latency.to_dict() if self.latency else None,
            "recall_at_10": self.recall_at_10,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> SearchFigures:
        latency = _optional(data, "latency")
        numbers = {}
        for key in ("images_per_s", "encoder_images_per_s", "recall_at_10"):
            value = _optional(data, key)
            numbers[key] = float(value) if isinstance(value, (int, float)) else None
        return cls(
            task=_require(data, "task", str, where),
            method=_require(data, "method", str, where),
            entries=_require(data, "entries", int, where),
            dim=_require(data, "dim", int, where),
            storage=_require(data, "storage", str, where),
            latency=LatencyStats.from_dict(latency, f"{where}.latency") if latency else None,
            **numbers,
        )


@dataclass(frozen=True)
class BenchEntry:
    """One row: a target/precision (or bundle) on this device, with its status and every figure measured."""

    name: str
    kind: str
    status: str
    target: str
    precision: str
    reason: str | None = None
    runtime: str | None = None
    baseline: bool = False
    model: ModelIdentity | None = None
    bundle: dict[str, Any] | None = None
    size_bytes: dict[str, int] = field(default_factory=dict)
    latency: dict[str, tuple[LatencyStats, ...]] = field(default_factory=dict)
    cold_start_ms: dict[str, float] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)
    accuracy: Accuracy | None = None
    parity: Parity | None = None
    export_s: float | None = None
    search: SearchFigures | None = None
    placement: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> Placement.to_dict() or unavailable

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ResultsError(f"entry {self.name!r}: status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.kind not in KINDS:
            raise ResultsError(f"entry {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        unknown = sorted(set(self.latency) - set(STAGES))
        if unknown:
            raise ResultsError(f"entry {self.name!r}: latency stage {unknown[0]!r} is not one of {', '.join(STAGES)}")

    @property
    def ran(self) -> bool:
        return bool(self.latency)

    @property
    def size_total(self) -> int | None:
        return sum(self.size_bytes.values()) if self.size_bytes else None

    def stats(self, stage: str, batch: int | None = None) -> LatencyStats | None:
        """The stage's stats at `batch` (default: the smallest batch measured), or None."""
        series = self.latency.get(stage, ())
        if not series:
            return None
        if batch is None:
            return min(series, key=lambda s: s.batch)
        return next((s for s in series if s.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "target": self.target,
            "precision": self.precision,
            "runtime": self.runtime,
            "baseline": self.baseline,
            "model": self.model.to_dict() if self.model else None,
            "bundle": self.bundle,
            "size_bytes": dict(self.size_bytes),
            "latency": {stage: [s.to_dict() for s in series] for stage, series in self.latency.items()},
            "cold_start_ms": dict(self.cold_start_ms),
            "memory_mb": dict(self.memory_mb),
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "parity": self.parity.to_dict() if self.parity else None,
            "export_s": self.export_s,
            **({"search": self.search.to_dict()} if self.search else {}),
            **({"placement": {role: dict(p) for role, p in self.placement.items()}} if self.placement else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> BenchEntry:
        name = _require(data, "name", str, where)
        latency_data = _optional(data, "latency") or {}
        if not isinstance(latency_data, dict):
            raise ResultsError(f"{where}.latency is {latency_data!r}: expected an object")
        latency = {
            stage: tuple(
                LatencyStats.from_dict(s, f"{where}.latency.{stage}[{i}]")
                for i, s in enumerate(series if isinstance(series, list) else [series])
            )
            for stage, series in latency_data.items()
        }
        model = _optional(data, "model")
        accuracy = _optional(data, "accuracy")
        parity = _optional(data, "parity")
        export_s = _optional(data, "export_s")
        search = _optional(data, "search")
        placement = _optional(data, "placement") or {}
        if not isinstance(placement, dict) or not all(isinstance(v, dict) for v in placement.values()):
            raise ResultsError(f"{where}.placement is {str(placement)[:60]!r}: expected an object of role -> object")
        try:
            return cls(
                name=name,
                kind=_require(data, "kind", str, where),
                status=_require(data, "status", str, where),
                target=_require(data, "target", str, where),
                precision=_require(data, "precision", str, where),
                reason=_optional(data, "reason"),
                runtime=_optional(data, "runtime"),
                baseline=bool(_optional(data, "baseline")),
                model=ModelIdentity.from_dict(model, f"{where}.model") if model else None,
                bundle=_optional(data, "bundle"),
                size_bytes={k: int(v) for k, v in (_optional(data, "size_bytes") or {}).items()},
                latency=latency,
                cold_start_ms={k: float(v) for k, v in (_optional(data, "cold_start_ms") or {}).items()},
                memory_mb={k: float(v) for k, v in (_optional(data, "memory_mb") or {}).items()},
                accuracy=Accuracy.from_dict(accuracy, f"{where}.accuracy") if accuracy else None,
                parity=Parity.from_dict(parity, f"{where}.parity") if parity else None,
                export_s=float(export_s) if isinstance(export_s, (int, float)) else None,
                search=SearchFigures.from_dict(search, f"{where}.search") if search else None,
                placement={str(role): dict(p) for role, p in placement.items()},
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise ResultsError(f"{where} ({name}) is malformed: {e}") from None


@dataclass(frozen=True)
class BenchResult:
    """One run of `edgeclip bench` on one device: device facts, settings and one entry per target/bundle."""

    label: str
    created: str
    edgeclip_version: str
    device: DeviceInfo
    settings: dict[str, Any]
    entries: tuple[BenchEntry, ...]
    schema_version: str = SCHEMA_VERSION

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ResultsError(f"results hold two entries named {duplicate!r}: entry names must be unique")

    def entry(self, name: str) -> BenchEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    @property
    def baseline(self) -> BenchEntry | None:
        """The entry others are compared with: the marked baseline that ran."""
        return next((e for e in self.entries if e.baseline and e.ran), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": self.schema_version,
            "created": self.created,
            "edgeclip_version": self.edgeclip_version,
            "label": self.label,
            "device": self.device.to_dict(),
            "settings": dict(self.settings),
            "entries": [e.to_dict() for e in self.entries],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "results") -> BenchResult:
        if not isinstance(data, dict):
            raise ResultsError(f"{where} is not a JSON object: expected an edgeclip bench results file")
        schema = data.get("schema")
        if schema != SCHEMA:
            hint = " (it looks like a pytest-benchmark file)" if "benchmarks" in data and "machine_info" in data else ""
            raise ResultsError(
                f"{where} is not an edgeclip bench results file: schema is {schema!r}, expected {SCHEMA!r}{hint}"
            )
        version = _require(data, "schema_version", str, where)
        major = version.split(".")[0]
        if not major.isdigit():
            raise ResultsError(f"{where}: schema_version {version!r} is not of the form MAJOR.MINOR")
        if major != SCHEMA_VERSION.split(".")[0]:
            newer = int(major) > int(SCHEMA_VERSION.split(".")[0])
            advice = "upgrade edgeclip to read it" if newer else "re-run `edgeclip bench` to write a current file"
            raise ResultsError(
                f"{where}: schema_version {version} is not readable by this edgeclip (reads {SCHEMA_VERSION}): {advice}"
            )
        device = _require(data, "device", dict, where)
        try:
            device_info = DeviceInfo.from_dict(device)
        except (KeyError, TypeError, ValueError) as e:
            raise ResultsError(f"{where}.device is malformed: {e}") from None
        entries = _require(data, "entries", list, where)
        return cls(
            label=_require(data, "label", str, where),
            created=_require(data, "created", str, where),
            edgeclip_version=_require(data, "edgeclip_version", str, where),
            device=device_info,
            settings=_require(data, "settings", dict, where),
            entries=tuple(BenchEntry.from_dict(e, f"{where}.entries[{i}]") for i, e in enumerate(entries)),
            schema_version=version,
        )

    @classmethod
    def from_json(cls, text: str, where: str = "results") -> BenchResult:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{where} is not JSON (line {e.lineno}: {e.msg})") from None
        except RecursionError:
            raise ResultsError(f"{where} is nested too deeply: expected a results object") from None
        return cls.from_dict(data, where)


def load_results(path: str | Path) -> BenchResult:
    """Read one results file, naming it in any error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"results file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"results file {path} could not be read ({e})") from None
    return BenchResult.from_json(text, str(path))


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write through a temporary file beside `path`, then rename it into place: never half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ResultsError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, umask_mode())  # mkstemp makes 0600; a results file is shared like any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_results(result: BenchResult, path: str | Path) -> Path:
    """Write a results file atomically."""
    return write_atomic(path, result.to_json())
