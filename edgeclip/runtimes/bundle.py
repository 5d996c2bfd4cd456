"""The bundle reader: validates a bundle folder and runs its encoders through a runtime backend."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip.data.images import ImageLike, image_list
from edgeclip.errors import BundleError
from edgeclip.runtimes.backends import Backend, RuntimeOptions, backend_for_target
from edgeclip.runtimes.heads import HEADS_DIR, Head, check_head_name
from edgeclip.runtimes.manifest import MANIFEST_NAME, BundleManifest
from edgeclip.runtimes.preprocess import preprocess
from edgeclip.runtimes.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tqdm import tqdm


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a package folder (e.g. .mlpackage) over its sorted relative paths and contents."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()


def size_path(path: Path) -> int:
    """Bytes of a file, or of every file in a package folder (e.g. .mlpackage)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _progress(total: int, enabled: bool, desc: str) -> tqdm[Any]:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="item", leave=False)


class Bundle:
    """A loaded bundle: its manifest, tokenizer and lazily created encoder sessions."""

    def __init__(self, path: Path, manifest: BundleManifest, options: RuntimeOptions, backend: str | None) -> None:
        self.path = path
        self.manifest = manifest
        self.options = options
        self.backend_info = backend_for_target(manifest.target, backend)
        self._encoders: dict[str, Backend] = {}
        self._tokenizer: Tokenizer | None = None

    def __repr__(self) -> str:
        m = self.manifest
        return f"Bundle({str(self.path)!r}, model={m.model_id!r}, target={m.target!r}, precision={m.precision!r})"

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def logit_scale(self) -> float:
        return self.manifest.logit_scale

    def file(self, relative: str) -> Path:
        """Absolute path of a bundle file, refusing anything that resolves outside the bundle."""
        root = self.path.resolve()
        resolved = (root / relative).resolve()
        if not resolved.is_relative_to(root):
            raise BundleError(f"{self.path}: {relative!r} resolves outside the bundle")
        return resolved

    def encoder(self, role: str) -> Backend:
        """The runtime session of the 'image' or 'text' encoder, created on first use."""
        if role not in self._encoders:
            spec = self.manifest.encoders[role]
            self._encoders[role] = self.backend_info.factory(self.file(spec.file), spec, self.options)
        return self._encoders[role]

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            spec = self.manifest.tokenizer
            self._tokenizer = Tokenizer.from_file(self.file(spec.file), spec)
        return self._tokenizer

    def _run(self, role: str, batch: np.ndarray) -> np.ndarray:
        name = self.manifest.encoders[role].inputs[0].name
        return np.asarray(self.encoder(role).run({name: batch})[0], dtype=np.float32)

    def encode_image(
        self, images: ImageLike | Sequence[ImageLike], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """L2-normalized image embeddings [N, D] for paths, PIL images or uint8 arrays, in batches."""
        items = image_list(images)
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
        with _progress(len(items), progress, "images") as bar:
            for s in _batches(len(items), batch_size):
                out[s] = self._run("image", preprocess(items[s], self.manifest.preprocess))
                bar.update(s.stop - s.start)
        return out

    def encode_text(self, texts: str | Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """L2-normalized text embeddings [N, D] for strings, tokenized exactly as the source model does."""
        items = [texts] if isinstance(texts, str) else list(texts)
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
        with _progress(len(items), progress, "texts") as bar:
            for s in _batches(len(items), batch_size):
                out[s] = self._run("text", self.tokenizer.encode(items[s]))
                bar.update(s.stop - s.start)
        return out

    def head_path(self, name: str) -> Path:
        return self.path / HEADS_DIR / f"{check_head_name(name)}.npz"

    def head_names(self) -> list[str]:
        """Names of the heads stored in this bundle."""
        folder = self.path / HEADS_DIR
        return sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []

    def load_head(self, name: str) -> Head:
        """A stored head, refused if it was built for another model's weights."""
        path = self.head_path(name)
        if not path.is_file():
            known = ", ".join(self.head_names()) or "none"
            raise BundleError(f"{self.path} has no head {name!r} (heads: {known})")
        head = Head.load(path)
        if head.model_id != self.model_id:
            raise BundleError(
                f"head {name!r} was built for model {head.model_id}, not this bundle's {self.model_id}: "
                "rebuild it with `edgeclip heads add`"
            )
        return head

    def save_head(self, head: Head, *, force: bool = False) -> Path:
        """Store a head in the bundle's heads/ folder; an existing head of that name needs force."""
        path = self.head_path(head.name)
        if path.exists() and not force:
            raise BundleError(f"{path} exists: pass --force to replace it")
        if head.model_id != self.model_id:
            raise BundleError(f"head {head.name!r} belongs to {head.model_id}, not {self.model_id}")
        return head.save(path)

    def remove_head(self, name: str) -> Path:
        """Delete a stored head."""
        path = self.head_path(name)
        if not path.is_file():
            raise BundleError(f"{self.path} has no head {name!r} (heads: {', '.join(self.head_names()) or 'none'})")
        path.unlink()
        return path

    def summary(self) -> dict:
        """The manifest plus what is on disk now: file sizes and stored heads (what `edgeclip info` shows)."""
        files = {rel: size_path(self.file(rel)) for rel in self.manifest.files()}
        return {"path": str(self.path), **self.manifest.to_dict(), "files": files, "heads": self.head_names()}

    def verify(self) -> None:
        """Check every file the manifest names against its recorded sha256."""
        for role, spec in self.manifest.encoders.items():
            actual = sha256_path(self.file(spec.file))
            if actual != spec.sha256:
                raise BundleError(
                    f"{self.path / spec.file}: sha256 {actual[:12]}… differs from the manifest's "
                    f"{spec.sha256[:12]}… ({role} encoder changed or corrupt)"
                )


def load_bundle(
    path: str | Path,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    backend: str | None = None,
    verify: bool = False,
) -> Bundle:
    """Open a bundle folder: read and validate its manifest and check that every file it names is inside."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"bundle {root} does not exist")
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a folder: expected a directory holding {MANIFEST_NAME}")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root} has no {MANIFEST_NAME}: expected a bundle written by `edgeclip export`")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path} could not be read ({e})") from None
    manifest = BundleManifest.from_json(text, str(manifest_path))
    options = RuntimeOptions(tuple(providers) if providers else None, threads)
    bundle = Bundle(root, manifest, options, backend)
    for relative in manifest.files():
        file = bundle.file(relative)
        if not file.exists():
            raise BundleError(f"bundle {root} is missing {relative} (named in its manifest)")
    if verify:
        bundle.verify()
    return bundle
