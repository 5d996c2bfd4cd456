"""The bundle reader: validates a bundle folder and runs its encoders through a runtime backend."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip.data.images import ImageLike, image_list
from edgeclip.errors import BundleError
from edgeclip.runtimes.backends import AUTO, Backend, BackendInfo, RuntimeOptions, backend_for_target
from edgeclip.runtimes.checksums import DIGESTS, atomic_output, sha256_file, sha256_path
from edgeclip.runtimes.heads import HEADS_DIR, Head, check_head_name
from edgeclip.runtimes.manifest import MANIFEST_NAME, BundleManifest, EncoderSpec
from edgeclip.runtimes.preprocess import preprocess
from edgeclip.runtimes.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tqdm import tqdm

    from edgeclip.runtimes.backends.auto import Choice


def size_path(path: Path) -> int:
    """Bytes of a file, or of every file in a package folder (e.g. .mlpackage)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def encoder_files(manifest: BundleManifest, role: str) -> tuple[str, ...]:
    """An encoder's file and its same-named companions the manifest covers (e.g. an OpenVINO IR's .bin)."""
    main = manifest.encoders[role].file
    stem = PurePosixPath(main).with_suffix("").as_posix()
    companions = sorted(
        r for r in manifest.checksums if r != main and PurePosixPath(r).with_suffix("").as_posix() == stem
    )
    return (main, *companions)


def encoder_bytes(root: Path, manifest: BundleManifest, role: str) -> int:
    """Bytes an app ships for one encoder of the bundle at `root`: its file or package folder, and companions."""
    return sum(size_path(root / relative) for relative in encoder_files(manifest, role))


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _progress(total: int, enabled: bool, desc: str) -> tqdm[Any]:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="item", leave=False)


@contextlib.contextmanager
def _bundle_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the bundle folder while its manifest is read, changed and rewritten."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: heads are rarely written concurrently there
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write through a temporary file beside `path` and rename it into place, with the mode the umask gives."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


class Bundle:
    """A loaded bundle: its manifest, tokenizer and lazily created encoder sessions.

    With `verify` (the default of `load_bundle`), every file is checked against the manifest's sha256 as it is
    first read: encoders when their session is created, the tokenizer on first use, a head when loaded.
    """

    def __init__(
        self,
        path: Path,
        manifest: BundleManifest,
        options: RuntimeOptions,
        backend: str | None,
        verify: bool = True,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.options = options
        self.verify_on_load = verify
        self._encoders: dict[str, Backend] = {}
        self._tokenizer: Tokenizer | None = None
        self._warned_unchecked = False
        self.choice: Choice | None = None  # what `auto` picked and why (None: the backend was named or the default)
        if backend == AUTO:
            from edgeclip.runtimes.backends.auto import choose_backend

            for role in manifest.encoders:  # a changed file is the bundle's fault, not a candidate's: say so first
                self._encoder_file(role)

            self.choice, self.options, self._encoders = choose_backend(manifest, options, self._open)
            self.backend_info = backend_for_target(manifest.target, self.choice.candidate.backend)
        else:
            self.backend_info = backend_for_target(manifest.target, backend)
        self.backend_reason = (
            f"auto: {self.choice.reason}{' (cached)' if self.choice.cached else ''}"
            if self.choice is not None
            else "asked"
            if backend is not None
            else f"the {manifest.target} target's own backend"
        )

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
        """Absolute path of a bundle file, refusing anything that resolves outside the bundle (symlinks included)."""
        root = self.path.resolve()
        try:
            resolved = (root / relative).resolve()
        except (OSError, ValueError) as e:
            raise BundleError(f"{self.path}: {relative!r} cannot be resolved ({e})") from None
        if not resolved.is_relative_to(root) or resolved == root:
            raise BundleError(f"{self.path}: {relative!r} resolves outside the bundle: expected a file inside it")
        return resolved

    def _checked(self, relative: str) -> Path:
        """The path of a bundle file about to be read, after checking its sha256 when verifying on load."""
        path = self.file(relative)
        if not self.verify_on_load:
            return path
        expected = self.manifest.expected_sha256(relative)
        if relative.startswith(f"{HEADS_DIR}/"):
            expected = self._current_head_checksum(relative, expected)
        if expected is None:
            if self.manifest.covers_every_file:
                raise BundleError(
                    f"{self.path / relative} is not covered by the manifest's checksums: expected only files the "
                    "manifest names (add heads with `edgeclip heads add`; --no-verify skips the check)"
                )
            if not self._warned_unchecked:
                self._warned_unchecked = True
                warnings.warn(
                    f"{self.path} was written before edgeclip recorded checksums for every file (format "
                    f"{self.manifest.format_version}): only its encoders are verified; re-export it",
                    stacklevel=3,
                )
            return path
        if not path.exists():
            raise BundleError(f"bundle {self.path} is missing {relative} (named in its manifest)")
        actual = DIGESTS.digest(path)
        if actual != expected:
            raise BundleError(
                f"{self.path / relative}: sha256 {actual[:12]}… differs from the manifest's {expected[:12]}… "
                f"({self._what(relative)} changed or corrupt; --no-verify skips the check)"
            )
        return path

    def _current_head_checksum(self, relative: str, known: str | None) -> str | None:
        """A head's sha256 as manifest.json records it now: heads may be added or replaced after this Bundle loaded."""
        manifest_path = self.path / MANIFEST_NAME
        try:
            current = BundleManifest.from_json(manifest_path.read_text(encoding="utf-8"), str(manifest_path))
        except (OSError, UnicodeDecodeError, BundleError):
            return known
        if current.model_id != self.model_id:
            return known  # the bundle was re-exported under us: its new heads are not this model's
        self.manifest = dataclasses.replace(
            self.manifest,
            checksums={
                **self.manifest.checksums,
                **{k: v for k, v in current.checksums.items() if k.startswith(f"{HEADS_DIR}/")},
            },
        )
        return current.checksums.get(relative)

    def _what(self, relative: str) -> str:
        roles = [role for role, enc in self.manifest.encoders.items() if enc.file == relative]
        if roles:
            return f"{roles[0]} encoder"
        return "tokenizer" if relative == self.manifest.tokenizer.file else "file"

    def encoder_bytes(self, role: str) -> int:
        """Bytes an app ships for one encoder: its file (or package folder) and companions, e.g. an IR's .bin."""
        return encoder_bytes(self.path, self.manifest, role)

    def _encoder_file(self, role: str) -> Path:
        """An encoder's file, checked with its same-named companions (e.g. an IR's .bin) when verifying on load."""
        main, *companions = encoder_files(self.manifest, role)
        for relative in companions:
            self._checked(relative)
        return self._checked(main)

    def _open(self, info: BackendInfo, options: RuntimeOptions, role: str) -> Backend:
        """A session of one encoder on one backend, its files checked first."""
        spec = self.manifest.encoders[role]
        session = info.factory(self._encoder_file(role), spec, options)
        _check_session_inputs(self.path / spec.file, role, spec, session, self.embed_dim)
        return session

    def encoder(self, role: str) -> Backend:
        """The runtime session of the 'image' or 'text' encoder, created on first use."""
        if role not in self._encoders:
            self._encoders[role] = self._open(self.backend_info, self.options, role)
        return self._encoders[role]

    def runtime_summary(self) -> dict[str, Any]:
        """The backend that runs this bundle, how (e.g. OpenVINO's precision) and why it was picked."""
        session = self.encoder("image")
        describe = getattr(session, "describe", None)
        return {
            "backend": self.backend_info.name,
            "runs": describe() if callable(describe) else ", ".join(getattr(session, "providers", ())) or None,
            "precision_hint": self.options.precision_hint,
            "why": self.backend_reason,
            **({"auto": self.choice.to_dict()} if self.choice is not None else {}),
        }

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            spec = self.manifest.tokenizer
            self._tokenizer = Tokenizer.from_file(self._checked(spec.file), spec)
        return self._tokenizer

    def _run(self, role: str, batch: np.ndarray) -> np.ndarray:
        spec = self.manifest.encoders[role]
        name = spec.inputs[0].name
        encoder = self.encoder(role)
        try:
            out = np.asarray(encoder.run({name: batch})[0], dtype=np.float32)
        except Exception as e:  # each runtime raises its own types for an input the model does not take
            detail = " ".join(str(e).split())[:300] or type(e).__name__
            raise BundleError(
                f"{self.path / spec.file}: the {role} encoder refused an input of shape {list(batch.shape)} "
                f"built from the manifest ({detail}): expected the manifest to describe this encoder"
            ) from None
        if out.ndim != 2 or out.shape != (batch.shape[0], self.embed_dim):
            raise BundleError(
                f"{self.path / spec.file}: the {role} encoder returned shape {list(out.shape)}: expected "
                f"[{batch.shape[0]}, {self.embed_dim}] (the manifest's embed_dim)"
            )
        return out

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

    def _heads_folder(self) -> Path:
        """The heads/ folder, refused when it is a symlink or resolves outside the bundle."""
        folder = self.path / HEADS_DIR
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise BundleError(
                f"{folder} is a symlink or not a folder: expected a plain heads/ folder inside the bundle"
            )
        self.file(HEADS_DIR)
        return folder

    def head_path(self, name: str) -> Path:
        return self._heads_folder() / f"{check_head_name(name)}.npz"

    def head_names(self) -> list[str]:
        """Names of the heads stored in this bundle."""
        folder = self._heads_folder()
        return sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []

    def load_head(self, name: str) -> Head:
        """A stored head, refused if it was built for another model's weights or another embedding size."""
        path = self.head_path(name)
        if not path.is_file():
            known = ", ".join(self.head_names()) or "none"
            raise BundleError(f"{self.path} has no head {name!r} (heads: {known})")
        head = Head.load(self._checked(f"{HEADS_DIR}/{path.name}"))
        if head.model_id != self.model_id:
            raise BundleError(
                f"head {name!r} was built for model {head.model_id}, not this bundle's {self.model_id}: "
                "rebuild it with `edgeclip heads add`"
            )
        if head.embeddings.shape[1] != self.embed_dim:
            raise BundleError(
                f"head file {path} holds {head.embeddings.shape[1]}-dim embeddings: expected {self.embed_dim} "
                "(this bundle's embed_dim); rebuild it with `edgeclip heads add`"
            )
        return head

    def _record_checksum(self, relative: str, sha256: str | None) -> None:
        """Add (or with None drop) a file's sha256 in manifest.json, rewritten atomically; call under the lock.

        The JSON is edited as read, so fields a newer minor version added are kept.
        """
        manifest_path = self.path / MANIFEST_NAME
        text = manifest_path.read_text(encoding="utf-8")
        current = BundleManifest.from_json(text, str(manifest_path))  # refuses a manifest it cannot read
        data = json.loads(text)
        checksums = dict(current.checksums)
        if sha256 is None:
            checksums.pop(relative, None)
        else:
            checksums[relative] = sha256
        data["checksums"] = dict(sorted(checksums.items()))
        write_file_atomically(manifest_path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
        self.manifest = dataclasses.replace(current, checksums=checksums)

    def save_head(self, head: Head, *, force: bool = False) -> Path:
        """Store a head in heads/ and record its sha256 in the manifest; an existing head of that name needs force."""
        path = self.head_path(head.name)
        if head.model_id != self.model_id:
            raise BundleError(f"head {head.name!r} belongs to {head.model_id}, not {self.model_id}")
        with _bundle_lock(self.path):
            if path.exists() and not force:
                raise BundleError(f"{path} exists: pass --force to replace it")
            if path.is_symlink():
                path.unlink()  # replace the link itself, never the file it points to
            head.save(path)
            self._record_checksum(f"{HEADS_DIR}/{path.name}", sha256_file(path))
        return path

    def remove_head(self, name: str) -> Path:
        """Delete a stored head (a symlink is removed, never what it points to) and drop its sha256."""
        path = self.head_path(name)
        if not (path.is_file() or path.is_symlink()):
            raise BundleError(f"{self.path} has no head {name!r} (heads: {', '.join(self.head_names()) or 'none'})")
        with _bundle_lock(self.path):
            path.unlink()
            self._record_checksum(f"{HEADS_DIR}/{path.name}", None)
        return path

    def summary(self) -> dict:
        """The manifest plus what is on disk now: file sizes and stored heads (what `edgeclip info` shows)."""
        files = {rel: size_path(self.file(rel)) for rel in self.manifest.files()}
        return {"path": str(self.path), **self.manifest.to_dict(), "files": files, "heads": self.head_names()}

    def verify(self) -> None:
        """Check every file against the manifest's sha256, and (format 1.1 on) that the bundle holds no other file."""
        named = {enc.file for enc in self.manifest.encoders.values()} | set(self.manifest.checksums)
        for relative in sorted(named):
            path = self.file(relative)
            if not path.exists():
                raise BundleError(f"bundle {self.path} is missing {relative} (named in its manifest)")
            actual = sha256_path(path)
            expected = self.manifest.expected_sha256(relative)
            if actual != expected:
                raise BundleError(
                    f"{self.path / relative}: sha256 {actual[:12]}… differs from the manifest's "
                    f"{(expected or '')[:12]}… ({self._what(relative)} changed or corrupt)"
                )
        if not self.manifest.covers_every_file:
            return
        root = self.path.resolve()
        for item in sorted(root.rglob("*")):
            relative = item.relative_to(root).as_posix()
            covered = relative == MANIFEST_NAME or any(relative == n or relative.startswith(n + "/") for n in named)
            if item.is_symlink() or (item.is_file() and not covered):
                raise BundleError(
                    f"{self.path / relative} is not covered by the manifest's checksums: expected only the files "
                    "the manifest names"
                )


def _check_session_inputs(path: Path, role: str, spec: EncoderSpec, session: Backend, embed_dim: int) -> None:
    """Where the runtime says what its model takes (ONNX Runtime does), the manifest must name the same inputs."""
    meta = getattr(session, "session", None)
    get_inputs = getattr(meta, "get_inputs", None)
    if get_inputs is None:
        return
    actual = [(i.name, list(i.shape)) for i in get_inputs()]
    expected = [(t.name, list(t.shape)) for t in spec.inputs]
    if [a[0] for a in actual] != [e[0] for e in expected]:
        raise BundleError(
            f"{path}: the {role} encoder takes inputs {[a[0] for a in actual]}: expected {[e[0] for e in expected]} "
            "as the manifest says (encoder replaced or manifest edited)"
        )
    outputs = meta.get_outputs() if meta is not None and hasattr(meta, "get_outputs") else []
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if isinstance(width, int) and width != embed_dim:
        raise BundleError(
            f"{path}: the {role} encoder returns {width}-dim embeddings: expected {embed_dim}, the manifest's embed_dim"
        )
    for (name, shape), (_, want) in zip(actual, expected, strict=True):
        fixed = [(a, w) for a, w in zip(shape, want, strict=False) if isinstance(a, int) and isinstance(w, int)]
        if len(shape) != len(want) or any(a != w for a, w in fixed):
            raise BundleError(
                f"{path}: the {role} encoder's input {name!r} has shape {shape}: expected {want} as the manifest says"
            )


def load_bundle(
    path: str | Path,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    backend: str | None = None,
    verify: bool = True,
    precision_hint: str | None = None,
) -> Bundle:
    """Open a bundle folder: read and validate its manifest and check that every file it names is inside.

    `verify` (default) checks each file's sha256 against the manifest as it is first read; pass False only for
    a bundle already verified (e.g. with `edgeclip info`). `backend`: None runs the target's own backend, a name
    that backend, "auto" the fastest installed one by a cached probe (edgeclip.runtimes.backends.auto).
    `precision_hint`: "f32" (exact), "bf16" or "auto", for backends that choose their CPU arithmetic (OpenVINO).
    """
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
    options = RuntimeOptions(tuple(providers) if providers else None, threads, precision_hint)
    bundle = Bundle(root, manifest, options, backend if backend != AUTO else None, verify)
    for relative in manifest.files():
        file = bundle.file(relative)
        if not file.exists():
            raise BundleError(f"bundle {root} is missing {relative} (named in its manifest)")
    if backend == AUTO:  # probe only once the bundle's files are known to be there
        bundle = Bundle(root, manifest, options, AUTO, verify)
    return bundle


__all__ = [
    "Bundle",
    "encoder_bytes",
    "encoder_files",
    "load_bundle",
    "sha256_file",
    "sha256_path",
    "size_path",
    "write_file_atomically",
]
