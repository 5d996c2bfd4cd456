"""The preprocessing a model was trained with, from open_clip's pretrained config, with user overrides."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from edgeclip.runtimes.preprocess import PreprocessSpec

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _image_size(architecture: str) -> tuple[int, int]:
    import open_clip

    from edgeclip.models.loading import check_architecture

    size = open_clip.get_model_config(check_architecture(architecture))["vision_cfg"].get("image_size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def preprocess_spec_for(
    architecture: str, pretrained: str | None, overrides: dict[str, Any] | None = None
) -> tuple[PreprocessSpec, str]:
    """The spec and a note of where it came from.

    open_clip falls back to OpenAI mean/std for a model built without a pretrained tag, which is wrong for
    MobileCLIP (mean 0, std 1, bilinear); so a local checkpoint takes the architecture's first pretrained
    tag's values, which is how the published weights of that architecture were trained.
    """
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if pretrained in tags:
        tag = pretrained
    elif tags:
        tag = tags[0]
    else:
        tag = None
    cfg = open_clip.get_pretrained_cfg(architecture, tag) if tag else {}
    spec = PreprocessSpec(
        image_size=_image_size(architecture),
        resize_mode=cfg.get("resize_mode") or "shortest",
        interpolation=cfg.get("interpolation") or "bicubic",
        mean=tuple(cfg.get("mean") or OPENAI_MEAN),
        std=tuple(cfg.get("std") or OPENAI_STD),
    )
    source = f"open_clip pretrained config {architecture}/{tag}" if tag else "open_clip defaults (OpenAI mean/std)"
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    if chosen:
        spec = PreprocessSpec(**{**asdict(spec), **chosen})
        source += f", overridden: {', '.join(sorted(chosen))}"
    return spec, source
