"""What a benchmark measures: a *subject* opened from a source (a bundle folder, or a PyTorch model as the eager
baseline), found through a registry. Each opener returns the same small surface, so measuring code has no `if`
per kind: an encoder with `encode_image`/`encode_text`/`model_id`/`logit_scale`, the timed stages for one batch
size, and the facts (runtime, model, sizes) that go into a results entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from edgeclip.bench.latency import Stage
from edgeclip.bench.results import ModelIdentity
from edgeclip.errors import UsageError
from edgeclip.runtimes.backends import RuntimeOptions
from edgeclip.runtimes.heads import Head


class Encoder(Protocol):
    """The embedding surface a subject shares with `Bundle` (what zero-shot heads and accuracy need)."""

    model_id: str
    logit_scale: float

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


Opener = Callable[[Mapping[str, Any], RuntimeOptions], Subject]
_OPENERS: dict[str, Opener] = {}


def register_subject(kind: str) -> Callable[[Opener], Opener]:
    """Decorator adding an opener for a kind of subject; a second opener of the same kind is refused."""

    def decorate(fn: Opener) -> Opener:
        if kind in _OPENERS:
            raise ValueError(f"bench subject kind {kind!r} is registered twice")
        _OPENERS[kind] = fn
        return fn

    return decorate


def open_subject(kind: str, source: Mapping[str, Any], options: RuntimeOptions) -> Subject:
    """Open a subject of a registered kind ("bundle", "eager") from its source description."""
    from edgeclip.bench import eager  # noqa: F401  registers "eager"; imports torch only when opened

    if kind not in _OPENERS:
        raise UsageError(f"unknown bench subject kind {kind!r}: expected one of {', '.join(sorted(_OPENERS))}")
    return _OPENERS[kind](source, options)


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@register_subject("bundle")
def open_bundle(source: Mapping[str, Any], options: RuntimeOptions) -> Subject:
    """A bundle through its runtime backend, exactly as an app on the device runs it."""
    from edgeclip.runtimes.bundle import load_bundle, size_path
    from edgeclip.runtimes.preprocess import preprocess

    bundle = load_bundle(Path(source["path"]), providers=options.providers, threads=options.threads)
    m = bundle.manifest

    def build_stages(image: Image.Image, text: str, head: Head, batch: int) -> dict[str, Stage]:
        pixels = preprocess([image] * batch, m.preprocess)
        tokens = bundle.tokenizer.encode([text] * batch)
        image_encoder, text_encoder = bundle.encoder("image"), bundle.encoder("text")
        image_input, text_input = m.encoders["image"].inputs[0].name, m.encoders["text"].inputs[0].name
        images = [image] * batch
        return {
            "image": lambda: image_encoder.run({image_input: pixels}),
            "text": lambda: text_encoder.run({text_input: tokens}),
            "end_to_end": lambda: head.probabilities(bundle.encode_image(images, batch_size=batch), bundle.logit_scale),
        }

    def runtime() -> str:
        backend = bundle.backend_info.name
        providers = getattr(bundle.encoder("image"), "providers", None)  # ONNX Runtime: the providers it got
        return " ".join(filter(None, (backend, _package_version(backend), ",".join(providers or ()))))

    src = m.source
    return Subject(
        encoder=bundle,
        build_stages=build_stages,
        runtime=runtime,
        model=ModelIdentity(src.architecture, m.model_id, src.pretrained, src.random_init),
        size_bytes={role: size_path(bundle.file(enc.file)) for role, enc in m.encoders.items()},
        bundle={
            "path": str(bundle.path),
            "format_version": m.format_version,
            "edgeclip_version": m.edgeclip_version,
            "created": m.created,
            "sha256": {role: enc.sha256 for role, enc in m.encoders.items()},
            "target_info": {k: v for k, v in m.target_info.items() if k != "exported_with"},
        },
    )
