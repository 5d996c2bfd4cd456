"""Text calibration strings: built-in prompt templates x label words, or one string per line of a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeclip.errors import UsageError
from edgeclip.runtimes.templates import OPENAI_IMAGENET_TEMPLATES

# Generic label words for text calibration when the user gives none: everyday objects, scenes and the shapes
# dataset's own vocabulary, so activations see short and long prompts, nouns and attributes.
DEFAULT_LABELS = (
    "cat", "dog", "car", "person", "tree", "house", "bird", "flower", "bicycle", "boat", "cup of coffee", "laptop",
    "mountain", "street at night", "beach", "kitchen", "red circle", "blue square", "green triangle", "yellow star",
    "purple hexagon", "black cross", "white diamond", "orange heart", "face", "document", "diagram", "rocket",
)  # fmt: skip


def default_text_strings(labels: Sequence[str] | None = None, count: int = 256) -> tuple[str, ...]:
    """Up to `count` prompts: every template x label, interleaved so any prefix covers many labels and templates."""
    words = tuple(labels) if labels else DEFAULT_LABELS
    if not words:
        raise UsageError("text calibration needs at least one label word")
    templates = OPENAI_IMAGENET_TEMPLATES
    out = []
    for i in range(len(words) * len(templates)):
        # Stride templates against labels (co-prime steps) so prompt i pairs a fresh label with a fresh template.
        out.append(templates[(i * 7) % len(templates)].format(words[i % len(words)]))
        if len(out) == count:
            break
    return tuple(out)


def read_text_strings(path: Path) -> tuple[str, ...]:
    """One calibration string per non-empty line of a UTF-8 text file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise UsageError(f"cannot read text calibration strings from {path}: {reason}") from None
    strings = tuple(line.strip() for line in lines if line.strip())
    if not strings:
        raise UsageError(f"{path} holds no text: expected one calibration string per line")
    return strings
