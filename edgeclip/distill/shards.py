"""Reinforced datasets in the DataCompDR layout: the writer (`reinforce`), the dataset manifest and the reader.

Per sample, in webdataset tar shards with no pixels inside:
  `<key>.url.txt`, `<key>.json` (`uid`, `sha256`, `caption`), `<key>.syn.json` (`syn_text`),
  `<key>.paug.json` (`param_aug`: K augmentations as a JSON string),
  `<key>.npz` (`image_emb` float32 [K, D_total], `text_emb` float32 [1 + S, D_total]).
`dataset.json` beside the shards is the run's plan: the teachers (dims, fixed logit scales, weights), K, S, the
image source and its fingerprint, the augmentation settings, the seed and so the shard count. Shard `n` always
holds source records `n*P .. (n+1)*P - 1` and every random draw comes from (seed, record index), so the output
is the same whatever the number of processes. Worker i of W (`--worker-index`, or a Slurm array / Kubernetes
indexed job) owns the shards with `n % W == i`, and its torchrun ranks deal those out in turn
(`distributed.shards_for`); with one worker that is `n % world == rank`. Each shard's `NNNNN.stats.json` (written
before the shard is renamed into place) records its sample count, byte size and dataset id: a rerun skips a
shard only when the file matches it, and `check_plan` (`edgeclip reinforce --check`) names what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip._version import __version__
from edgeclip.distill.augment import AugmentConfig, AugmentParams, params_from_json, params_to_json, sample_params
from edgeclip.distill.sources import ImageCaptionSource, open_source
from edgeclip.distill.tario import TarReader, TarSample, index_tar, shard_paths, write_tar
from edgeclip.distill.teachers import TeacherInfo
from edgeclip.errors import DatasetError, ImageError, UsageError

if TYPE_CHECKING:
    from edgeclip.distill.distributed import Workers

MANIFEST_NAME = "dataset.json"
FORMAT = "edgeclip-reinforced"
SCHEMA_MAJOR = 1
SCHEMA_VERSION = "1.0"


# Every manifest field that decides the shards' contents: equal on all of these, interchangeable shards.
_IDENTITY_KEYS = (
    "teachers",
    "augmentations",
    "synthetic_captions",
    "image_source",
    "samples",
    "samples_per_shard",
    "augment",
    "captioner",
    "seed",
)


@dataclass(frozen=True)
class DatasetManifest:
    """What a reinforced dataset holds and how it was made; shards and students are checked against it."""

    teachers: tuple[TeacherInfo, ...]
    augmentations: int
    synthetic_captions: int
    image_source: str
    samples: int
    samples_per_shard: int
    augment: AugmentConfig
    captioner: str | None = None
    seed: int = 0
    skipped_missing: int = 0
    edgeclip_version: str = __version__
    schema_version: str = SCHEMA_VERSION
    source_fingerprint: str = ""  # the source's records in order (ImageCaptionSource.fingerprint); "" if unrecorded
    batch_size: int = 0  # teacher batch; decides the captioner's draws (0: unrecorded)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(t.embed_dim for t in self.teachers)

    @property
    def total_dim(self) -> int:
        return sum(self.dims)

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(t.logit_scale for t in self.teachers)

    @property
    def shards(self) -> int:
        return math.ceil(self.samples / self.samples_per_shard)

    def shard_names(self) -> list[str]:
        """Every shard the run plans, in order."""
        return [shard_name(n) for n in range(self.shards)]

    def identity(self) -> str:
        """Digest of everything that decides the shards' contents: equal digests, interchangeable shards."""
        d = self.to_dict()
        keys = _IDENTITY_KEYS + (("source_fingerprint",) if self.source_fingerprint else ())  # older manifests: none
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def differences(self, other: DatasetManifest, *, plan: bool = False) -> list[str]:
        """The settings that differ, each as `name (this vs other)`; `plan` adds what only a writer must share."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for k in _IDENTITY_KEYS:
            if a[k] == b[k]:
                continue
            if isinstance(a[k], dict) and isinstance(b[k], dict):  # the augmentation spec: name its differing fields
                parts = [f"{f} {_short(f, a[k].get(f))} vs {_short(f, b[k].get(f))}" for f in sorted({*a[k], *b[k]})
                         if a[k].get(f) != b[k].get(f)]  # fmt: skip
                out.append(f"{k} ({', '.join(parts)})")
            else:
                out.append(f"{k} ({_short(k, a[k])} vs {_short(k, b[k])})")
        if self.source_fingerprint and other.source_fingerprint and self.source_fingerprint != other.source_fingerprint:
            out.append(f"source_fingerprint ({self.source_fingerprint} vs {other.source_fingerprint}: other records)")
        if plan and self.captioner and self.batch_size and other.batch_size and self.batch_size != other.batch_size:
            out.append(f"batch_size ({self.batch_size} vs {other.batch_size}: the captioner samples per batch)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "teachers": [t.to_dict() for t in self.teachers],
            "dims": list(self.dims),
            "augmentations": self.augmentations,
            "synthetic_captions": self.synthetic_captions,
            "image_source": self.image_source,
            "samples": self.samples,
            "samples_per_shard": self.samples_per_shard,
            "augment": self.augment.to_dict(),
            "captioner": self.captioner,
            "seed": self.seed,
            "skipped_missing": self.skipped_missing,
            "edgeclip_version": self.edgeclip_version,
            "shards": self.shards,
            "source_fingerprint": self.source_fingerprint,
            "batch_size": self.batch_size,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = MANIFEST_NAME) -> DatasetManifest:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise DatasetError(f"{where}: not an edgeclip reinforced-dataset manifest (format {FORMAT!r})")
        version = str(d.get("schema_version", ""))
        if not version.split(".")[0].isdigit() or int(version.split(".")[0]) != SCHEMA_MAJOR:
            raise DatasetError(f"{where}: schema version {version!r} is not supported (expected {SCHEMA_MAJOR}.x)")
        try:
            return cls(
                teachers=tuple(TeacherInfo.from_dict(t) for t in d["teachers"]),
                augmentations=int(d["augmentations"]),
                synthetic_captions=int(d["synthetic_captions"]),
                image_source=str(d["image_source"]),
                samples=int(d["samples"]),
                samples_per_shard=int(d["samples_per_shard"]),
                augment=AugmentConfig.from_dict(d["augment"]),
                captioner=d.get("captioner"),
                seed=int(d.get("seed", 0)),
                skipped_missing=int(d.get("skipped_missing", 0)),
                edgeclip_version=str(d.get("edgeclip_version", "")),
                schema_version=version,
                source_fingerprint=str(d.get("source_fingerprint") or ""),
                batch_size=int(d.get("batch_size") or 0),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{where}: missing or malformed field ({type(e).__name__}: {e})") from None

    @classmethod
    def read(cls, path: Path) -> DatasetManifest:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"{path}: cannot be read as JSON ({e})") from None
        return cls.from_dict(data, str(path))

    def write(self, folder: Path) -> Path:
        """Write dataset.json atomically (processes writing the same content may race harmlessly)."""
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def claim(self, folder: Path) -> DatasetManifest:
        """Make this the folder's plan unless one is there: create dataset.json only if absent, atomically.

        Returns the plan in force (this one, or the one another job wrote first). Jobs started together on
        several machines race here; a hard link creates the file only where none exists, so the first wins and
        the others compare against it.
        """
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return DatasetManifest.read(path)
        except OSError:  # a filesystem without hard links: a plain atomic rename
            os.replace(tmp, path)
            return self
        finally:
            tmp.unlink(missing_ok=True)
        return self

    @classmethod
    def datacompdr(cls, augmentations: int, image_source: str, synthetic_captions: int = 5) -> DatasetManifest:
        """Apple's DataCompDR (v1): two ViT-L-14 teachers (OpenAI, DataComp-XL), 768 dims each, logit scale 100."""
        teachers = tuple(
            TeacherInfo("ViT-L-14", tag, "unknown", 768, 100.0, (224, 224))
            for tag in ("openai", "datacomp_xl_s13b_b90k")
        )
        return cls(teachers, augmentations, synthetic_captions, image_source, 0, 1, AugmentConfig(), "coca_ViT-L-14")


def shard_name(n: int) -> str:
    """The file name of shard `n`."""
    return f"{n:05d}.tar"


def _short(key: str, value: Any) -> str:
    """A setting's value, short enough for a one-line message."""
    if key == "teachers":
        return "+".join(f"{t['architecture']}:{Path(t['pretrained']).name}@{t['weights_sha256'][:8]}" for t in value)
    return json.dumps(value)


# --- writing --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReinforceResult:
    """What one process wrote: shard files, counts, bytes and time, and which shards were its to write."""

    output: Path
    manifest: DatasetManifest
    written: tuple[str, ...]
    skipped_existing: tuple[str, ...]
    images: int
    failed: dict[str, str] = field(default_factory=dict)  # uid -> why the image was left out
    seconds: float = 0.0
    bytes_written: int = 0
    redone: dict[str, str] = field(default_factory=dict)  # shard -> why the file there was not a finished shard
    assigned: tuple[str, ...] = ()  # every shard this process owns (written, skipped or redone)
    workers: Workers | None = None
    rank: int = 0
    world_size: int = 1

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_sample(self) -> float:
        return self.bytes_written / self.images if self.images else 0.0

    def where(self) -> str:
        """This process's place: `worker i of W, rank r of R` (the parts that are not 1)."""
        parts = []
        if self.workers is not None and self.workers.count > 1:
            parts.append(self.workers.describe())
        if self.world_size > 1:
            parts.append(f"rank {self.rank} of {self.world_size}")
        return ", ".join(parts) or "1 process"

    def to_dict(self) -> dict[str, Any]:
        workers = self.workers
        return {
            "output": str(self.output),
            "dataset_id": self.manifest.identity(),
            "worker_index": workers.index if workers else 0,
            "num_workers": workers.count if workers else 1,
            "workers_from": workers.origin if workers else "",
            "rank": self.rank,
            "world_size": self.world_size,
            "shards_planned": self.manifest.shards,
            "shards_assigned": list(self.assigned),
            "shards_written": list(self.written),
            "shards_skipped_existing": list(self.skipped_existing),
            "shards_redone": dict(self.redone),
            "images": self.images,
            "failed_images": len(self.failed),
            "failed_first": dict(list(self.failed.items())[:5]),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "bytes_written": self.bytes_written,
            "bytes_per_sample": round(self.bytes_per_sample, 1),
        }


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **arrays)  # numpy's default, spelled out so no array is read as the flag
    return buf.getvalue()


def _agree(plan: DatasetManifest, wanted: DatasetManifest, output: Path) -> DatasetManifest:
    """The folder's plan when this job's settings match it; refused naming every differing setting otherwise."""
    differences = plan.differences(wanted, plan=True)
    if differences:
        names = ", ".join(d.split(" (", 1)[0] for d in differences)
        raise DatasetError(
            f"{output} was reinforced with different settings ({names}): {'; '.join(differences)} "
            f"(its {MANIFEST_NAME} vs this job); refusing to mix shards: choose a new --output"
        )
    return plan


def _read_stats(path: Path) -> dict[str, Any] | None:
    try:
        stats = json.loads((path.parent / _stats_name(path)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) else None


def unfinished_reason(path: Path, dataset_id: str) -> str | None:
    """None when `path` is a finished shard of dataset `dataset_id`; otherwise why not (missing, cut short ...)."""
    if not path.is_file():
        return "missing"
    stats = _read_stats(path)
    if stats is None or not isinstance(stats.get("samples"), int):
        return f"no readable {_stats_name(path)} beside it"
    recorded = stats.get("bytes")
    size = path.stat().st_size
    if isinstance(recorded, int):
        if recorded != size:
            return f"{size} bytes where {_stats_name(path)} records {recorded} (cut short or overwritten)"
    else:  # stats from before byte sizes were recorded: count the samples
        samples, error = index_tar(path)
        count = sum(1 for s in samples if s.members)
        if error or count != stats["samples"]:
            return f"{count} readable samples where {_stats_name(path)} records {stats['samples']}"
    if stats.get("dataset_id") not in (None, dataset_id):
        return f"written by another reinforce run (dataset {stats['dataset_id']}, this folder's is {dataset_id})"
    return None


def reinforce(
    images: str,
    teachers: Sequence[str],
    output: str | Path,
    *,
    augmentations: int = 10,
    synthetic_captions: int = 0,
    captioner: str | None = None,
    captions_file: str | Path | None = None,
    samples_per_shard: int = 1000,
    batch_size: int = 32,
    seed: int = 0,
    augment: AugmentConfig | None = None,
    skip_missing: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int | None = None,
    worker_index: int | None = None,
    environ: Mapping[str, str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReinforceResult:
    """Run the teachers once over every image and K augmentations of it, and write DataCompDR-layout shards.

    This process writes its share of the shards (worker `worker_index` of `num_workers` and its torchrun rank),
    skipping shards already finished. Pass `environ=os.environ` to default the worker split from a Slurm array or
    a Kubernetes indexed job as the CLI does; by default a library call reads no scheduler variables.
    """
    import torch

    from edgeclip.distill.distributed import World, resolve_workers, shards_for, world_from_env
    from edgeclip.distill.teachers import CaptionsFile, CocaCaptioner, TeacherEnsemble, parse_model_ref

    if augmentations < 1:
        raise UsageError(f"--augmentations must be >= 1, got {augmentations}")
    if synthetic_captions < 0:
        raise UsageError(f"--synthetic-captions must be >= 0, got {synthetic_captions}")
    if captioner and captions_file:
        raise UsageError("give --captioner or --captions-file for synthetic captions, not both")
    if synthetic_captions and not (captioner or captions_file):
        raise UsageError(f"--synthetic-captions {synthetic_captions} needs --captioner ARCH:WEIGHTS or --captions-file")
    if samples_per_shard < 1 or batch_size < 1:
        raise UsageError("--samples-per-shard and --batch-size must be >= 1")
    workers = resolve_workers(num_workers, worker_index, {} if environ is None else environ)
    env = world_from_env()
    rank = env.rank if rank is None else rank
    world_size = env.size if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside 0..{world_size - 1} (world size {world_size})")
    augment = augment or AugmentConfig()
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")

    source = open_source(images, skip_missing=skip_missing)
    ensemble = TeacherEnsemble.load(teachers)
    synth: CaptionsFile | CocaCaptioner | None = None
    if synthetic_captions:
        if captions_file:
            synth = CaptionsFile(captions_file)
        elif captioner:  # one of the two, checked above
            synth = CocaCaptioner(*parse_model_ref(captioner, "--captioner"))
    manifest = DatasetManifest(
        teachers=ensemble.infos,
        augmentations=augmentations,
        synthetic_captions=synthetic_captions,
        image_source=source.spec,
        samples=len(source),
        samples_per_shard=samples_per_shard,
        augment=augment,
        captioner=synth.name if synth else None,
        seed=seed,
        skipped_missing=source.skipped_missing,
        source_fingerprint=source.fingerprint(),
        batch_size=batch_size,
    )
    existing = output / MANIFEST_NAME
    plan = _agree(DatasetManifest.read(existing), manifest, output) if existing.exists() else None
    mine = shards_for(manifest.shards, workers, World(rank, world_size, rank))
    done = partial(ReinforceResult, output, plan or manifest, workers=workers, rank=rank, world_size=world_size)
    if not mine:  # more workers x ranks than shards: this one has nothing to do, and writes nothing
        return done((), (), 0)
    output.mkdir(parents=True, exist_ok=True)
    if plan is None:
        plan = _agree(manifest.claim(output), manifest, output)
    dataset_id = plan.identity()

    written, skipped, failed, redone = [], [], {}, {}
    count = bytes_written = 0
    start = time.perf_counter()
    for shard in mine:
        path = output / shard_name(shard)
        why = unfinished_reason(path, dataset_id)
        if why is None:
            skipped.append(path.name)
            continue
        if why != "missing":
            redone[path.name] = why
        first, last = shard * samples_per_shard, min((shard + 1) * samples_per_shard, len(source))
        samples: list[tuple[str, dict[str, bytes]]] = []
        shard_failed: dict[str, str] = {}
        for lo in range(first, last, batch_size):
            # The captioner's draws come from (seed, first record of the batch), never from what this process did
            # before: any split of the shards over processes gives the same captions.
            state = int(np.random.SeedSequence([seed, lo]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(state)
            batch = _reinforce_batch(
                source, range(lo, min(lo + batch_size, last)), ensemble, synth, manifest, generator, shard_failed
            )
            samples.extend(batch)
            count += len(batch)
            if on_progress:
                on_progress(min(lo + batch_size, last) - lo)
        stats = {"samples": len(samples), "failed": shard_failed, "dataset_id": dataset_id}

        def publish(size: int, stats: dict[str, Any] = stats, path: Path = path) -> None:
            # The record first, then the shard: a shard in place always has the count and size it is checked against.
            stats_path = path.parent / _stats_name(path)
            tmp = stats_path.with_name(f".{stats_path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
            tmp.write_text(json.dumps({**stats, "bytes": size}, indent=1), encoding="utf-8")
            os.replace(tmp, stats_path)

        bytes_written += write_tar(path, samples, publish)
        failed.update(shard_failed)
        written.append(path.name)
    assigned = tuple(shard_name(n) for n in mine)
    return done(
        tuple(written), tuple(skipped), count, failed, time.perf_counter() - start, bytes_written, redone, assigned
    )


def _reinforce_batch(source, indices, ensemble, synth, manifest, generator, failed):
    """Teacher embeddings for a batch of source records; unreadable images are left out and named in `failed`."""
    from edgeclip.distill.teachers import CaptionsFile, stack_text_rows

    records, pixels, params = [], [], []
    for index in indices:
        try:
            record, image = source.item(index)
        except ImageError as e:
            failed[source.record(index).uid] = str(e)
            continue
        rng = np.random.default_rng([manifest.seed, index])
        records.append((index, record))
        pixels.append(image)
        draws = [sample_params(rng, image.width, image.height, manifest.augment) for _ in range(manifest.augmentations)]
        params.append(draws)
    if not records:
        return []
    k = manifest.augmentations
    flat_images = [im for im in pixels for _ in range(k)]
    flat_params = [p for row in params for p in row]
    image_emb = ensemble.encode_images(flat_images, flat_params, manifest.augment.interpolation)
    image_emb = image_emb.view(len(records), k, -1)
    s = manifest.synthetic_captions
    if s:
        if isinstance(synth, CaptionsFile):
            syn = [synth.captions(record.uid, s) for _, record in records]
        else:
            syn = synth.caption(pixels, s, generator)
    else:
        syn = [[] for _ in records]
    gt = ensemble.encode_texts([record.caption for _, record in records])
    syn_emb = ensemble.encode_texts([c for row in syn for c in row]) if s else None
    text_emb = stack_text_rows(gt, syn_emb, s)
    out = []
    for row, ((index, record), views) in enumerate(zip(records, params, strict=True)):
        meta = {"uid": record.uid, "caption": record.caption, "source_index": index}
        local = Path(source.paths[index]) if getattr(source, "paths", None) else Path(record.url)
        if local.is_file():
            meta["sha256"] = _file_sha256(local)
        out.append(
            (
                f"{index:09d}",
                {
                    "url.txt": record.url.encode("utf-8"),
                    "json": json.dumps(meta).encode("utf-8"),
                    "syn.json": json.dumps({"syn_text": syn[row]}).encode("utf-8"),
                    "paug.json": json.dumps({"param_aug": params_to_json(views)}).encode("utf-8"),
                    "npz": _npz_bytes(image_emb=image_emb[row].numpy().astype(np.float32), text_emb=text_emb[row]),
                },
            )
        )
    return out


def _file_sha256(path: Path) -> str:
    from edgeclip.runtimes.bundle import sha256_file

    return sha256_file(path)


# --- reading --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReinforcedSample:
    """One stored sample: what it is, its K augmentations and the teachers' embeddings."""

    key: str
    uid: str
    url: str
    caption: str
    syn_text: tuple[str, ...]
    params: tuple[AugmentParams, ...]
    image_emb: np.ndarray  # [K, D_total]
    text_emb: np.ndarray  # [1 + S, D_total]


class SampleError(DatasetError):
    """One stored sample cannot be used (missing member, bad JSON or npz, wrong shape); training skips it."""


_REQUIRED = frozenset({"npz", "paug.json"})  # members without which a stored sample cannot be trained on


def _stats_name(path: Path) -> str:
    return f"{path.name.removesuffix('.tar')}.stats.json"


def _promised_samples(path: Path) -> int | None:
    """How many samples `reinforce` wrote into a shard (its NNNNN.stats.json), or None where none is recorded."""
    try:
        count = json.loads((path.parent / _stats_name(path)).read_text(encoding="utf-8"))["samples"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return count if isinstance(count, int) and count >= 0 else None


class ReinforcedShards:
    """Random access to the samples of reinforced shards, checked against their dataset manifest."""

    def __init__(self, data: str | Path, manifest: DatasetManifest | None = None) -> None:
        self.paths = shard_paths(data)
        self.missing_planned: tuple[str, ...] = ()  # shards the run planned that a folder given as data lacks
        planned = manifest is None
        if manifest is None:
            manifest = _one_run(data, self.paths)
        self.manifest = manifest
        if planned and Path(data).is_dir():
            present = {p.name for p in self.paths}
            self.missing_planned = tuple(n for n in manifest.shard_names() if n not in present)
        dataset_id = manifest.identity() if planned else None
        self.samples: list[tuple[Path, TarSample]] = []
        self.corrupt_shards: dict[str, str] = {}  # shard -> why it could be read only in part
        self.missing_samples: dict[str, int | None] = {}  # corrupt shard -> samples it promised and lost
        self._reader = TarReader()
        for path in self.paths:
            samples, error = index_tar(path)
            samples = [s for s in samples if s.members]
            if error and samples and not _REQUIRED.issubset(samples[-1].members):
                samples.pop()  # the sample the cut ran through: its last members are gone
            promised = _promised_samples(path)
            if not error and promised is not None and len(samples) < promised:
                error = f"holds {len(samples)} samples where its {_stats_name(path)} records {promised}"
            if error:
                self.corrupt_shards[str(path)] = error
                self.missing_samples[str(path)] = None if promised is None else max(0, promised - len(samples))
            if samples:
                self._check_shard(path, samples)
            recorded = (_read_stats(path) or {}).get("dataset_id") if dataset_id else None
            if recorded not in (None, dataset_id):
                raise DatasetError(
                    f"{path}: written by another reinforce run (dataset {recorded}; the {MANIFEST_NAME} beside it "
                    f"is {dataset_id}): refusing to mix shards from two runs"
                )
            self.samples.extend((path, s) for s in samples)
        if not self.samples:
            raise DatasetError(f"{data}: the shards hold no readable samples ({len(self.corrupt_shards)} corrupt)")

    def __len__(self) -> int:
        return len(self.samples)

    def require_complete(self, data: str | Path) -> None:
        """Refuse a folder that lacks shards its reinforce run planned, naming them (a worker has not finished)."""
        if self.missing_planned:
            raise DatasetError(
                f"{data}: {len(self.missing_planned)} of the {self.manifest.shards} shards its reinforce run "
                f"planned are missing ({_first(self.missing_planned)}): rerun the workers that own them "
                "(`edgeclip reinforce --check` lists them), or name the shards to train on with a pattern"
            )

    def _check_shard(self, path: Path, samples: list[TarSample]) -> None:
        """Refuse a shard whose first good sample disagrees with the manifest's K or teacher dims."""
        for sample in samples[:8]:
            try:
                emb = self._arrays(path, sample)
            except SampleError:
                continue
            k, d = emb["image_emb"].shape
            want_k, want_d = self.manifest.augmentations, self.manifest.total_dim
            if d != want_d or emb["text_emb"].shape[-1] != want_d:
                raise DatasetError(
                    f"{path}: embeddings are {d}-dimensional but the dataset manifest's teachers give {want_d} "
                    f"({'+'.join(map(str, self.manifest.dims))}): shards from another reinforcement run?"
                )
            if k != want_k:
                raise DatasetError(
                    f"{path}: {k} augmentations per sample but the dataset manifest says K={want_k}: "
                    "shards from another reinforcement run?"
                )
            return

    def _arrays(self, path: Path, sample: TarSample) -> dict[str, np.ndarray]:
        if "npz" not in sample.members:
            raise SampleError(f"{path.name}:{sample.key}: no npz member")
        try:
            with np.load(io.BytesIO(self._reader.read(path, sample.members["npz"])), allow_pickle=False) as z:
                arrays = {name: z[name] for name in ("image_emb", "text_emb")}
        except Exception as e:  # zipfile, numpy and KeyError all signal a bad npz
            raise SampleError(f"{path.name}:{sample.key}: npz unreadable ({type(e).__name__}: {e})") from None
        for name in ("image_emb", "text_emb"):
            if arrays[name].ndim != 2:
                raise SampleError(f"{path.name}:{sample.key}: {name} has shape {arrays[name].shape}, expected 2-D")
        return arrays

    def _json(self, path: Path, sample: TarSample, ext: str) -> Any:
        member = sample.members.get(ext)
        if member is None:
            raise SampleError(f"{path.name}:{sample.key}: no {ext} member")
        try:
            return json.loads(self._reader.read(path, member))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SampleError(f"{path.name}:{sample.key}: {ext} is not valid JSON ({e})") from None

    def read(self, index: int) -> ReinforcedSample:
        """Sample `index`; SampleError when any part of it is missing, malformed or of the wrong shape."""
        path, sample = self.samples[index]
        m = self.manifest
        arrays = self._arrays(path, sample)
        meta = self._json(path, sample, "json") if "json" in sample.members else {}
        url = (
            self._reader.read(path, sample.members["url.txt"]).decode("utf-8", "replace").strip()
            if ("url.txt" in sample.members)
            else ""
        )
        syn = self._json(path, sample, "syn.json").get("syn_text", []) if "syn.json" in sample.members else []
        paug = self._json(path, sample, "paug.json")
        try:
            params = tuple(params_from_json(paug["param_aug"] if isinstance(paug, dict) else paug))
        except (DatasetError, KeyError, TypeError) as e:
            raise SampleError(f"{path.name}:{sample.key}: paug.json unusable ({e})") from None
        image_emb, text_emb = arrays["image_emb"], arrays["text_emb"]
        if image_emb.shape != (m.augmentations, m.total_dim) or len(params) != m.augmentations:
            raise SampleError(
                f"{path.name}:{sample.key}: image_emb {image_emb.shape} / {len(params)} augmentations, "
                f"expected ({m.augmentations}, {m.total_dim})"
            )
        if text_emb.shape[-1] != m.total_dim or text_emb.shape[0] < 1:
            raise SampleError(f"{path.name}:{sample.key}: text_emb {text_emb.shape}, expected (1+S, {m.total_dim})")
        if m.synthetic_captions and not 1 <= len(syn) <= text_emb.shape[0] - 1:
            raise SampleError(
                f"{path.name}:{sample.key}: {len(syn)} synthetic captions for {text_emb.shape[0] - 1} text_emb rows "
                f"(the manifest says S={m.synthetic_captions})"
            )
        if not (np.isfinite(image_emb).all() and np.isfinite(text_emb).all()):
            raise SampleError(f"{path.name}:{sample.key}: embeddings hold NaN or inf")
        uid = str(meta.get("uid", sample.key)) if isinstance(meta, dict) else sample.key
        caption = str(meta.get("caption", "")) if isinstance(meta, dict) else ""
        return ReinforcedSample(
            sample.key, uid, url, caption, tuple(map(str, syn)), params,
            image_emb.astype(np.float32), text_emb.astype(np.float32),
        )  # fmt: skip

    def close(self) -> None:
        self._reader.close()


def _first(names: Sequence[str], limit: int = 8) -> str:
    """`a, b, c` or `a, b, c (+5 more)`: names for a one-line message."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _one_run(data: str | Path, paths: Sequence[Path]) -> DatasetManifest:
    """The dataset manifest of shards that may lie in several folders; refused when they come from different runs."""
    candidates = sorted({p.parent / MANIFEST_NAME for p in paths})
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise DatasetError(
            f"{data}: no {MANIFEST_NAME} beside the shards; for Apple's DataCompDR shards give the layout "
            "(edgeclip distill --datacompdr K --images LOCAL_SOURCE)"
        )
    if len(found) < len(candidates):
        lacking = [str(c.parent) for c in candidates if not c.is_file()]
        raise DatasetError(
            f"{data}: shards in {_first(lacking)} have no {MANIFEST_NAME}: cannot tell which run made them"
        )
    manifests = [DatasetManifest.read(f) for f in found]
    first = manifests[0]
    for where, other in zip(found[1:], manifests[1:], strict=True):
        if other.identity() != first.identity():
            differences = first.differences(other)
            names = ", ".join(d.split(" (", 1)[0] for d in differences) or "dataset id"
            raise DatasetError(
                f"{data}: shards from two reinforce runs with different {names} ({found[0].parent} vs {where.parent}: "
                f"{'; '.join(differences)}): refusing to mix them; train on one run's shards"
            )
    return first


def open_pixels(manifest: DatasetManifest, images: str | None) -> ImageCaptionSource:
    """The image source the shards' pixels come from: the manifest's, or a local one given for joining by uid/url."""
    spec = images or manifest.image_source
    if not spec:
        raise UsageError("the shards name no image source: pass --images with the local images to join by uid/url")
    return open_source(spec, skip_missing=True)


# --- checking a run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanCheck:
    """Where a reinforce run's folder stands against its plan: finished, missing and unfinished shards."""

    folder: Path
    manifest: DatasetManifest
    finished: tuple[str, ...]
    missing: tuple[str, ...]
    unfinished: dict[str, str]  # shard -> why the file there is not a finished shard
    unplanned: tuple[str, ...]  # .tar files the plan does not name
    leftovers: tuple[str, ...]  # temporary files of killed writers (safe to delete once no worker runs)
    samples: int  # in the finished shards

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unfinished

    def problem(self) -> str:
        """One line naming the shards still to write, for a refusal."""
        todo = sorted([*self.missing, *self.unfinished])
        reasons = "; ".join(f"{n}: {why}" for n, why in list(self.unfinished.items())[:3])
        return (
            f"{self.folder}: {len(todo)} of the {self.manifest.shards} planned shards are not finished "
            f"({_first(todo)})" + (f" [{reasons}]" if reasons else "") + ": rerun the workers that own them "
            "(the same reinforce command; finished shards are skipped)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "dataset_id": self.manifest.identity(),
            "complete": self.complete,
            "shards_planned": self.manifest.shards,
            "shards_finished": len(self.finished),
            "missing": list(self.missing),
            "unfinished": dict(self.unfinished),
            "unplanned": list(self.unplanned),
            "leftovers": list(self.leftovers),
            "samples": self.samples,
        }


def check_plan(folder: str | Path) -> PlanCheck:
    """Check every shard a reinforce run planned (its dataset.json) against the files in its folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (expected the --output of edgeclip reinforce)")
    if not (folder / MANIFEST_NAME).is_file():
        raise DatasetError(f"{folder}: no {MANIFEST_NAME}: not the --output of edgeclip reinforce, or no worker began")
    manifest = DatasetManifest.read(folder / MANIFEST_NAME)
    dataset_id = manifest.identity()
    finished, missing, unfinished = [], [], {}
    samples = 0
    for name in manifest.shard_names():
        why = unfinished_reason(folder / name, dataset_id)
        if why is None:
            finished.append(name)
            samples += int((_read_stats(folder / name) or {}).get("samples", 0))
        elif why == "missing":
            missing.append(name)
        else:
            unfinished[name] = why
    planned = set(manifest.shard_names())
    unplanned = sorted(p.name for p in folder.glob("*.tar") if p.name not in planned)
    leftovers = sorted(p.name for p in folder.glob(".*") if ".partial-" in p.name or p.name.endswith(".tmp"))
    return PlanCheck(
        folder, manifest, tuple(finished), tuple(missing), unfinished, tuple(unplanned), tuple(leftovers), samples
    )


@dataclass(frozen=True)
class Comparison:
    """Two reinforced datasets side by side: sample keys, augmentation parameters, captions and embeddings."""

    samples: tuple[int, int]
    same_dataset_id: bool
    keys_equal: bool
    params_equal: bool
    captions_equal: bool
    image_emb_max_abs: float
    text_emb_max_abs: float
    atol: float
    first_difference: str | None = None

    @property
    def equal(self) -> bool:
        return (
            self.keys_equal
            and self.params_equal
            and self.captions_equal
            and max(self.image_emb_max_abs, self.text_emb_max_abs) <= self.atol
        )

    def summary(self) -> str:
        """One line: equal or not, and by how much."""
        verdict = "equal" if self.equal else "DIFFERENT"
        return (
            f"{verdict}: {self.samples[0]} vs {self.samples[1]} samples; keys {_yes(self.keys_equal)}, augmentation "
            f"parameters {_yes(self.params_equal)}, captions {_yes(self.captions_equal)}, teacher embeddings max "
            f"|diff| image {self.image_emb_max_abs:.2e} text {self.text_emb_max_abs:.2e} (tolerance {self.atol:g})"
            + ("" if self.first_difference is None else f"; first difference: {self.first_difference}")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "samples": list(self.samples),
            "same_dataset_id": self.same_dataset_id,
            "keys_equal": self.keys_equal,
            "params_equal": self.params_equal,
            "captions_equal": self.captions_equal,
            "image_emb_max_abs": self.image_emb_max_abs,
            "text_emb_max_abs": self.text_emb_max_abs,
            "atol": self.atol,
            "first_difference": self.first_difference,
        }


def _yes(flag: bool) -> str:
    return "equal" if flag else "differ"


def compare_reinforced(a: str | Path, b: str | Path, atol: float = 1e-5) -> Comparison:
    """Compare two reinforced datasets sample by sample (e.g. a multi-worker run against a 1-process one)."""
    ra, rb = ReinforcedShards(a), ReinforcedShards(b)
    try:
        by_a = {s.key: i for i, (_, s) in enumerate(ra.samples)}
        by_b = {s.key: i for i, (_, s) in enumerate(rb.samples)}
        keys_equal = sorted(by_a) == sorted(by_b)
        first = None if keys_equal else f"keys only in one: {_first(sorted(set(by_a) ^ set(by_b)), 3)}"
        params_equal = captions_equal = True
        image_diff = text_diff = 0.0
        for key in sorted(set(by_a) & set(by_b)):
            x, y = ra.read(by_a[key]), rb.read(by_b[key])
            if x.params != y.params:
                params_equal = False
                first = first or f"{key}: augmentation parameters"
            if (x.uid, x.caption, x.syn_text) != (y.uid, y.caption, y.syn_text):
                captions_equal = False
                first = first or f"{key}: uid or captions"
            if x.image_emb.shape != y.image_emb.shape or x.text_emb.shape != y.text_emb.shape:
                image_diff = text_diff = math.inf
                first = first or f"{key}: embedding shapes"
                continue
            image_diff = max(image_diff, float(np.abs(x.image_emb - y.image_emb).max(initial=0.0)))
            text_diff = max(text_diff, float(np.abs(x.text_emb - y.text_emb).max(initial=0.0)))
        if first is None and max(image_diff, text_diff) > atol:
            first = "teacher embeddings beyond the tolerance"
        return Comparison(
            (len(ra), len(rb)), ra.manifest.identity() == rb.manifest.identity(), keys_equal, params_equal,
            captions_equal, image_diff, text_diff, atol, first,
        )  # fmt: skip
    finally:
        ra.close()
        rb.close()
