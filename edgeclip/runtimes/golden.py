"""Golden files: a small known-answer set in every bundle, and the check of an app port's dumped stages against it.

A Swift or Kotlin port re-implements decoding, preprocessing and tokenizing; `golden/` holds what each stage must
give for a few photos and tricky strings, so the port can be proven stage by stage without Python on the device
(docs/ports.md). Layout, every file covered by the manifest's checksum of the `golden` folder::

    golden/index.json     format, the images and texts, every array (stage, file, shape, dtype), input contract,
                          tolerances, and where the expected embeddings came from
    golden/images/N.png   the encoded image bytes (PNG, lossless: every correct decoder gives the same pixels)
    golden/NAME.bin       one array: raw little-endian, C order (row-major), no header

Arrays are raw bytes plus a JSON index, not .npy, because Swift (`Data` + `withUnsafeBytes`) and Kotlin
(`ByteBuffer.order(LITTLE_ENDIAN)`) read them in two lines, while .npy needs a parser for its Python-literal header.
A port's dump uses the same layout (an index.json naming .bin files), or .npy files named after the arrays.
Nothing here imports torch: preprocessing and tokenizing are the runtime's own (runtimes.preprocess, .tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.data.images import load_image
from edgeclip.errors import BundleError, EdgeclipError, UsageError
from edgeclip.metrics.parity import PARITY_FLOORS, cosine_rows, mean_floor
from edgeclip.runtimes.checksums import DIGESTS
from edgeclip.runtimes.manifest import BundleManifest, TensorSpec
from edgeclip.runtimes.preprocess import PreprocessSpec, normalize, resize_and_crop
from edgeclip.runtimes.tokenizer import Tokenizer

GOLDEN_DIR = "golden"
INDEX_NAME = "index.json"
FORMAT = "edgeclip-golden"
DUMP_FORMAT = "edgeclip-port-dump"
VERSION = 1
STAGES = ("decode", "resize", "normalize", "tokenize", "encode")
DTYPES = ("uint8", "int32", "int64", "float16", "float32")
# Strings ports get wrong: case, unicode and emoji (byte-level BPE), empty, punctuation and contractions,
# whitespace and HTML entities (text cleaning), and one longer than the context (truncation keeps the end token).
GOLDEN_TEXTS = (
    "a photo of a cat",
    "A DOG Playing In The SNOW",
    "café crème & croissant — 2 €",
    "一只猫坐在窗台上 🚀🌙",
    "",
    "it's a hexagon; they're blue & 'green'!!",
    "  tabs\tand\nnewlines   &amp; entities ",
    "the quick brown fox jumps over the lazy dog " * 12,
)
# Per stage: how a port's array is compared with the golden one. Decoding PNG and tokenizing are exact; a resize may
# differ by rounding only (another implementation of the same antialiased filter), not by filter or aliasing: one
# without antialiasing is off by 0.9-10 levels on these images, another filter by 0.9-20 (docs/ports.md#tolerances).
RESIZE_MEAN_ABS_LEVELS = 0.5  # mean |port - golden| over one image's pixels, in 0..255 levels
NORMALIZE_MAX_ABS = {"float32": 1e-4, "float16": 2e-3}


@dataclass(frozen=True)
class ArrayEntry:
    """One stored array: the stage it belongs to, its file (relative to the folder), shape and dtype."""

    name: str
    stage: str
    file: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "file": self.file, "shape": list(self.shape), "dtype": self.dtype}


def stage_of(name: str) -> str:
    """The stage an array name belongs to: `decode.0` -> decode, `encode.image` -> encode."""
    return name.split(".")[0]


def write_array(folder: Path, name: str, array: np.ndarray) -> ArrayEntry:
    """Write one array as NAME.bin (raw little-endian, C order) and return its index entry."""
    array = np.asarray(array)
    if array.dtype.name not in DTYPES:
        raise UsageError(f"golden array {name} has dtype {array.dtype.name}: expected one of {', '.join(DTYPES)}")
    file = f"{name}.bin"
    (folder / file).write_bytes(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return ArrayEntry(name, stage_of(name), file, tuple(int(d) for d in array.shape), array.dtype.name)


def read_array(folder: Path, entry: ArrayEntry, what: str) -> np.ndarray:
    """Read one .bin array named in an index, checking its size against the shape and dtype the index gives."""
    path = folder / entry.file
    if not path.is_file():
        raise BundleError(f"{what}: {path} is missing (named in {INDEX_NAME} for {entry.name})")
    dtype = np.dtype(entry.dtype).newbyteorder("<")
    data = path.read_bytes()
    expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise BundleError(
            f"{what}: {path} holds {len(data)} bytes: expected {expected} for {entry.name} "
            f"{list(entry.shape)} {entry.dtype}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(entry.shape).astype(entry.dtype)


def input_contract(manifest_preprocess: PreprocessSpec, image: TensorSpec, text: TensorSpec, tokenizer: Any) -> dict:
    """What the encoder files take, stated once for port authors (and written into the golden index)."""
    height, width = manifest_preprocess.image_size
    float_input = image.dtype.startswith("float")
    return {
        "image": {
            "input": image.name,
            "shape": list(image.shape),
            "dtype": image.dtype,
            "layout": manifest_preprocess.layout if float_input else "NHWC",
            "channel_order": manifest_preprocess.channel_order,
            "size": [height, width],
            "values": (
                "(rgb / 255 - mean) / std per channel, rgb the resized uint8 image"
                if float_input
                else "the resized RGB image itself, uint8 0..255 (normalization is inside the model)"
            ),
            "mean": list(manifest_preprocess.mean),
            "std": list(manifest_preprocess.std),
            "resize": (
                f"{manifest_preprocess.resize_mode} side to {height}x{width}, {manifest_preprocess.interpolation} "
                "with antialiasing (Pillow), then centre crop"
            ),
        },
        "text": {
            "input": text.name,
            "shape": list(text.shape),
            "dtype": text.dtype,
            "context_length": tokenizer.context_length,
            "sot_id": tokenizer.sot_id,
            "eot_id": tokenizer.eot_id,
            "pad_id": tokenizer.pad_id,
            "clean": tokenizer.clean,
            "values": "[sot] + BPE ids of the cleaned text + [eot], padded; cut to context_length with eot last",
        },
    }


def build_golden(
    folder: Path,
    images: Sequence[tuple[bytes, str]],
    spec: PreprocessSpec,
    tokenizer: Tokenizer,
    image_input: TensorSpec,
    text_input: TensorSpec,
    embed: Callable[[str, np.ndarray], np.ndarray],
    embeddings_from: str,
    texts: Sequence[str] = GOLDEN_TEXTS,
) -> dict[str, Any]:
    """Write golden/ into `folder`: images (PNG bytes), every stage's arrays and the index; returns the index.

    `embed(role, batch)` runs one encoder ("image" or "text") on a batch as the bundle reader hands it to a backend
    (normalized float32 pixels, int64 token ids); `embeddings_from` says what ran
    (the written encoder file through its runtime, or PyTorch where the runtime cannot run here).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    entries: list[ArrayEntry] = []
    image_records = []
    resized = []
    for i, (png, source) in enumerate(images):
        file = f"images/{i}.png"
        (folder / file).write_bytes(png)
        rgb = load_image(folder / file)
        decoded = np.asarray(rgb)
        entries.append(write_array(folder, f"decode.{i}", decoded))
        resized.append(resize_and_crop(rgb, spec))
        image_records.append({"file": file, "source": source, "width": rgb.size[0], "height": rgb.size[1]})
    resize = np.stack(resized)
    pixels = np.stack([normalize(r, spec) for r in resized])
    image_dtype = image_input.dtype if image_input.dtype.startswith("float") else "float32"
    tokens = tokenizer.encode(list(texts)).astype(text_input.dtype)
    entries.append(write_array(folder, "resize", resize))
    entries.append(write_array(folder, "normalize", pixels.astype(image_dtype)))
    entries.append(write_array(folder, "tokenize", tokens))
    # The encoders run on what the bundle reader hands every backend (float32 pixels, int64 ids); each casts.
    entries.append(write_array(folder, "encode.image", np.asarray(embed("image", pixels), np.float32)))
    entries.append(write_array(folder, "encode.text", np.asarray(embed("text", tokens.astype(np.int64)), np.float32)))
    index = {
        "format": FORMAT,
        "version": VERSION,
        "byte_order": "little",
        "order": "C",
        "images": image_records,
        "texts": list(texts),
        "arrays": {e.name: e.to_dict() for e in entries},
        "input_contract": input_contract(spec, image_input, text_input, tokenizer.spec),
        "preprocess": spec.to_dict(),
        "embeddings_from": embeddings_from,
        "tolerances": {
            "decode": "exact",
            "resize": f"mean absolute difference <= {RESIZE_MEAN_ABS_LEVELS} levels (0..255)",
            "normalize": f"max absolute difference <= {NORMALIZE_MAX_ABS}",
            "tokenize": "exact",
            "encode": "min cosine to the expected embeddings >= this, by the bundle's precision: "
            + str({p: mean_floor(p) for p in PARITY_FLOORS}),
        },
    }
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return index


# --- reading ---------------------------------------------------------------------------------------------------


def _entries(arrays: Any, where: str, error: type[EdgeclipError] = BundleError) -> dict[str, ArrayEntry]:
    """The index's arrays; a .bin file needs its shape and dtype (a .npy file carries its own)."""
    if not isinstance(arrays, Mapping):
        raise error(f"{where}: 'arrays' is {str(arrays)[:60]!r}: expected an object of name -> array")
    out = {}
    for name, item in arrays.items():
        try:
            file = str(item["file"])
            own = file.endswith(".npy")
            shape = tuple(int(d) for d in item["shape"]) if not own or item.get("shape") is not None else ()
            dtype = str(item["dtype"]) if not own else str(item.get("dtype", ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise error(
                f"{where}: array {name!r} needs file, shape and dtype (shape and dtype may be left out for .npy)"
            ) from None
        if Path(file).is_absolute() or ".." in Path(file).parts:
            raise error(f"{where}: array {name!r} file {file!r} leaves the folder")
        out[str(name)] = ArrayEntry(str(name), stage_of(str(name)), file, shape, dtype)
    return out


@dataclass(frozen=True)
class Golden:
    """A bundle's golden set, read and checksum-verified: the index and its arrays on demand."""

    folder: Path
    index: dict[str, Any]
    arrays: dict[str, ArrayEntry] = field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        return read_array(self.folder, self.arrays[name], f"golden set {self.folder}")

    @property
    def texts(self) -> list[str]:
        return list(self.index.get("texts", []))

    @property
    def images(self) -> list[dict[str, Any]]:
        return list(self.index.get("images", []))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def summary(self) -> dict[str, Any]:
        """What `info` shows: counts, size and where the expected embeddings came from."""
        return {
            "images": len(self.images),
            "texts": len(self.texts),
            "arrays": len(self.arrays),
            "size_bytes": self.size_bytes(),
            "embeddings_from": self.index.get("embeddings_from"),
        }


def load_golden(root: Path, manifest: BundleManifest, verify: bool = True) -> Golden | None:
    """The golden set of the bundle at `root`, or None for a bundle written without one (older edgeclip)."""
    folder = root / GOLDEN_DIR
    if not folder.exists() and GOLDEN_DIR not in manifest.checksums:
        return None
    if folder.is_symlink() or not folder.is_dir():
        raise BundleError(f"{folder} is missing, a symlink or not a folder: expected the bundle's golden files")
    expected = manifest.checksums.get(GOLDEN_DIR)
    if verify:
        if expected is None:
            raise BundleError(f"{folder} is not covered by the manifest's checksums: expected only files it names")
        actual = DIGESTS.digest(folder)
        if actual != expected:
            raise BundleError(
                f"{folder}: sha256 {actual[:12]}… differs from the manifest's {expected[:12]}… (golden files changed "
                "or corrupt)"
            )
    index = _read_index(folder / INDEX_NAME, FORMAT)
    return Golden(folder, index, _entries(index.get("arrays"), str(folder / INDEX_NAME)))


def _read_index(path: Path, expected_format: str) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: expected the index of the {path.parent.name} folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} could not be read as JSON ({e})") from None
    if not isinstance(index, dict) or index.get("format") != expected_format:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise BundleError(f"{path}: format is {found!r}: expected {expected_format!r}")
    if int(index.get("version", 0)) > VERSION:
        raise BundleError(f"{path}: version {index.get('version')} is newer than this edgeclip reads ({VERSION})")
    return index


# --- checking a port -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    """One stage of a port against the goldens: passed, failed (with the first item that differs) or not dumped."""

    stage: str
    status: str  # "pass", "fail" or "missing"
    metric: str = ""  # what was measured, e.g. "mean abs difference (levels)"
    error: float | None = None  # the worst value of that metric over the stage's arrays
    tolerance: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": self.status,
            "metric": self.metric,
            "error": self.error,
            "tolerance": self.tolerance,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class PortReport:
    """Every stage's result, in pipeline order, and the first stage that differs (None: the port matches)."""

    stages: tuple[StageResult, ...]

    @property
    def first_failure(self) -> StageResult | None:
        return next((s for s in self.stages if s.status == "fail"), None)

    @property
    def ok(self) -> bool:
        return self.first_failure is None and any(s.status == "pass" for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_failure
        return {
            "ok": self.ok,
            "first_failure": first.stage if first else None,
            "stages": [s.to_dict() for s in self.stages],
        }


class PortDump:
    """A port's dumped arrays: DUMP_DIR/index.json naming .bin (or .npy) files, or NAME.npy files alone."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            what = "does not exist" if not self.folder.exists() else "is not a folder"
            raise UsageError(f"port dump {self.folder} {what}: expected a folder of dumped arrays (docs/ports.md)")
        index_path = self.folder / INDEX_NAME
        self.entries: dict[str, ArrayEntry] = {}
        if index_path.is_file():
            try:
                index = _read_index(index_path, DUMP_FORMAT)
            except BundleError as e:
                raise UsageError(str(e)) from None
            self.entries = _entries(index.get("arrays"), str(index_path), UsageError)

    def has(self, name: str) -> bool:
        return name in self.entries or (not self.entries and (self.folder / f"{name}.npy").is_file())

    def load(self, name: str) -> np.ndarray:
        """The dumped array `name`: from its .npy (shape and dtype from the file) or .bin (from the index)."""
        entry = self.entries.get(name)
        file = entry.file if entry else f"{name}.npy"
        if file.endswith(".npy"):
            try:
                return np.load(self.folder / file, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UsageError(f"port dump {self.folder / file} is not a readable .npy array ({e})") from None
        assert entry is not None  # a .bin file is only ever named by the index
        if entry.dtype not in DTYPES:
            raise UsageError(
                f"port dump {entry.name}: dtype {entry.dtype!r} is not one of {', '.join(DTYPES)} (stage {entry.stage})"
            )
        try:
            return read_array(self.folder, entry, f"port dump {self.folder}")
        except BundleError as e:
            raise UsageError(str(e)) from None


def _shape_problem(stage: str, name: str, got: np.ndarray, want: np.ndarray) -> StageResult | None:
    if got.shape != want.shape or got.dtype != want.dtype:
        return StageResult(
            stage,
            "fail",
            detail=(
                f"{name} is {list(got.shape)} {got.dtype}: expected {list(want.shape)} {want.dtype} "
                "(wrong shape or dtype)"
            ),
        )
    return None


def check_port(golden: Golden, dump: PortDump, spec: PreprocessSpec, precision: str) -> PortReport:
    """Compare a port's dumped stages with the goldens; each stage is judged on its own, first failure named.

    `spec` is the bundle's preprocessing (normalizing is judged on the port's own resize where it dumped one) and
    `precision` the bundle's (the encode stage is held to that precision's parity floor).
    """
    results = []
    image_count = len(golden.images)
    for stage in STAGES:
        names = [n for n in golden.arrays if golden.arrays[n].stage == stage]
        if stage == "decode":
            names = [f"decode.{i}" for i in range(image_count)]
        present = [n for n in names if dump.has(n)]
        if not present:
            results.append(StageResult(stage, "missing", detail=f"not dumped (expected {', '.join(names)})"))
            continue
        results.append(_check_stage(stage, present, golden, dump, spec, precision))
    return PortReport(tuple(results))


def _check_stage(
    stage: str, names: list[str], golden: Golden, dump: PortDump, spec: PreprocessSpec, precision: str
) -> StageResult:
    worst: float | None = None
    metric, tolerance = "", 0.0
    for name in names:
        want = golden.array(name)
        got = dump.load(name)
        bad = _shape_problem(stage, name, got, want)
        if bad is not None:
            return bad
        if stage in ("decode", "tokenize"):
            metric = "max abs difference (levels)" if stage == "decode" else "token ids differing"
            tolerance = 0.0
            differs = np.argwhere(got != want)
            if len(differs):
                return _exact_failure(stage, name, got, want, differs, golden.texts, metric)
        elif stage == "resize":
            metric, tolerance = "mean abs difference (levels)", RESIZE_MEAN_ABS_LEVELS
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            per_image = diff.reshape(len(diff), -1).mean(axis=1)
            worst = max(worst or 0.0, float(per_image.max()))
            if worst > tolerance:
                i = int(per_image.argmax())
                return StageResult(
                    stage,
                    "fail",
                    metric,
                    worst,
                    tolerance,
                    f"image {i}: mean abs difference {per_image[i]:.2f} levels, max {diff[i].max():.0f} (a resize "
                    "without antialiasing, another filter or another crop)",
                )
        elif stage == "normalize":
            tolerance = NORMALIZE_MAX_ABS.get(want.dtype.name, NORMALIZE_MAX_ABS["float32"])
            metric = "max abs difference"
            reference = want.astype(np.float64)
            own = dump.load("resize") if dump.has("resize") else None
            if own is not None and own.shape == golden.arrays["resize"].shape and own.dtype == np.uint8:
                # Judged on the port's own resize, so that a resize error is not blamed on normalizing.
                reference = np.stack([normalize(r, spec) for r in own]).astype(np.float64)
                metric = "max abs difference (to the port's own resize, normalized)"
            diff = np.abs(got.astype(np.float64) - reference)
            worst = max(worst or 0.0, float(diff.max()))
            if worst > tolerance:
                where = tuple(int(v) for v in np.unravel_index(int(diff.argmax()), diff.shape))
                return StageResult(
                    stage,
                    "fail",
                    metric,
                    worst,
                    tolerance,
                    f"{name}{list(where)} is {float(got[where]):.5f}, expected {float(reference[where]):.5f} "
                    "(mean/std, channel order, layout or value range)",
                )
        else:  # encode
            # A port runs the bundle's own file: every row is held to the precision's mean floor (0.99 for int8).
            tolerance = mean_floor(precision) or PARITY_FLOORS["fp32"]
            metric = "min cosine to the expected embeddings"
            cos = cosine_rows(want, got)
            low = float(cos.min())
            worst = low if worst is None else min(worst, low)
            if low < tolerance:
                return StageResult(
                    stage, "fail", metric, low, tolerance, f"{name} row {int(cos.argmin())}: cosine {low:.6f}"
                )
    if stage in ("decode", "tokenize"):
        worst = 0.0
    return StageResult(stage, "pass", metric, worst, tolerance, f"{len(names)} array(s) within tolerance")


def _exact_failure(
    stage: str, name: str, got: np.ndarray, want: np.ndarray, differs: np.ndarray, texts: list[str], metric: str
) -> StageResult:
    """A decode or tokenize failure: the first element (or text and id position) that differs."""
    where = tuple(int(v) for v in differs[0])
    if stage == "tokenize":
        row, col = where
        text = texts[row] if row < len(texts) else "?"
        detail = (
            f"text {row} {text[:40]!r}: ids differ from position {col} (port {got[row, col : col + 4].tolist()}, "
            f"expected {want[row, col : col + 4].tolist()})"
        )
        return StageResult(stage, "fail", metric, float(len(np.unique(differs[:, 0]))), 0.0, detail)
    error = float(np.abs(got.astype(np.int64) - want.astype(np.int64)).max())
    return StageResult(
        stage, "fail", metric, error, 0.0, f"{name}{list(where)} is {got[where]}, expected {want[where]}"
    )


def check_port_dump(bundle: str | Path, dump_dir: str | Path, *, verify: bool = True) -> PortReport:
    """`edgeclip check-port`: a port's dump folder against the golden set of the bundle at `bundle`."""
    from edgeclip.runtimes.bundle import load_bundle

    loaded = load_bundle(bundle, verify=verify)
    golden = load_golden(loaded.path, loaded.manifest, verify=verify)
    if golden is None:
        raise BundleError(
            f"{loaded.path} has no golden files (written by an edgeclip before they existed): re-export it to get them"
        )
    dump = PortDump(Path(dump_dir))
    return check_port(golden, dump, loaded.manifest.preprocess, loaded.manifest.precision)
