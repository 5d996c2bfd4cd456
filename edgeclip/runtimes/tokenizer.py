"""Torch-free text tokenizer: reproduces open_clip's token ids from a bundle's tokenizer.json."""

from __future__ import annotations

import html
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from edgeclip.errors import BundleError, TokenizerError, UsageError

TOKENIZER_KINDS = ("clip-bpe",)
CLEAN_MODES = ("lower", "whitespace", "canonicalize")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True, kw_only=True)
class TokenizerSpec:
    """How to turn text into the text encoder's input ids; stored in the bundle manifest."""

    kind: str
    file: str = "tokenizer.json"
    context_length: int
    clean: str = "lower"
    sot_id: int
    eot_id: int
    pad_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The manifest form of this spec."""
        return {
            "kind": self.kind,
            "file": self.file,
            "context_length": self.context_length,
            "clean": self.clean,
            "sot_id": self.sot_id,
            "eot_id": self.eot_id,
            "pad_id": self.pad_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerSpec:
        """Read and validate the manifest form; unknown keys are ignored (minor versions may add some)."""
        if not isinstance(d, dict):
            raise BundleError(f"manifest tokenizer is {d!r}: expected an object")
        kind = _field(d, "kind", str)
        if kind not in TOKENIZER_KINDS:
            raise BundleError(f"manifest tokenizer.kind is {kind!r}: expected one of {', '.join(TOKENIZER_KINDS)}")
        file = _field(d, "file", str, "tokenizer.json")
        if not file.strip():
            raise BundleError("manifest tokenizer.file is empty: expected a file name inside the bundle")
        clean = _field(d, "clean", str, "lower")
        if clean not in CLEAN_MODES:
            raise BundleError(f"manifest tokenizer.clean is {clean!r}: expected one of {', '.join(CLEAN_MODES)}")
        context_length = _field(d, "context_length", int)
        if context_length < 1:
            raise BundleError(f"manifest tokenizer.context_length is {context_length}: expected a positive int")
        ids = {key: _field(d, key, int, 0 if key == "pad_id" else None) for key in ("sot_id", "eot_id", "pad_id")}
        for key, value in ids.items():
            if value < 0:
                raise BundleError(f"manifest tokenizer.{key} is {value}: expected a non-negative int")
        return cls(kind=kind, file=file, context_length=context_length, clean=clean, **ids)


def _field(d: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    if key not in d:
        if default is None:
            raise BundleError(f"manifest tokenizer lacks the field {key!r}")
        return default
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(f"manifest tokenizer.{key} is {value!r}: expected {kind.__name__}")
    return value


def _basic_clean(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split())


def clean_text(text: str, mode: str) -> str:
    """open_clip's get_clean_fn(mode) applied to text, so ids match its tokenizer's."""
    text = _basic_clean(text)
    if mode == "lower":
        return _whitespace_clean(text).lower()
    if mode == "whitespace":
        return _whitespace_clean(text)
    if mode == "canonicalize":
        return _whitespace_clean(text.replace("_", " ").translate(_PUNCTUATION).lower())
    raise UsageError(f"clean mode {mode!r} is unknown: expected one of {', '.join(CLEAN_MODES)}")


class Tokenizer:
    """open_clip's SimpleTokenizer without torch: clean in Python, split and BPE in `tokenizers`."""

    def __init__(self, backend: HFTokenizer, spec: TokenizerSpec) -> None:
        self._tk = backend
        self.spec = spec
        # open_clip maps these strings to their ids only where its regex starts a match on them.
        self._specials = {backend.id_to_token(spec.sot_id): spec.sot_id, backend.id_to_token(spec.eot_id): spec.eot_id}
        self._split = backend.pre_tokenizer

    @classmethod
    def from_file(cls, path: Path, spec: TokenizerSpec) -> Tokenizer:
        """Load the tokenizer.json a bundle carries and check it fits the spec."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} is missing or not a file")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenizerError(f"tokenizer file {path} is not a valid tokenizer.json ({reason})") from None
        if backend.pre_tokenizer is None:
            raise TokenizerError(f"tokenizer file {path} has no pre-tokenizer: expected open_clip's split")
        size = backend.get_vocab_size(with_added_tokens=True)
        for key in ("sot_id", "eot_id"):
            if getattr(spec, key) >= size or backend.id_to_token(getattr(spec, key)) is None:
                raise TokenizerError(f"tokenizer file {path} has {size} tokens: {key} {getattr(spec, key)} is not one")
        return cls(backend, spec)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    @property
    def context_length(self) -> int:
        """Length of every row encode returns."""
        return self.spec.context_length

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Same as encode."""
        return self.encode(texts)

    def encode(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token ids [N, context_length] int64, equal to open_clip.get_tokenizer(model)(texts)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UsageError(f"text {i} is {type(text).__name__}: expected str")
        segments: list[str] = []
        plans: list[list[int | str]] = []
        for text in texts:
            plan = self._plan(clean_text(text, self.spec.clean))
            segments.extend(p for p in plan if isinstance(p, str))
            plans.append(plan)
        encoded = iter(self._tk.encode_batch(segments, add_special_tokens=False)) if segments else iter(())
        n = self.spec.context_length
        out = np.full((len(plans), n), self.spec.pad_id, dtype=np.int64)
        for row, plan in enumerate(plans):
            ids = [self.spec.sot_id]
            for part in plan:
                if isinstance(part, str):
                    ids.extend(next(encoded).ids)
                else:
                    ids.append(part)
            ids.append(self.spec.eot_id)
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.spec.eot_id
            out[row, : len(ids)] = ids
        return out

    def _plan(self, text: str) -> list[int | str]:
        """Cut text into plain segments and special-token ids, where open_clip's regex would see them."""
        if not any(s in text for s in self._specials):
            return [text] if text else []
        plan: list[int | str] = []
        start = 0
        for piece, (begin, end) in self._split.pre_tokenize_str(text):
            if piece in self._specials:
                if begin > start:
                    plan.append(text[start:begin])
                plan.append(self._specials[piece])
                start = end
        if start < len(text):
            plan.append(text[start:])
        return plan
