"""Prompt templates for zero-shot heads: OpenAI's 80 ImageNet templates and the 7-template subset."""

from __future__ import annotations

import string
from collections.abc import Sequence

# CLIP (Radford et al., 2021), as open_clip ships them; "{}" is replaced by the label.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

SIMPLE_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "simple": SIMPLE_IMAGENET_TEMPLATES,
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a template-set name or a list of templates into a validated tuple of format strings."""
    from edgeclip.errors import UsageError

    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise UsageError(
                f"unknown template set {templates!r}: expected one of {', '.join(TEMPLATE_SETS)}, or templates with "
                "'{}' for the label (a list; on the command line @file, one per line)"
            )
        return TEMPLATE_SETS[templates]
    resolved = tuple(templates)
    if not resolved:
        raise UsageError("the template list is empty: expected at least one template containing '{}'")
    for template in resolved:
        problem = template_problem(template)
        if problem:
            raise UsageError(f"template {template!r} {problem}: expected exactly one '{{}}' for the label")
    return resolved


def template_problem(template: object) -> str | None:
    """Why a template cannot take a label through `str.format`, or None (literal braces are written {{ and }})."""
    if not isinstance(template, str):
        return f"is a {type(template).__name__}, not a string"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        return f"has unbalanced braces ({e})"
    named = [name for name, _, _ in fields if name]
    if named:
        return f"has the field {{{named[0]}}}"
    if any(spec or conv for _, spec, conv in fields):
        return "has a format spec or conversion in its field"
    if len(fields) != 1:
        return f"has {len(fields)} '{{}}' fields"
    return None
