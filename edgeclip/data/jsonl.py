"""JSON Lines reading shared by caption, synthetic-caption and retrieval-eval files (torch-free: runtimes use it)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from edgeclip.errors import DatasetError


def iter_json_objects(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of PATH; any other line is a one-line DatasetError naming it."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path} line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        yield n, row
