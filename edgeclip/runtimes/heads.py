"""Heads: precomputed label embeddings stored in a bundle's `heads/` folder, bound to one model."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip.errors import BundleError, UsageError
from edgeclip.runtimes.checksums import atomic_output

if TYPE_CHECKING:
    from edgeclip.runtimes.bundle import Bundle

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


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Labels must be non-empty, non-blank and unique: their order is the class order."""
    if isinstance(labels, str):
        raise UsageError(f"labels is the string {labels!r}: expected a list of labels, e.g. ['cat', 'dog']")
    if not all(isinstance(label, str) for label in labels):
        bad = next(label for label in labels if not isinstance(label, str))
        raise UsageError(f"label {bad!r} is a {type(bad).__name__}: expected strings")
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
    """Class embeddings [C, D] (L2-normalized), their labels in class order, and how they were made.

    Optional parts, all absent from a plain zero-shot head (files without them read as before):
    `groups` names the softmax group of each label (task heads: one group per antonym pair in a quality head);
    `positives` names the labels whose probability is the score (bona fide; the good pole of each pair);
    `prompts` holds the prompts averaged into each label's embedding when they are not templates x labels;
    `adapter_weight` [C, D], `adapter_bias` [C] and `adapter_alpha` are a training-free linear head (GDA)
    whose logits are added, times alpha, to the zero-shot logits.
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    model_id: str
    embeddings: np.ndarray
    groups: tuple[str, ...] = ()
    positives: tuple[str, ...] = ()
    prompts: tuple[tuple[str, ...], ...] = ()
    adapter_weight: np.ndarray | None = None
    adapter_bias: np.ndarray | None = None
    adapter_alpha: float = 0.0

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise UsageError(f"head {self.name!r}: {problem}")

    def problem(self) -> str | None:
        """What is inconsistent between the head's parts, or None."""
        count = len(self.labels)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != count:
            return f"{count} labels but embeddings of shape {self.embeddings.shape}"
        if self.groups and len(self.groups) != count:
            return f"{count} labels but {len(self.groups)} groups"
        unknown = [p for p in self.positives if p not in self.labels]
        if unknown:
            return f"positive label {unknown[0]!r} is not one of its labels"
        if self.prompts and len(self.prompts) != count:
            return f"{count} labels but {len(self.prompts)} prompt lists"
        if (self.adapter_weight is None) != (self.adapter_bias is None):
            return "an adapter needs both a weight and a bias"
        weight, bias = self.adapter_weight, self.adapter_bias
        if weight is not None and bias is not None and (weight.shape, bias.shape) != (self.embeddings.shape, (count,)):
            return f"adapter weight {weight.shape} and bias {bias.shape} do not fit embeddings {self.embeddings.shape}"
        return None

    def group_slices(self) -> list[np.ndarray]:
        """Label indices of each softmax group, in order of first appearance (one group when none are set)."""
        if not self.groups:
            return [np.arange(len(self.labels))]
        names = list(dict.fromkeys(self.groups))
        return [np.array([i for i, g in enumerate(self.groups) if g == name]) for name in names]

    def logits(self, image_embeddings: np.ndarray, logit_scale: float) -> np.ndarray:
        """logit_scale x cosine to each class [N, C], plus alpha x the adapter's linear logits where it has one."""
        emb = image_embeddings / np.maximum(np.linalg.norm(image_embeddings, axis=-1, keepdims=True), 1e-12)
        out = logit_scale * (emb @ self.embeddings.T)
        if self.adapter_weight is not None and self.adapter_bias is not None:
            out = out + self.adapter_alpha * (emb @ self.adapter_weight.T + self.adapter_bias)
        return out.astype(np.float32)

    def probabilities(self, image_embeddings: np.ndarray, logit_scale: float) -> np.ndarray:
        """Softmax of the logits within each group [N, C]: each group's probabilities sum to one."""
        logits = self.logits(image_embeddings, logit_scale).astype(np.float64)
        out = np.empty_like(logits)
        for idx in self.group_slices():
            z = logits[:, idx] - logits[:, idx].max(axis=1, keepdims=True)
            e = np.exp(z)
            out[:, idx] = e / e.sum(axis=1, keepdims=True)
        return out.astype(np.float32)

    def save(self, path: Path) -> Path:
        """Write the head as .npz through a temporary file, so a crash never leaves half a head."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {
            "format_version": np.array(HEAD_FORMAT_VERSION),
            "name": np.array(self.name),
            "kind": np.array(self.kind),
            "labels": np.array(self.labels, dtype=str),
            "templates": np.array(self.templates, dtype=str),
            "model_id": np.array(self.model_id),
            "embeddings": self.embeddings.astype(np.float32),
        }
        if self.groups:
            arrays["groups"] = np.array(self.groups, dtype=str)
        if self.positives:
            arrays["positives"] = np.array(self.positives, dtype=str)
        if self.prompts:
            arrays["prompts"] = np.array([p for group in self.prompts for p in group], dtype=str)
            arrays["prompt_counts"] = np.array([len(group) for group in self.prompts], dtype=np.int64)
        if self.adapter_weight is not None and self.adapter_bias is not None:
            arrays["adapter_weight"] = self.adapter_weight.astype(np.float32)
            arrays["adapter_bias"] = self.adapter_bias.astype(np.float32)
            arrays["adapter_alpha"] = np.array(self.adapter_alpha, dtype=np.float64)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> Head:
        """Read a head written by `save`; never unpickles."""
        try:
            with _open_npz(path) as data:
                version = int(data["format_version"])
                if version > HEAD_FORMAT_VERSION:
                    raise BundleError(f"head {path} has format version {version}: upgrade edgeclip to read it")
                prompts: tuple[tuple[str, ...], ...] = ()
                if "prompts" in data:
                    flat = [str(x) for x in data["prompts"]]
                    ends = np.cumsum(data["prompt_counts"]).tolist()
                    if not ends or ends[-1] != len(flat):
                        raise ValueError(f"{len(flat)} prompts but prompt_counts sum to {ends[-1] if ends else 0}")
                    prompts = tuple(tuple(flat[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True))
                has_adapter = "adapter_weight" in data
                fields: dict[str, Any] = dict(
                    name=str(data["name"]),
                    kind=str(data["kind"]),
                    labels=tuple(str(x) for x in data["labels"]),
                    templates=tuple(str(x) for x in data["templates"]),
                    model_id=str(data["model_id"]),
                    embeddings=np.asarray(data["embeddings"], dtype=np.float32),
                    groups=tuple(str(x) for x in data["groups"]) if "groups" in data else (),
                    positives=tuple(str(x) for x in data["positives"]) if "positives" in data else (),
                    prompts=prompts,
                    adapter_weight=np.asarray(data["adapter_weight"], dtype=np.float32) if has_adapter else None,
                    adapter_bias=np.asarray(data["adapter_bias"], dtype=np.float32) if has_adapter else None,
                    adapter_alpha=float(data["adapter_alpha"]) if has_adapter else 0.0,
                )
        except FileNotFoundError:
            raise BundleError(f"head file {path} does not exist") from None
        except BundleError:
            raise
        except Exception as e:  # numpy and zipfile raise many types for a damaged or foreign file
            detail = " ".join(str(e).split())[:200] or type(e).__name__
            raise BundleError(f"head file {path} is not a valid edgeclip head ({detail})") from None
        try:
            return cls(**fields)
        except UsageError as e:  # a bad file is the bundle's fault, not the caller's
            raise BundleError(f"head file {path} is inconsistent ({e})") from None


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """An .npz archive, refusing a plain .npy array (np.load returns one for such a file)."""
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("a single array, not an .npz archive of named arrays")
    return data


def build_prompt_head(
    bundle: Bundle,
    name: str,
    kind: str,
    prompts: Mapping[str, Sequence[str]],
    *,
    groups: Sequence[str] = (),
    positives: Sequence[str] = (),
    progress: bool = False,
) -> Head:
    """A head whose classes are described by their own prompts: each prompt embedded and normalized, averaged per
    class, normalized again (FLIP-style class averaging). Dict order is the class order."""
    labels = check_labels(list(prompts))
    lists = [tuple(p.strip() for p in prompts[label]) for label in prompts]
    for label, items in zip(labels, lists, strict=True):
        if not items or any(not p for p in items):
            raise UsageError(f"class {label!r} needs at least one non-blank prompt")
    flat = [p for items in lists for p in items]
    emb = bundle.encode_text(flat, progress=progress)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    ends = np.cumsum([len(items) for items in lists])
    means = np.stack([emb[a:b].mean(axis=0) for a, b in zip([0, *ends[:-1]], ends, strict=True)])
    means = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return Head(
        check_head_name(name),
        kind,
        labels,
        (),
        bundle.model_id,
        means.astype(np.float32),
        groups=tuple(groups),
        positives=tuple(positives),
        prompts=tuple(lists),
    )


def resolve_task_head(
    bundle: Bundle, head: str | Head | None, default_name: str, kind: str, build: Callable[[Bundle], Head]
) -> Head:
    """The head to use: a Head, a stored head's name, or the stored default, else one built now with `build`."""
    if isinstance(head, Head):
        resolved = head
    elif isinstance(head, str):
        resolved = bundle.load_head(head)
    elif default_name in bundle.head_names():
        resolved = bundle.load_head(default_name)
    else:
        resolved = build(bundle)
    if resolved.model_id != bundle.model_id:
        raise UsageError(f"head {resolved.name!r} belongs to {resolved.model_id}, not {bundle.model_id}")
    if resolved.kind != kind:
        raise UsageError(f"head {resolved.name!r} is a {resolved.kind} head: expected a {kind} head")
    return resolved
