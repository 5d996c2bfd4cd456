"""Heads: precomputed label embeddings stored in a bundle's `heads/` folder, bound to one model."""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.errors import BundleError, UsageError

HEADS_DIR = "heads"
HEAD_FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_head_name(name: str) -> str:
    """Head names become file names, so they are kept to a safe alphabet."""
    if not _NAME.match(name) or name.endswith("."):
        raise UsageError(
            f"head name {name!r} is not allowed: expected letters, digits, '_', '-' or '.', at most 64, "
            "starting with a letter or digit"
        )
    return name


def check_labels(labels: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Labels must be non-empty, non-blank and unique: their order is the class order."""
    cleaned = tuple(label.strip() for label in labels)
    if not cleaned:
        raise UsageError("the label list is empty: expected at least one label, e.g. --labels cat,dog")
    blank = [i for i, label in enumerate(cleaned) if not label]
    if blank:
        raise UsageError(f"label number {blank[0] + 1} is blank: expected non-empty labels")
    seen: set[str] = set()
    for label in cleaned:
        if label in seen:
            raise UsageError(f"label {label!r} appears twice: labels must be unique")
        seen.add(label)
    return cleaned


@dataclass(frozen=True)
class Head:
    """Class embeddings [C, D] (L2-normalized), their labels in class order, and how they were made."""

    name: str
    kind: str
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    model_id: str
    embeddings: np.ndarray

    def save(self, path: Path) -> Path:
        """Write the head as .npz through a temporary file, so a crash never leaves half a head."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    format_version=np.array(HEAD_FORMAT_VERSION),
                    name=np.array(self.name),
                    kind=np.array(self.kind),
                    labels=np.array(self.labels, dtype=str),
                    templates=np.array(self.templates, dtype=str),
                    model_id=np.array(self.model_id),
                    embeddings=self.embeddings.astype(np.float32),
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: Path) -> Head:
        """Read a head written by `save`; never unpickles."""
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["format_version"])
                if version > HEAD_FORMAT_VERSION:
                    raise BundleError(f"head {path} has format version {version}: upgrade edgeclip to read it")
                head = cls(
                    name=str(data["name"]),
                    kind=str(data["kind"]),
                    labels=tuple(str(x) for x in data["labels"]),
                    templates=tuple(str(x) for x in data["templates"]),
                    model_id=str(data["model_id"]),
                    embeddings=np.asarray(data["embeddings"], dtype=np.float32),
                )
        except FileNotFoundError:
            raise BundleError(f"head file {path} does not exist") from None
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise BundleError(f"head file {path} is not a valid edgeclip head ({e})") from None
        if head.embeddings.shape != (len(head.labels), head.embeddings.shape[-1]) or head.embeddings.ndim != 2:
            raise BundleError(f"head file {path} has {len(head.labels)} labels but embeddings {head.embeddings.shape}")
        return head
