"""A calibration set: preprocessed pixels (and text strings) stored as one `.npz`, identified by a content hash."""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeclip.calibration.sampling import STRATEGIES, image_features, select
from edgeclip.calibration.text import default_text_strings
from edgeclip.data.images import list_images, load_image
from edgeclip.errors import ImageError, UsageError
from edgeclip.runtimes.checksums import atomic_output
from edgeclip.runtimes.preprocess import PreprocessSpec, preprocess_image

if TYPE_CHECKING:
    from PIL import Image

FORMAT = "edgeclip-calibration/1"
MIN_RECOMMENDED = 64  # fewer images than this calibrate activation ranges poorly: warn
CAPTION_SUFFIXES = (".jsonl", ".tsv")
# (done, total) callback for progress bars; the CLI passes one, the library prints nothing.
Progress = Callable[[int, int], None]
# Optional embedding function for the diverse strategy: preprocessed pixels (N,C,H,W) -> features (N,D).
Embed = Callable[[np.ndarray], np.ndarray]


def _describe(spec: PreprocessSpec) -> str:
    h, w = spec.image_size
    return (
        f"{h}x{w} {spec.resize_mode} {spec.interpolation} mean={list(spec.mean)} std={list(spec.std)} "
        f"{spec.channel_order} {spec.layout}"
    )


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Preprocessed calibration pixels for one PreprocessSpec, the files they came from, and text strings."""

    pixels: np.ndarray  # float32, N x C x H x W (or N x H x W x C for an NHWC spec), already normalized
    preprocess: PreprocessSpec
    sources: tuple[str, ...]  # image paths relative to the folder (or captions file) they were drawn from
    texts: tuple[str, ...]
    strategy: str
    seed: int

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.float32 or self.pixels.ndim != 4:
            raise UsageError(
                f"calibration pixels must be float32 N x C x H x W, got {self.pixels.dtype} {self.pixels.shape}"
            )
        if len(self.sources) != len(self.pixels):
            raise UsageError(f"calibration set has {len(self.pixels)} images but {len(self.sources)} source names")

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def sha256(self) -> str:
        """Content hash over pixels, preprocessing and texts: the id a bundle manifest records."""
        h = hashlib.sha256()
        h.update(json.dumps(self.preprocess.to_dict(), sort_keys=True).encode())
        h.update(str(self.pixels.shape).encode())
        h.update(np.ascontiguousarray(self.pixels).tobytes())
        h.update("\x00".join(self.texts).encode("utf-8"))
        return h.hexdigest()

    @property
    def id(self) -> str:
        return f"calib-{self.sha256[:16]}"

    def describe(self) -> dict[str, object]:
        """What a manifest records about the set (not the pixels)."""
        return {
            "id": self.id,
            "sha256": self.sha256,
            "images": len(self),
            "texts": len(self.texts),
            "strategy": self.strategy,
            "seed": self.seed,
            "preprocess": self.preprocess.to_dict(),
        }

    def check(self, spec: PreprocessSpec, where: str = "calibration set") -> None:
        """Raise if the set was made for other preprocessing than `spec` (naming both)."""
        if self.preprocess != spec:
            raise UsageError(
                f"{where} was made for preprocessing {_describe(self.preprocess)}, "
                f"but the model expects {_describe(spec)}: rebuild it with `edgeclip calibrate --model ...`"
            )

    def subset(self, indices: Sequence[int] | np.ndarray) -> CalibrationSet:
        """The images at `indices` (texts kept), e.g. to hold some out for the accuracy gate."""
        idx = np.asarray(indices, dtype=np.int64)
        return CalibrationSet(
            self.pixels[idx], self.preprocess, tuple(self.sources[i] for i in idx), self.texts, self.strategy, self.seed
        )

    def save(self, path: Path) -> Path:
        """Write the set as one `.npz` (temp file, then rename); returns the path."""
        path = Path(path)
        if path.suffix != ".npz":
            raise UsageError(f"calibration output {path} must end in .npz")
        meta = {
            "format": FORMAT,
            "preprocess": self.preprocess.to_dict(),
            "strategy": self.strategy,
            "seed": self.seed,
            "sha256": self.sha256,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, suffix=".tmp.npz") as tmp:
            np.savez(
                tmp,
                pixels=self.pixels,
                sources=np.array(self.sources, dtype=np.str_),
                texts=np.array(self.texts, dtype=np.str_),
                meta=np.array(json.dumps(meta)),
            )
        return path


def load_calibration_set(path: Path, expect: PreprocessSpec | None = None) -> CalibrationSet:
    """Read a `.npz` written by `CalibrationSet.save`, checking its hash and (if given) its preprocessing."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # else numpy guesses a pickle and says so
        raise UsageError(
            f"{path} is not an edgeclip calibration set (not a .npz archive): make one with `edgeclip calibrate`"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            pixels = data["pixels"]
            sources = tuple(str(s) for s in data["sources"])
            texts = tuple(str(s) for s in data["texts"])
    except FileNotFoundError:
        raise UsageError(f"calibration set {path} does not exist") from None
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise UsageError(
            f"{path} is not an edgeclip calibration set ({e}): make one with `edgeclip calibrate`"
        ) from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path} has calibration format {meta.get('format')!r}: expected {FORMAT!r}")
    calib = CalibrationSet(
        pixels, PreprocessSpec.from_dict(meta["preprocess"]), sources, texts, meta["strategy"], int(meta["seed"])
    )
    if calib.sha256 != meta.get("sha256"):
        raise UsageError(f"{path} is corrupt: its content hash does not match the one recorded when it was written")
    if expect is not None:
        calib.check(expect, where=f"calibration set {path}")
    return calib


def read_captions(path: Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs from a `.jsonl` ({"image": ..., "caption": ...}) or `.tsv` (path<TAB>caption)."""
    path = Path(path)
    if path.suffix not in CAPTION_SUFFIXES:
        raise UsageError(f"captions file {path} must be {' or '.join(CAPTION_SUFFIXES)}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read captions file {path}: {getattr(e, 'strerror', None) or e}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if path.suffix == ".jsonl":
                record = json.loads(line)
                image, caption = record["image"], record.get("caption", "")
            else:
                image, caption = line.split("\t", 1)
        except (ValueError, KeyError, TypeError, RecursionError):
            expected = '{"image": ..., "caption": ...}' if path.suffix == ".jsonl" else "path<TAB>caption"
            raise UsageError(f"{path} line {number} is not {expected}") from None
        pairs.append((path.parent / str(image), str(caption)))
    return pairs


def _candidates(source: Path) -> tuple[list[Path], Path, list[str]]:
    """Image paths, the folder their names are relative to, and captions (from a captions file)."""
    source = Path(source)
    if source.is_file():
        pairs = read_captions(source)
        return [p for p, _ in pairs], source.parent, [c for _, c in pairs if c]
    return list_images(source), source, []


def build_calibration_set(
    source: Path,
    preprocess: PreprocessSpec,
    *,
    count: int = 256,
    strategy: str = "random",
    seed: int = 0,
    texts: Sequence[str] | None = None,
    embed: Embed | None = None,
    progress: Progress | None = None,
) -> tuple[CalibrationSet, list[str]]:
    """Choose `count` images from a folder (recursive) or captions file, preprocess them; also the skipped files.

    Unreadable images are skipped and returned (as "path: reason"); fewer than MIN_RECOMMENDED images warns.
    `diverse` runs farthest-point sampling over cheap image features, or over `embed(pixels)` when given.
    Text strings: `texts`, else the captions file's captions, else built-in templates x label words.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"calibration strategy {strategy!r} is unknown: expected one of {', '.join(STRATEGIES)}")
    if count < 1:
        raise UsageError(f"calibration count must be at least 1, got {count}")
    paths, root, captions = _candidates(source)
    if not paths:
        raise UsageError(f"{source} holds no images: a calibration set needs images from the deployment domain")
    tick = progress or (lambda _done, _total: None)
    skipped: list[str] = []

    def decode(path: Path) -> Image.Image | None:
        try:
            return load_image(path)
        except ImageError as e:
            skipped.append(str(e))
            return None

    def relative(path: Path) -> str:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            return str(path)

    if strategy == "diverse":
        # Every candidate is decoded once for its features; the chosen ones are preprocessed from memory.
        decoded, readable = [], []
        for i, path in enumerate(paths):
            image = decode(path)
            if image is not None:
                decoded.append(image)
                readable.append(path)
            tick(i + 1, len(paths))
        if embed is not None:
            features = (
                np.concatenate(
                    [
                        embed(np.stack([preprocess_image(im, preprocess) for im in decoded[i : i + 32]]))
                        for i in range(0, len(decoded), 32)
                    ]
                )
                if decoded
                else np.zeros((0, 1), np.float32)
            )
        else:
            features = np.stack([image_features(im) for im in decoded]) if decoded else np.zeros((0, 1), np.float32)
        chosen = select(count, len(decoded), "diverse", seed, features) if decoded else np.zeros(0, np.int64)
        pixels = [preprocess_image(decoded[i], preprocess) for i in chosen]
        names = [relative(readable[i]) for i in chosen]
    else:
        # Walk a seeded permutation, decoding only until `count` images were read: unreadable ones are replaced.
        pixels, names = [], []
        for i in select(len(paths), len(paths), "random", seed):
            image = decode(paths[i])
            if image is not None:
                pixels.append(preprocess_image(image, preprocess))
                names.append(relative(paths[i]))
                tick(len(pixels), min(count, len(paths)))
            if len(pixels) == count:
                break
    if not pixels:
        raise UsageError(f"{source}: none of its {len(paths)} images could be read (first: {skipped[0]})")
    if len(pixels) < MIN_RECOMMENDED:
        warnings.warn(
            f"calibration set from {source} has only {len(pixels)} images (fewer than {MIN_RECOMMENDED}): "
            "activation ranges may not cover the deployment domain",
            UserWarning,
            stacklevel=2,
        )
    strings = (
        tuple(texts)
        if texts
        else (tuple(dict.fromkeys(captions))[:count] if captions else default_text_strings(count=count))
    )
    calib = CalibrationSet(np.stack(pixels).astype(np.float32), preprocess, tuple(names), strings, strategy, seed)
    return calib, skipped
