"""`edgeclip bench report`: merge results files from any number of devices into a device x model table (Markdown
and a static HTML page) and an accuracy-latency Pareto plot (PNG, matplotlib) with each device's front marked.

A file that is not an edgeclip results file (not JSON, another schema, another major version) is named and skipped,
or stops the report when asked to be strict; an empty set is an error.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeclip.bench.results import BenchEntry, BenchResult, load_results, write_atomic
from edgeclip.bench.table import STATUS_MARKS, format_result, render
from edgeclip.errors import ResultsError, UsageError

STAGE_NAMES = {"image": "image encoder", "text": "text encoder", "end_to_end": "end to end"}


@dataclass(frozen=True)
class Run:
    """One results file in a report: where it came from, the label it is shown under, and its contents."""

    path: Path
    label: str
    result: BenchResult


@dataclass(frozen=True)
class Report:
    """Runs to merge (one column each) and the files that were skipped, with why."""

    runs: tuple[Run, ...]
    skipped: tuple[tuple[Path, str], ...] = ()

    def models(self) -> list[str]:
        """Row keys in first-seen order: architecture and target/precision (or bundle) name."""
        keys = (_row_key(e) for run in self.runs for e in run.result.entries if e.search is None)
        return list(dict.fromkeys(keys))  # photo-search rows are shown in each run's own search table


def _row_key(entry: BenchEntry) -> str:
    return f"{entry.model.architecture} · {entry.name}" if entry.model else entry.name


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder stands for the .json files in it (sorted), as a farm collects them."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        out += sorted(path.glob("*.json")) if path.is_dir() else [path]
    return out


def load_report(paths: Sequence[str | Path], strict: bool = False) -> Report:
    """Read results files; a bad one is skipped with its reason (or raises when strict); none left is an error."""
    files = expand_paths(paths)
    if not files:
        raise UsageError("no results files given: expected JSON files written by `edgeclip bench --json PATH`")
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        try:
            result = load_results(path)
        except ResultsError as e:
            if strict:
                raise
            skipped.append((path, str(e)))
            continue
        runs.append(Run(path, result.label, result))
    if not runs:
        reasons = "; ".join(reason for _, reason in skipped)
        raise ResultsError(f"none of the {len(files)} files holds edgeclip bench results: {reasons}")
    labels = [r.label for r in runs]
    runs = [Run(r.path, f"{r.label} [{r.path.stem}]", r.result) if labels.count(r.label) > 1 else r for r in runs]
    return Report(tuple(runs), tuple(skipped))


def _latency(entry: BenchEntry | None, stage: str) -> float | None:
    stats = entry.stats(stage) if entry else None
    return stats.p50_ms if stats else None


def _find(run: Run, key: str) -> BenchEntry | None:
    return next((e for e in run.result.entries if _row_key(e) == key), None)


def _cell(entry: BenchEntry | None, value: str) -> str:
    if entry is None:
        return ""
    return value if entry.status == "ok" else STATUS_MARKS[entry.status]


def matrix(report: Report, stage: str = "image") -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header and two device x model grids: p50 ms of `stage` at the smallest batch, and top-1 %."""
    header = ["Model", *[r.label for r in report.runs]]
    latency_rows, accuracy_rows = [], []
    for key in report.models():
        entries = [_find(run, key) for run in report.runs]
        latency_rows.append(
            [key] + [_cell(e, f"{_latency(e, stage):.2f}" if _latency(e, stage) else "-") for e in entries]
        )
        accuracy_rows.append(
            [key] + [_cell(e, f"{e.accuracy.top1 * 100:.1f}" if e and e.accuracy else "-") for e in entries]
        )
    return header, latency_rows, accuracy_rows


def to_markdown(report: Report, stage: str = "image") -> str:
    """The whole report as Markdown: devices, the two device x model tables, then every run's own table."""
    header, latency_rows, accuracy_rows = matrix(report, stage)
    right = [False] + [True] * (len(header) - 1)
    lines = ["# edgeclip benchmark report", "", "## Devices", ""]
    for run in report.runs:
        lines.append(f"- **{run.label}** ({run.path.name}): {run.result.device.summary()}")
    lines += [
        "",
        f"## {STAGE_NAMES[stage]} p50 latency (ms, smallest batch)",
        "",
        render(header, latency_rows, right, markdown=True),
        "",
        "## Zero-shot top-1 (%)",
        "",
        render(header, accuracy_rows, right, markdown=True),
        "",
        f"{STATUS_MARKS['failed_checks']}: exported but failed checks or cannot run there; "
        f"{STATUS_MARKS['export_failed']}: export failed; empty: not in that run.",
    ]
    for run in report.runs:
        lines += ["", f"## {run.label}", "", format_result(run.result, markdown=True)]
    if report.skipped:
        lines += ["", "## Skipped files", ""] + [f"- {p}: {why}" for p, why in report.skipped]
    return "\n".join(lines) + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher), fastest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _point_names(entries: Sequence[BenchEntry]) -> list[str]:
    """Short labels for plot points: target:precision where that is unique in the run, else the full row name."""
    short = [f"{e.target}:{e.precision}" if e.kind == "bundle" else e.name for e in entries]
    return [s if short.count(s) == 1 else e.name for s, e in zip(short, entries, strict=True)]


def pareto_png(report: Report, stage: str = "image") -> bytes:
    """Accuracy (top-1) against p50 latency: colour per device, marker per target, each device's front filled."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise UsageError("the plot (--plot, --html) needs matplotlib: pip install 'edgeclip[bench]'") from None

    fig = Figure(figsize=(9, 5.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    marker_cycle = ["o", "s", "^", "D", "v", "P", "X", "*"]
    markers: dict[str, str] = {}
    labelled: list[tuple[float, float]] = []
    xs_all: list[float] = []
    ys_all: list[float] = []
    handles = []
    for n, run in enumerate(report.runs):
        entries: list[BenchEntry] = []
        points: list[tuple[float, float]] = []  # (latency ms, top-1 %)
        for e in run.result.entries:
            latency = _latency(e, stage) if e.status == "ok" and e.accuracy else None
            if latency and e.accuracy:
                entries.append(e)
                points.append((latency, e.accuracy.top1 * 100))
        if not entries:
            continue
        color = palette[n % len(palette)]
        front = set(pareto_front(points))
        names = _point_names(entries)
        ordered = sorted(front, key=lambda i: points[i][0])
        ax.step(
            [points[i][0] for i in ordered],
            [points[i][1] for i in ordered],
            where="post",
            color=color,
            alpha=0.5,
            linewidth=1.5,
            zorder=1,
        )
        for i, ((x, y), e) in enumerate(zip(points, entries, strict=True)):
            marker = markers.setdefault(e.target, marker_cycle[len(markers) % len(marker_cycle)])
            filled = i in front
            ax.scatter(
                [x],
                [y],
                s=60,
                marker=marker,
                zorder=3,
                linewidths=1.5,
                edgecolors=color,
                facecolors=color if filled else "white",
            )
            # Stagger labels of points that sit on top of each other (same accuracy, similar latency).
            near = sum(1 for (lx, ly) in labelled if abs(ly - y) < 0.5 and 0.8 < x / max(lx, 1e-9) < 1.25)
            labelled.append((x, y))
            ax.annotate(
                names[i], (x, y), textcoords="offset points", xytext=(6, 5 - 11 * near), fontsize=7, color=color
            )
        xs_all += [p[0] for p in points]
        ys_all += [p[1] for p in points]
        handles.append(Line2D([], [], color=color, marker="o", linestyle="-", label=run.label))
    if not xs_all:
        raise ResultsError("nothing to plot: no row in these results ran with both latency and accuracy")
    handles += [Line2D([], [], color="grey", marker=m, linestyle="", label=t) for t, m in markers.items()]
    if max(xs_all) / max(min(xs_all), 1e-9) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.15)  # room for the labels of the rightmost points
    low, high = min(ys_all), max(ys_all)
    pad = max(2.0, (high - low) * 0.15)
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
    ax.set_xlabel(f"{STAGE_NAMES[stage]} latency, p50 (ms, smallest batch): lower is better")
    ax.set_ylabel("zero-shot top-1 (%): higher is better")
    datasets = sorted({(r.result.settings.get("dataset") or {}).get("name", "?") for r in report.runs})
    title = f"Accuracy vs latency on {', '.join(datasets)}; filled: Pareto front of each device, hollow: dominated"
    if any(e.model and e.model.random_init for r in report.runs for e in r.result.entries):
        title += "\nrandom weights in some rows: their top-1 is chance level"
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: Report, stage: str = "image", png: bytes | None = None) -> str:
    """A static, self-contained page: device list, both grids, the plot (embedded) and each run's full table."""
    from edgeclip.bench.table import result_rows, search_rows

    header, latency_rows, accuracy_rows = matrix(report, stage)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>edgeclip benchmark report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
        "th{background:#f4f4f4}img{max-width:100%}.note{color:#555}",
        "</style></head><body><h1>edgeclip benchmark report</h1><h2>Devices</h2><ul>",
    ]
    for run in report.runs:
        parts.append(
            f"<li><b>{html.escape(run.label)}</b> ({html.escape(run.path.name)}): "
            f"{html.escape(run.result.device.summary())}</li>"
        )
    parts.append("</ul>")
    parts += [
        f"<h2>{STAGE_NAMES[stage]} p50 latency (ms, smallest batch)</h2>",
        _html_table(header, latency_rows),
        "<h2>Zero-shot top-1 (%)</h2>",
        _html_table(header, accuracy_rows),
        f"<p class='note'>{STATUS_MARKS['failed_checks']} exported but failed checks or cannot run there; "
        f"{STATUS_MARKS['export_failed']} export failed; empty: not in that run.</p>",
    ]
    if png is not None:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>Accuracy vs latency</h2><img alt='Pareto plot' src='data:image/png;base64,{data}'>")
    for run in report.runs:
        run_header, rows, _ = result_rows(run.result)
        notes = [f"{STATUS_MARKS[e.status]} {e.name}: {e.reason}" for e in run.result.entries if e.reason]
        parts += [f"<h2>{html.escape(run.label)}</h2>", _html_table(run_header, rows)]
        search_header, search, _ = search_rows(run.result)
        if search:
            parts += ["<h3>Photo search</h3>", _html_table(search_header, search)]
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    if report.skipped:
        parts.append("<h2>Skipped files</h2><ul>")
        parts += [f"<li>{html.escape(str(p))}: {html.escape(why)}</li>" for p, why in report.skipped]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(
    report: Report,
    *,
    markdown: str | Path | None = None,
    html_path: str | Path | None = None,
    plot: str | Path | None = None,
    stage: str = "image",
) -> dict[str, Path]:
    """Write the asked-for files (Markdown, HTML with the plot embedded, PNG); returns them by kind."""
    if stage not in STAGE_NAMES:
        raise UsageError(f"stage {stage!r}: expected one of {', '.join(STAGE_NAMES)}")
    written: dict[str, Path] = {}
    png = pareto_png(report, stage) if (plot or html_path) else None
    if plot and png is not None:
        written["plot"] = write_atomic(plot, png)
    if html_path:
        written["html"] = write_atomic(html_path, to_html(report, stage, png))
    if markdown:
        written["markdown"] = write_atomic(markdown, to_markdown(report, stage))
    return written
