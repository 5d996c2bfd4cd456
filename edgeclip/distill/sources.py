"""Image–caption sources: a captions file (JSONL/CSV), a folder with sidecar .txt captions, img2dataset shards, shapes.

Every source is a random-access sequence of records (uid, url, caption) with `image(i)` decoding pixels on
demand through `edgeclip.data.images.load_image`. `open_source(spec)` picks the kind from the spec through
a small registry. Missing images are found when the source opens: counted, the first few named, and either
refused or left out (`skip_missing`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import numpy as np
from PIL import Image

from edgeclip.data.images import IMAGE_EXTENSIONS, list_images, load_image
from edgeclip.data.jsonl import iter_json_objects
from edgeclip.distill.tario import Member, TarReader, index_tar, shard_paths
from edgeclip.errors import DatasetError, ImageError, UsageError

if TYPE_CHECKING:
    from edgeclip.data.shapes import ShapesDataset

SHOW_FIRST = 5  # how many offending paths a message names
IMAGE_KEYS = ("image", "path", "file", "filepath", "image_path")  # a local file; an optional "url" is its origin
CAPTION_KEYS = ("caption", "text", "txt")
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class Record:
    """One image–caption pair: a stable uid, where the image is (path or url), its caption, an optional label."""

    uid: str
    url: str
    caption: str
    label: int | None = None


class ImageCaptionSource:
    """A random-access sequence of image–caption records; subclasses give `record(i)` and `image(i)`."""

    kind: str = ""

    def __init__(self, spec: str, records: list[Record], skipped: int = 0) -> None:
        self.spec = spec
        self._records = records
        self.skipped_missing = skipped
        self._by_uid: dict[str, int] | None = None
        self._by_url: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._records)

    @classmethod
    def open(cls, spec: str, skip_missing: bool = False) -> ImageCaptionSource:
        """Open `spec` as this kind of source (each registered kind defines it; `open_source` calls it)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, {len(self)} records)"

    def record(self, index: int) -> Record:
        """Record `index`: uid, url, caption and label."""
        return self._records[index]

    def image(self, index: int) -> Image.Image:
        """The RGB image of record `index`; ImageError when it cannot be decoded."""
        raise NotImplementedError

    def item(self, index: int) -> tuple[Record, Image.Image]:
        """Record and image together (sources that draw both at once override this)."""
        return self.record(index), self.image(index)

    def fingerprint(self) -> str:
        """A digest of the records in order (uid, caption): two jobs on different copies of a source agree on it.

        Paths are left out (each machine may mount the data elsewhere), and so are the pixels (hashing every image
        would cost as much as reading it); each sample's sha256 records those where the image is a local file.
        """
        digest = hashlib.sha256(f"{self.kind}\n{len(self)}\n".encode())
        for record in self._records:
            digest.update(f"{record.uid}\t{record.caption}\n".encode())
        return digest.hexdigest()[:16]

    def find(self, uid: str | None = None, url: str | None = None) -> int | None:
        """The index of the record with this uid (or, failing that, this url): how DataCompDR shards join pixels."""
        if self._by_uid is None or self._by_url is None:
            self._by_uid = {r.uid: i for i, r in enumerate(self._records)}
            self._by_url = {r.url: i for i, r in enumerate(self._records)}
        if uid is not None and uid in self._by_uid:
            return self._by_uid[uid]
        return self._by_url.get(url) if url is not None else None


# --- the registry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceKind:
    """How to recognise a spec of this kind and open it."""

    name: str
    matches: Callable[[str], bool]
    open: Callable[[str, bool], ImageCaptionSource]
    example: str


_KINDS: dict[str, SourceKind] = {}


def register_source(name: str, matches: Callable[[str], bool], example: str) -> Callable:
    """Class decorator: a source kind recognised by `matches(spec)` and opened by `cls.open(spec, skip_missing)`."""

    def wrap(cls: type[ImageCaptionSource]) -> type[ImageCaptionSource]:
        if name in _KINDS:
            raise ValueError(f"source kind {name!r} is registered twice")
        cls.kind = name
        _KINDS[name] = SourceKind(name, matches, cls.open, example)
        return cls

    return wrap


def list_source_kinds() -> list[SourceKind]:
    """The known source kinds, in the order specs are tried against them."""
    return list(_KINDS.values())


def open_source(spec: str | Path, *, skip_missing: bool = False) -> ImageCaptionSource:
    """Open an image–caption source from its spec (see `list_source_kinds()` for the forms)."""
    spec = str(spec)
    for kind in _KINDS.values():
        if kind.matches(spec):
            return kind.open(spec, skip_missing)
    if not Path(spec).exists():
        raise DatasetError(f"image source {spec!r} does not exist")
    forms = "; ".join(f"{k.name}: {k.example}" for k in _KINDS.values())
    raise UsageError(f"image source {spec!r} is not one edgeclip reads; expected {forms}")


def _missing_message(spec: str, missing: list[str], total: int, what: str) -> str:
    first = ", ".join(missing[:SHOW_FIRST])
    return (
        f"{spec}: {len(missing)} of {total} {what} (first: {first}); "
        "fix the paths or pass --skip-missing to leave those records out"
    )


# --- shapes ---------------------------------------------------------------------------------------------


def _is_shapes(spec: str) -> bool:
    return spec == "shapes" or spec.startswith("shapes:")


@register_source("shapes", _is_shapes, "shapes[:split[:count[:size]]], e.g. shapes:train:2000:64")
class ShapesSource(ImageCaptionSource):
    """The built-in procedural shapes dataset (`edgeclip.data.shapes`), rendered on demand."""

    def __init__(self, spec: str, dataset: ShapesDataset) -> None:
        super().__init__(spec, [], 0)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @classmethod
    def open(cls, spec: str, skip_missing: bool = False) -> ShapesSource:
        from edgeclip.data.shapes import ShapesDataset

        parts = spec.split(":")[1:]
        if len(parts) > 3:
            raise UsageError(f"shapes source {spec!r}: expected shapes[:split[:count[:size]]]")
        split = parts[0] if parts and parts[0] else "train"
        try:
            count = int(parts[1]) if len(parts) > 1 else None
            size = int(parts[2]) if len(parts) > 2 else 64
        except ValueError:
            raise UsageError(f"shapes source {spec!r}: count and size must be integers") from None
        return cls(spec, ShapesDataset(split=split, size=size, length=count))

    def fingerprint(self) -> str:
        """Shapes are drawn from their index: the split, count and size decide every record."""
        d = self.dataset
        return hashlib.sha256(f"shapes\n{d.split}\n{len(d)}\n{d.size}\n{d.seed}\n".encode()).hexdigest()[:16]

    def record(self, index: int) -> Record:
        """Drawing the item gives its caption; shapes items are cheap to draw."""
        sample = self.dataset[index]
        uid = f"shapes-{self.dataset.split}-{index:07d}"
        return Record(uid, uid, sample.caption, sample.label)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.dataset[index].image)

    def item(self, index: int) -> tuple[Record, Image.Image]:
        sample = self.dataset[index]
        uid = f"shapes-{self.dataset.split}-{index:07d}"
        return Record(uid, uid, sample.caption, sample.label), Image.fromarray(sample.image)

    def find(self, uid: str | None = None, url: str | None = None) -> int | None:
        for key in (uid, url):
            prefix = f"shapes-{self.dataset.split}-"
            if key and key.startswith(prefix) and key[len(prefix) :].isdigit():
                index = int(key[len(prefix) :])
                if index < len(self):
                    return index
        return None


def open_shapes(spec: str) -> ShapesSource:
    """`open_source` for a `shapes[:split[:count[:size]]]` spec, typed as the shapes source its callers read."""
    source = open_source(spec)
    if not isinstance(source, ShapesSource):
        raise UsageError(f"{spec!r} is not a shapes source: expected shapes[:split[:count[:size]]]")
    return source


# --- captions file --------------------------------------------------------------------------------------


def _is_captions_file(spec: str) -> bool:
    return Path(spec).suffix.lower() in (".jsonl", ".csv")


class _FileSource(ImageCaptionSource):
    """Records whose images are local files (`paths`); `url` may be the web address the file came from."""

    paths: list[str] | None = None

    def image(self, index: int) -> Image.Image:
        return load_image(self.paths[index] if self.paths else self._records[index].url)


@register_source("captions", _is_captions_file, "captions.jsonl or captions.csv with image and caption columns")
class CaptionsFileSource(_FileSource):
    """JSONL (one object a line) or CSV (with a header) of image path + caption; paths relative to the file."""

    @classmethod
    def open(cls, spec: str, skip_missing: bool = False) -> CaptionsFileSource:
        path = Path(spec)
        if not path.is_file():
            raise DatasetError(f"captions file {spec} does not exist")
        rows = _read_rows(path)
        records, missing, paths = [], [], []
        for number, row in rows:
            image = _pick(row, IMAGE_KEYS)
            caption = _pick(row, CAPTION_KEYS)
            if image is None or caption is None:
                raise DatasetError(
                    f"{spec} line {number}: expected an image column ({'/'.join(IMAGE_KEYS)}) and a caption "
                    f"column ({'/'.join(CAPTION_KEYS)}), got {sorted(row)}"
                )
            file = Path(image) if Path(image).is_absolute() else path.parent / image
            if not file.is_file():
                missing.append(str(image))
                continue
            label = row.get("label")
            uid = str(row.get("uid") or image)
            origin = row.get("url") if isinstance(row.get("url"), str) and row.get("url") != image else None
            record = Record(uid, origin or str(file), str(caption), int(label) if _is_int_like(label) else None)
            records.append(record)
            paths.append(str(file))
        total = len(records) + len(missing)
        if not total:
            raise DatasetError(f"captions file {spec} holds no records")
        if missing and not skip_missing:
            raise DatasetError(_missing_message(spec, missing, total, "images are missing"))
        if not records:
            raise DatasetError(f"{spec}: all {total} images are missing")
        source = cls(spec, records, len(missing))
        source.paths = paths
        return source


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text (byte {e.start}): expected a UTF-8 captions file") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        return [(n + 2, dict(row)) for n, row in enumerate(reader)]
    return list(iter_json_objects(path, text.splitlines()))


def _pick(row: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _is_int_like(value: object) -> TypeGuard[int | str]:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


# --- image folder with sidecar captions -----------------------------------------------------------------


def _is_folder(spec: str) -> bool:
    return Path(spec).is_dir() and not any(Path(spec).glob("*.tar"))


@register_source("folder", _is_folder, "a folder of images, each with a sidecar caption: cat.jpg + cat.txt")
class SidecarFolderSource(_FileSource):
    """Images in a folder (recursive), each captioned by the .txt file beside it with the same stem."""

    @classmethod
    def open(cls, spec: str, skip_missing: bool = False) -> SidecarFolderSource:
        folder = Path(spec)
        images = list_images(folder)
        records, missing = [], []
        for image in images:
            sidecar = image.with_suffix(".txt")
            relative = image.relative_to(folder).as_posix()
            if not sidecar.is_file():
                missing.append(sidecar.relative_to(folder).as_posix())
                continue
            caption = sidecar.read_text(encoding="utf-8").strip()
            records.append(Record(relative, str(image), caption))
        if not images:
            raise DatasetError(f"{spec}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS)[:6])}, ...)")
        if missing and not skip_missing:
            raise DatasetError(_missing_message(spec, missing, len(images), "caption files are missing"))
        if not records:
            raise DatasetError(f"{spec}: none of the {len(images)} images has a sidecar .txt caption")
        return cls(spec, records, len(missing))


# --- img2dataset webdataset shards -----------------------------------------------------------------------


def _is_shards(spec: str) -> bool:
    path = Path(spec)
    return "{" in spec or path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar")))


@register_source("shards", _is_shards, "img2dataset webdataset shards: 'data/{00000..00009}.tar' (jpg + txt)")
class ShardsSource(ImageCaptionSource):
    """img2dataset output: tar shards with `<key>.jpg` + `<key>.txt` (+ `<key>.json` carrying url/uid)."""

    def __init__(self, spec: str, records: list[Record], where: list[tuple[Path, Member]], skipped: int, bad: dict):
        super().__init__(spec, records, skipped)
        self._where = where
        self.corrupt = bad  # shard path -> why it could not be read whole
        self._reader = TarReader()

    @classmethod
    def open(cls, spec: str, skip_missing: bool = False) -> ShardsSource:
        records, where, missing, bad = [], [], [], {}
        reader = TarReader()
        for shard in shard_paths(spec):
            samples, error = index_tar(shard)
            if error:
                bad[str(shard)] = error
            for sample in samples:
                image_ext = next((e for e in WDS_IMAGE_EXTS if e in sample.members), None)
                if image_ext is None or "txt" not in sample.members:
                    missing.append(f"{shard.name}:{sample.key}")
                    continue
                caption = reader.read(shard, sample.members["txt"]).decode("utf-8", "replace").strip()
                meta = {}
                if "json" in sample.members:
                    try:
                        meta = json.loads(reader.read(shard, sample.members["json"]))
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        meta = {}
                url = str(meta.get("url") or f"{shard.name}/{sample.key}")
                uid = str(meta.get("uid") or meta.get("key") or sample.key)
                records.append(Record(uid, url, caption))
                where.append((shard, sample.members[image_ext]))
        reader.close()
        if missing and not skip_missing:
            raise DatasetError(_missing_message(spec, missing, len(records) + len(missing), "samples lack jpg or txt"))
        if not records:
            raise DatasetError(f"{spec}: no sample with an image and a caption")
        return cls(spec, records, where, len(missing), bad)

    def image(self, index: int) -> Image.Image:
        shard, member = self._where[index]
        data = self._reader.read(shard, member)
        try:
            return load_image(Image.open(io.BytesIO(data)))
        except ImageError:
            raise
        except Exception as e:
            raise ImageError(f"{shard}:{self._records[index].uid}: cannot decode the image ({e})") from None


def image_array(source: ImageCaptionSource, index: int) -> np.ndarray:
    """Record `index` as a uint8 HxWx3 array."""
    return np.asarray(source.image(index))
