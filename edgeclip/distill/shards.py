"""Reinforced datasets in the DataCompDR layout: the writer (`reinforce`), the dataset manifest and the reader.

Per sample, in webdataset tar shards with no pixels inside:
  `<key>.url.txt`, `<key>.json` (`uid`, `sha256`, `caption`), `<key>.syn.json` (`syn_text`),
  `<key>.paug.json` (`param_aug`: K augmentations as a JSON string),
  `<key>.npz` (`image_emb` float32 [K, D_total], `text_emb` float32 [1 + S, D_total]).
`dataset.json` beside the shards records the teachers (dims, fixed logit scales, weights), K, S, the image
source and the augmentation settings. Shard `n` always holds source records `n*P .. (n+1)*P - 1`, so the
output is the same whatever the number of processes; under `torchrun` rank r writes the shards with
`n % world == r`, and a restart skips every shard already renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip._version import __version__
from edgeclip.distill.augment import AugmentConfig, AugmentParams, params_from_json, params_to_json, sample_params
from edgeclip.distill.sources import ImageCaptionSource, open_source
from edgeclip.distill.tario import TarReader, TarSample, index_tar, shard_paths, write_tar
from edgeclip.distill.teachers import TeacherInfo
from edgeclip.errors import DatasetError, ImageError, UsageError

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

    def identity(self) -> str:
        """Digest of everything that decides the shards' contents: equal digests, interchangeable shards."""
        d = self.to_dict()
        blob = json.dumps({k: d[k] for k in _IDENTITY_KEYS}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

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
        tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def datacompdr(cls, augmentations: int, image_source: str, synthetic_captions: int = 5) -> DatasetManifest:
        """Apple's DataCompDR (v1): two ViT-L-14 teachers (OpenAI, DataComp-XL), 768 dims each, logit scale 100."""
        teachers = tuple(
            TeacherInfo("ViT-L-14", tag, "unknown", 768, 100.0, (224, 224))
            for tag in ("openai", "datacomp_xl_s13b_b90k")
        )
        return cls(teachers, augmentations, synthetic_captions, image_source, 0, 1, AugmentConfig(), "coca_ViT-L-14")


def _describe_difference(a: DatasetManifest, b: DatasetManifest) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join(k for k in _IDENTITY_KEYS if da[k] != db[k])


# --- writing --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReinforceResult:
    """What one process wrote: shard files, counts, bytes and time."""

    output: Path
    manifest: DatasetManifest
    written: tuple[str, ...]
    skipped_existing: tuple[str, ...]
    images: int
    failed: dict[str, str] = field(default_factory=dict)  # uid -> why the image was left out
    seconds: float = 0.0
    bytes_written: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_sample(self) -> float:
        return self.bytes_written / self.images if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "dataset_id": self.manifest.identity(),
            "shards_written": list(self.written),
            "shards_skipped_existing": list(self.skipped_existing),
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
    on_progress: Callable[[int], None] | None = None,
) -> ReinforceResult:
    """Run the teachers once over every image and K augmentations of it, and write DataCompDR-layout shards."""
    import torch

    from edgeclip.distill.distributed import world_from_env
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
    env = world_from_env()
    rank = env.rank if rank is None else rank
    world_size = env.size if world_size is None else world_size
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
    )
    existing = output / MANIFEST_NAME
    if existing.exists():
        old = DatasetManifest.read(existing)
        if old.identity() != manifest.identity():
            raise DatasetError(
                f"{output} was reinforced with different settings ({_describe_difference(old, manifest)}): "
                "refusing to mix shards; choose a new --output"
            )
    output.mkdir(parents=True, exist_ok=True)
    manifest.write(output)

    written, skipped, failed = [], [], {}
    count = bytes_written = 0
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    for shard in range(manifest.shards):
        if shard % world_size != rank:
            continue
        path = output / f"{shard:05d}.tar"
        if path.exists():
            skipped.append(path.name)
            continue
        first, last = shard * samples_per_shard, min((shard + 1) * samples_per_shard, len(source))
        samples: list[tuple[str, dict[str, bytes]]] = []
        shard_failed: dict[str, str] = {}
        for lo in range(first, last, batch_size):
            batch = _reinforce_batch(
                source, range(lo, min(lo + batch_size, last)), ensemble, synth, manifest, generator, shard_failed
            )
            samples.extend(batch)
            count += len(batch)
            if on_progress:
                on_progress(min(lo + batch_size, last) - lo)
        # The count first, then the shard: a shard in place always has the count the reader checks it against.
        stats = output / f"{shard:05d}.stats.json"
        tmp = stats.with_name(f".{stats.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"samples": len(samples), "failed": shard_failed}, indent=1), encoding="utf-8")
        os.replace(tmp, stats)
        bytes_written += write_tar(path, samples)
        failed.update(shard_failed)
        written.append(path.name)
    return ReinforceResult(
        output, manifest, tuple(written), tuple(skipped), count, failed, time.perf_counter() - start, bytes_written
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
        if manifest is None:
            candidates = {p.parent / MANIFEST_NAME for p in self.paths}
            found = [c for c in sorted(candidates) if c.is_file()]
            if not found:
                raise DatasetError(
                    f"{data}: no {MANIFEST_NAME} beside the shards; for Apple's DataCompDR shards give the layout "
                    "(edgeclip distill --datacompdr K --images LOCAL_SOURCE)"
                )
            manifest = DatasetManifest.read(found[0])
        self.manifest = manifest
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
            self.samples.extend((path, s) for s in samples)
        if not self.samples:
            raise DatasetError(f"{data}: the shards hold no readable samples ({len(self.corrupt_shards)} corrupt)")

    def __len__(self) -> int:
        return len(self.samples)

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


def open_pixels(manifest: DatasetManifest, images: str | None) -> ImageCaptionSource:
    """The image source the shards' pixels come from: the manifest's, or a local one given for joining by uid/url."""
    spec = images or manifest.image_source
    if not spec:
        raise UsageError("the shards name no image source: pass --images with the local images to join by uid/url")
    return open_source(spec, skip_missing=True)
