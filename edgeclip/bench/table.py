"""The `yolo benchmark`-style table: one row per target/precision with its status, size, latency, FPS, accuracy and
parity, and the speed-up over the baseline (the PyTorch eager row) measured in the same run.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from edgeclip.bench.results import BenchEntry, BenchResult

STATUS_MARKS = {"ok": "✅", "failed_checks": "❎", "export_failed": "❌"}
STATUS_WORDS = {"ok": "ran", "failed_checks": "failed checks", "export_failed": "export failed"}


def mark(entry: BenchEntry) -> str:
    """✅ ran, ❎ exported but failed checks (or cannot run here), ❌ export failed."""
    return STATUS_MARKS[entry.status]


def _width(text: str) -> int:
    """Terminal columns of a string: wide characters (the status marks) take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    gap = " " * max(width - _width(text), 0)
    return gap + text if right else text + gap


def render(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool], markdown: bool = False) -> str:
    """An aligned text table, or a Markdown one (numbers right-aligned in both)."""
    widths = [max(_width(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    if markdown:
        rule = ["-" * max(w - 1, 1) + (":" if r else "-") for w, r in zip(widths, right, strict=True)]
        lines = [header, rule, *rows]
        return "\n".join(
            "| " + " | ".join(_pad(str(c), w, r) for c, w, r in zip(line, widths, right, strict=True)) + " |"
            for line in lines
        )
    lines = [header, *rows]
    text = [
        "  ".join(_pad(str(c), w, r) for c, w, r in zip(line, widths, right, strict=True)).rstrip() for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def delegated_cell(entry: BenchEntry) -> str:
    """The share of ops each encoder's delegate took, as `img 100% (1) / txt 97.7% (4)` with pieces in brackets.

    '-' for rows without a placement record (PyTorch, older results), `?` for an encoder whose runtime cannot tell.
    """
    parts = []
    for role, tag in (("image", "img"), ("text", "txt")):
        record = entry.placement.get(role)
        if record is None:
            continue
        if "fraction" not in record:
            parts.append(f"{tag} ?")
            continue
        percent = float(record["fraction"]) * 100
        shown = f"{percent:.0f}" if percent in (0.0, 100.0) else f"{percent:.1f}"
        parts.append(f"{tag} {shown}% ({record.get('pieces', '?')})")
    return " / ".join(parts) or "-"


def result_rows(result: BenchResult) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, rows and right-alignment of a run's table; latency at the smallest batch, FPS at the largest."""
    batches = result.settings.get("batch_sizes") or [1]
    small, large = min(batches), max(batches)
    base = result.baseline
    base_stats = base.stats("image", small) if base else None
    base_p50 = base_stats.p50_ms if base_stats else None
    header = [
        "Target",
        "Status",
        "Size MB",
        f"img p50 ms @{small}",
        f"img p90 ms @{small}",
        f"txt p50 ms @{small}",
        f"e2e p50 ms @{small}",
        f"img/s @{large}",
        "cold ms",
        "peak MB",
        "top-1 %",
        "cos p1",
        "delegated (pieces)",
        "vs base",
    ]
    rows = []
    for e in result.entries:
        if e.search is not None:
            continue  # photo-search rows have their own table (search_rows)
        image, text, e2e = e.stats("image", small), e.stats("text", small), e.stats("end_to_end", small)
        fps = e.stats("image", large)
        size = e.size_total
        speedup = base_p50 / image.p50_ms if base_p50 and image else None
        rows.append(
            [
                e.name,
                f"{mark(e)} {STATUS_WORDS[e.status]}",
                fmt(size / 1e6 if size else None, ".1f"),
                fmt(image.p50_ms if image else None, ".2f"),
                fmt(image.p90_ms if image else None, ".2f"),
                fmt(text.p50_ms if text else None, ".2f"),
                fmt(e2e.p50_ms if e2e else None, ".2f"),
                fmt(fps.throughput_per_s if fps else None, ".1f"),
                fmt(e.cold_start_ms.get("total"), ".0f"),
                fmt(e.memory_mb.get("peak"), ".0f"),
                fmt(e.accuracy.top1 * 100 if e.accuracy else None, ".1f"),
                fmt(e.parity.worst_p1 if e.parity else None, ".6f") if not e.baseline else "ref",
                delegated_cell(e),
                fmt(speedup, ".2f") + ("x" if speedup else ""),
            ]
        )
    return header, rows, [False, False] + [True] * (len(header) - 2)


def search_rows(result: BenchResult) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, rows and right-alignment of the photo-search rows (`edgeclip bench search`), if any."""
    header = ["Search row", "Status", "entries", "dim", "storage", "img/s", "encoder img/s", "ratio", "p50 ms",
              "p99 ms", "recall@10"]  # fmt: skip
    rows = []
    for e in result.entries:
        f = e.search
        if f is None:
            continue
        ratio = f.images_per_s / f.encoder_images_per_s if f.images_per_s and f.encoder_images_per_s else None
        rows.append(
            [
                e.name,
                f"{mark(e)} {STATUS_WORDS[e.status]}",
                str(f.entries),
                str(f.dim),
                f.storage,
                fmt(f.images_per_s, ".1f"),
                fmt(f.encoder_images_per_s, ".1f"),
                fmt(ratio, ".2f") + ("x" if ratio else ""),
                fmt(f.latency.p50_ms if f.latency else None, ".3f"),
                fmt(f.latency.p99_ms if f.latency else None, ".3f"),
                fmt(f.recall_at_10, ".4f"),
            ]
        )
    return header, rows, [False, False] + [True] * (len(header) - 2)


def format_result(result: BenchResult, markdown: bool = False) -> str:
    """The run's table with a device line above and each row's reason (why it did not run or failed) below."""
    header, rows, right = result_rows(result)
    s = result.settings
    threads = s.get("threads") or "default"
    load = result.device.load_average
    sep = "\n\n" if markdown else "\n"  # Markdown needs blank lines between paragraphs
    lines = [
        result.device.summary(),
        f"{s.get('runs')} runs after {s.get('warmup')} warm-up per stage and batch, {threads} threads, "
        f"batch {','.join(map(str, s.get('batch_sizes') or []))}; accuracy: zero-shot top-1 on "
        f"{(s.get('dataset') or {}).get('name')} ({(s.get('dataset') or {}).get('images')} images); "
        "cold: load to first image and text result; peak: resident memory; "
        f"cos p1: 1st-percentile cosine to the reference; delegated: share of each encoder's ops its "
        "runtime's delegate took, in how many pieces (OpenVINO: ops run in the requested precision); "
        "vs base: img p50 speed-up over "
        f"{result.baseline.name if result.baseline else '-'}"
        + (f"; load average at start {load[0]:.2f}" if load else ""),
        render(header, rows, right, markdown),
    ]
    if not rows:
        lines.pop()  # a run of search rows only
        lines.pop()
        lines.append(f"search rows: {s.get('search_note', '')}".rstrip(": "))
    search_header, search, search_right = search_rows(result)
    if search:
        lines.append(render(search_header, search, search_right, markdown))
    notes = [f"{mark(e)} {e.name}: {e.reason}" for e in result.entries if e.reason]
    random = sorted({e.model.architecture for e in result.entries if e.model and e.model.random_init})
    if random:
        notes.append(f"random weights ({', '.join(random)}): top-1 is chance level; latency and parity are real")
    if notes:
        lines.append("\n".join(f"- {n}" for n in notes) if markdown else "\n".join(notes))
    return sep.join(lines) if markdown else "\n".join(lines[:2]) + "\n\n" + "\n\n".join(lines[2:])
