"""A bundle as a bench subject: its encoders through its runtime backend, exactly as an app on the device runs it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from edgeclip.bench.latency import Stage
from edgeclip.bench.results import ModelIdentity
from edgeclip.bench.subjects import Subject, register_subject
from edgeclip.runtimes.backends import RuntimeOptions
from edgeclip.runtimes.heads import Head


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@register_subject("bundle")
def open_bundle(source: Mapping[str, Any], options: RuntimeOptions) -> Subject:
    """A bundle through its runtime backend, exactly as an app on the device runs it."""
    from edgeclip.runtimes.bundle import load_bundle
    from edgeclip.runtimes.preprocess import preprocess

    verify = bool(source.get("verify", True))  # False: `bench --no-verify`
    bundle = load_bundle(
        Path(source["path"]),
        providers=options.providers,
        threads=options.threads,
        verify=verify,
        backend=source.get("backend"),
        precision_hint=source.get("precision_hint"),
    )
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
        # The backend, its version, what it runs on (ONNX Runtime: providers; OpenVINO: CPU and precision) and why.
        summary = bundle.runtime_summary()
        backend = summary["backend"]
        ran = " ".join(filter(None, (backend, _package_version(backend), summary["runs"])))
        return f"{ran}; {summary['why']}" if source.get("backend") else ran

    def placement() -> dict[str, Any]:
        from edgeclip.runtimes.placement import Placement, bundle_placements

        found = bundle_placements(bundle)
        return {role: p.to_dict() if isinstance(p, Placement) else {"unavailable": p} for role, p in found.items()}

    src = m.source
    return Subject(
        encoder=bundle,
        build_stages=build_stages,
        runtime=runtime,
        model=ModelIdentity(src.architecture, m.model_id, src.pretrained, src.random_init),
        size_bytes={role: bundle.encoder_bytes(role) for role in m.encoders},
        bundle={
            "path": str(bundle.path),
            "format_version": m.format_version,
            "edgeclip_version": m.edgeclip_version,
            "created": m.created,
            "sha256": {role: enc.sha256 for role, enc in m.encoders.items()},
            "target_info": {k: v for k, v in m.target_info.items() if k != "exported_with"},
        },
        placement=placement,
    )
