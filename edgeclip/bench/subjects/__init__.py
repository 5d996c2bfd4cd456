"""What a benchmark measures: a *subject* opened from a source (a bundle folder, or a PyTorch model as the eager
baseline), found through a registry. Each opener returns the same small surface, so measuring code has no `if`
per kind: an encoder with `encode_image`/`encode_text`/`model_id`/`logit_scale`, the timed stages for one batch
size, and the facts (runtime, model, sizes) that go into a results entry.

Registration flows one way: each module of this package (`bundle`, `eager`) imports this registry and registers
its opener; `open_subject` loads the package's modules with pkgutil and never names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from edgeclip._registry import add_once, import_submodules
from edgeclip.bench.latency import Stage
from edgeclip.bench.results import ModelIdentity
from edgeclip.errors import UsageError
from edgeclip.runtimes.backends import RuntimeOptions
from edgeclip.runtimes.heads import Head


class Encoder(Protocol):
    """The embedding surface a subject shares with `Bundle` (what zero-shot heads and accuracy need)."""

    @property
    def model_id(self) -> str: ...

    @property
    def logit_scale(self) -> float: ...

    def encode_image(self, images: Any, *, batch_size: int = 32, progress: bool = False) -> Any: ...

    def encode_text(self, texts: Any, *, batch_size: int = 64, progress: bool = False) -> Any: ...


StageBuilder = Callable[[Image.Image, str, Head, int], dict[str, Stage]]


@dataclass
class Subject:
    """An opened subject: its encoder, how to build its timed stages for a batch size, and its facts."""

    encoder: Encoder
    build_stages: StageBuilder  # (image, text, head, batch) -> {"image": fn, "text": fn, "end_to_end": fn}
    runtime: Callable[[], str]  # the runtime, version and what it really runs on (asked once it has run)
    model: ModelIdentity
    size_bytes: dict[str, int] = field(default_factory=dict)
    bundle: dict[str, Any] | None = None
    close: Callable[[], None] = lambda: None  # undo anything opening changed (eager: torch's thread count)
    placement: Callable[[], dict[str, Any]] = dict  # role -> Placement.to_dict() (or {"unavailable": why}); {}: none


Opener = Callable[[Mapping[str, Any], RuntimeOptions], Subject]
_OPENERS: dict[str, Opener] = {}
_loaded = False


def register_subject(kind: str) -> Callable[[Opener], Opener]:
    """Decorator adding an opener for a kind of subject; a second opener of the same kind is refused."""

    def decorate(fn: Opener) -> Opener:
        add_once(_OPENERS, kind, fn, "bench subject kind")
        return fn

    return decorate


def load_subjects() -> None:
    """Import every module of this package once: each registers its kind (none imports torch before it opens)."""
    global _loaded
    if not _loaded:
        _loaded = True
        import_submodules(__name__, __path__)


def open_subject(kind: str, source: Mapping[str, Any], options: RuntimeOptions) -> Subject:
    """Open a subject of a registered kind ("bundle", "eager") from its source description."""
    load_subjects()
    if kind not in _OPENERS:
        raise UsageError(f"unknown bench subject kind {kind!r}: expected one of {', '.join(sorted(_OPENERS))}")
    return _OPENERS[kind](source, options)
