"""Commands that use a bundle: `info`, `heads`, `classify`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeclip.cli import (
    CommaList,
    EdgeclipGroup,
    backend_options,
    cli,
    emit_json,
    json_option,
    max_pixels_option,
    quiet_option,
    report_unreadable,
    runtime_options,
    show_progress,
    verify_option,
)

# --- info -------------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check file sha256 sums.")
@click.option(
    "--placement",
    is_flag=True,
    help="Load each encoder with the runtime (and --provider/--threads/--backend) and show which ops its "
    "accelerated delegate took and which fell back.",
)
@runtime_options
@backend_options
@json_option
def info(
    bundle: Path,
    verify: bool,
    placement: bool,
    providers: tuple[str, ...],
    threads: int | None,
    backend: str | None,
    precision_hint: str | None,
    as_json: bool,
) -> None:
    """Show what a bundle holds: model, target, preprocessing, tokenizer, files, parity, golden files and heads.

    With --backend (or --precision-hint) it also loads the encoders and says which runtime runs them, how, and
    why it was picked (`--backend auto`: the probe's figures).

    \b
    Examples:
      edgeclip info mc2s0.edgeclip
      edgeclip info mc2s0.edgeclip --placement --threads 2
      edgeclip info mc2s0.edgeclip --backend auto --threads 2
    """
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.golden import load_golden
    from edgeclip.runtimes.placement import Placement, bundle_placements

    runs = backend is not None or precision_hint is not None
    if not (placement or runs) and (providers or threads):
        raise click.UsageError("--provider and --threads set how --placement or --backend load the encoders: add one")
    b = load_bundle(
        bundle,
        providers=providers or None,
        threads=threads,
        backend=backend,
        precision_hint=precision_hint,
        verify=verify,
    )
    if verify:
        b.verify()
    summary = b.summary()
    golden = load_golden(b.path, b.manifest, verify=verify)
    summary["golden"] = golden.summary() if golden else None
    placements = bundle_placements(b) if placement else {}
    if placement:
        summary["placement"] = {
            "backend": b.backend_info.name,
            **{role: p.to_dict() if isinstance(p, Placement) else {"unavailable": p} for role, p in placements.items()},
        }
    runtime = b.runtime_summary() if runs else None
    if runtime is not None:
        summary["runtime"] = runtime
    if as_json:
        emit_json(summary)
        return
    m = b.manifest
    src = m.source
    click.echo(f"bundle     {b.path}")
    click.echo(f"model      {src.architecture}  weights: {src.pretrained or '-'}  id: {m.model_id}")
    if src.random_init:
        click.echo("           random weights (exported with --random-init): structure and speed demo only")
    click.echo(f"target     {m.target} {m.precision}  embed dim {m.embed_dim}  logit scale {m.logit_scale:.2f}")
    p = m.preprocess
    click.echo(
        f"preprocess {p.image_size[0]}x{p.image_size[1]} {p.resize_mode} {p.interpolation}  "
        f"mean {list(p.mean)} std {list(p.std)}  ({m.preprocess_source})"
    )
    t = m.tokenizer
    click.echo(f"tokenizer  {t.kind} ({t.file}), context length {t.context_length}")
    for role, enc in m.encoders.items():
        ins = ", ".join(f"{i.name} {list(i.shape)} {i.dtype}" for i in enc.inputs)
        size = summary["files"][enc.file] / 1e6
        click.echo(f"{role:<10} {enc.file} ({size:.1f} MB)  in: {ins}")
        if enc.parity:
            q = enc.parity
            click.echo(
                f"           parity: min cosine {q.min_cosine:.6f}, mean {q.mean_cosine:.6f}, "
                f"max abs diff {q.max_abs_diff:.2e} ({q.samples} samples vs {q.reference})"
            )
    if golden:
        g = summary["golden"]
        click.echo(
            f"golden     {g['images']} images, {g['texts']} texts, {g['size_bytes'] / 1e3:.0f} kB; embeddings from "
            f"{g['embeddings_from']} (check a port with `edgeclip check-port`)"
        )
    else:
        click.echo("golden     no golden files (written before edgeclip added them; re-export to get them)")
    for role, placed in placements.items():
        if isinstance(placed, Placement):
            click.echo(f"placement  {role:<6} {b.backend_info.name} · {placed.summary()}")
        else:
            click.echo(f"placement  {role:<6} not reported: {placed}")
    click.echo(f"heads      {', '.join(summary['heads']) or 'none'}")
    if runtime is not None:
        click.echo(f"runtime    {runtime['backend']}: {runtime['runs'] or '-'}")
        click.echo(f"           picked: {runtime['why']}")
    checked = "verified" if verify else "not verified"
    if verify and not m.covers_every_file:
        checked = (
            f"partly verified: encoders only, format {m.format_version} has no tokenizer or head checksums (re-export)"
        )
    click.echo(f"written by edgeclip {m.edgeclip_version} on {m.created}; files {checked}")


# --- heads ------------------------------------------------------------------------------------------


@cli.group(cls=EdgeclipGroup)
def heads() -> None:
    """Manage precomputed label heads stored in a bundle.

    \b
    Example:
      edgeclip heads add mc2s0.edgeclip --name pets --labels cat,dog,hamster --templates openai
    """


@heads.command("add")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Head name (letters, digits, '_', '-', '.').")
@click.option("--labels", required=True, type=CommaList(), help="Comma-separated labels, or @file with one per line.")
@click.option("--templates", default="openai", show_default=True, help="openai (80), simple (7) or @file.")
@click.option("--force", is_flag=True, help="Replace a head of the same name.")
@quiet_option
@json_option
def heads_add(bundle: Path, name: str, labels: list[str], templates: str, force: bool, quiet: bool, as_json: bool):
    """Embed labels x templates with the bundle's text encoder and store them as a zero-shot head.

    \b
    Example:
      edgeclip heads add mc2s0.edgeclip --name pets --labels cat,dog,hamster --templates simple
    """
    from edgeclip.runtimes import build_zero_shot_head, load_bundle

    b = load_bundle(bundle)
    head = build_zero_shot_head(b, labels, _templates(templates), name, progress=show_progress(quiet))
    path = b.save_head(head, force=force)
    if as_json:
        emit_json({"path": str(path), "labels": list(head.labels), "templates": len(head.templates)})
    else:
        click.echo(f"wrote {path}: {len(head.labels)} labels x {len(head.templates)} templates")


def _templates(value: str) -> str | list[str]:
    if value.startswith("@"):
        return CommaList().convert(value, None, None)
    return value


@heads.command("list")
@click.argument("bundle", type=click.Path(path_type=Path))
@json_option
def heads_list(bundle: Path, as_json: bool) -> None:
    """List the heads stored in a bundle.

    \b
    Example:
      edgeclip heads list mc2s0.edgeclip
    """
    from edgeclip.errors import EdgeclipError
    from edgeclip.runtimes import load_bundle

    b = load_bundle(bundle)
    rows: list[dict[str, Any]] = []  # one JSON object per head
    for name in b.head_names():
        try:
            h = b.load_head(name)
        except EdgeclipError as e:  # one bad head is reported in its row; the others still list
            rows.append({"name": name, "error": str(e)})
            continue
        rows.append({"name": name, "kind": h.kind, "labels": list(h.labels), "templates": len(h.templates)})
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        if "error" in r:
            click.echo(f"{r['name']:<20} unusable: {r['error']}")
            continue
        shown = ", ".join(r["labels"][:8]) + (" …" if len(r["labels"]) > 8 else "")
        click.echo(f"{r['name']:<20} {r['kind']:<10} {len(r['labels'])} labels ({shown}), {r['templates']} templates")
    if not rows:
        click.echo("no heads")


@heads.command("remove")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("name")
def heads_remove(bundle: Path, name: str) -> None:
    """Delete a head from a bundle.

    \b
    Example:
      edgeclip heads remove mc2s0.edgeclip pets
    """
    from edgeclip.runtimes import load_bundle

    path = load_bundle(bundle).remove_head(name)
    click.echo(f"removed {path}")


# --- classify ---------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--head", help="A head stored in the bundle (see `edgeclip heads list`).")
@click.option("--labels", type=CommaList(), help="Comma-separated labels (or @file), embedded on the fly.")
@click.option("--templates", default="openai", show_default=True, help="With --labels: openai, simple or @file.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Labels shown per image.")
@click.option("--skip-bad", is_flag=True, help="Report unreadable images and go on, instead of stopping.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--jsonl", "as_jsonl", is_flag=True, help="Print one JSON object per image, as each batch finishes.")
@max_pixels_option
@verify_option
@runtime_options
@backend_options
@quiet_option
@json_option
def classify(
    bundle: Path,
    images: tuple[Path, ...],
    head: str | None,
    labels: list[str] | None,
    templates: str,
    top_k: int,
    skip_bad: bool,
    batch_size: int,
    as_jsonl: bool,
    max_pixels: int | None,
    no_verify: bool,
    providers: tuple[str, ...],
    threads: int | None,
    backend: str | None,
    precision_hint: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Zero-shot classify images (files or folders) with a stored head or labels; results print as batches finish.

    Runs on the fastest installed backend for this bundle and machine (`--backend auto`, a probe cached per bundle
    and machine: OpenVINO bf16 on CPUs with AVX512_BF16); `--precision-hint f32` keeps to exact arithmetic and
    `--backend NAME` (or `--provider`) runs one backend.

    \b
    Examples:
      edgeclip classify mc2s0.edgeclip photos/*.jpg --head pets
      edgeclip classify mc2s0.edgeclip photos/ --labels "cat,dog" --top-k 1 --jsonl
    """
    import json

    from edgeclip.data.images import expand_image_paths, pixel_limit
    from edgeclip.runtimes import ZeroShotClassifier, load_bundle

    if (head is None) == (labels is None):
        raise click.UsageError("give --head NAME or --labels a,b,c (one of them)")
    if as_json and as_jsonl:
        raise click.UsageError("give --json or --jsonl, not both")
    paths = expand_image_paths(images)
    if backend is None and not providers:  # doing nothing gets the fast path; --provider names ONNX Runtime's own
        backend = "auto"
    b = load_bundle(
        bundle,
        providers=providers or None,
        threads=threads,
        verify=not no_verify,
        backend=backend,
        precision_hint=precision_hint,
    )
    clf = ZeroShotClassifier(b, labels=labels, templates=_templates(templates), head=head)
    width = max(len(str(p)) for p in paths)
    bad = 0
    if as_json:
        click.echo("[")
    with pixel_limit(max_pixels), _bar(len(paths), show_progress(quiet)) as bar:
        stream = clf.iter_predictions(paths, top_k=top_k, skip_bad=skip_bad, batch_size=batch_size)
        for n, p in enumerate(stream):
            bad += p.error is not None
            bar.update(1)
            if as_json:  # streamed as a JSON array, item by item
                text = json.dumps(p.to_dict(), indent=2, ensure_ascii=False)
                click.echo(("" if n == 0 else ",\n") + "\n".join("  " + line for line in text.splitlines()), nl=False)
            elif as_jsonl:
                click.echo(json.dumps(p.to_dict(), ensure_ascii=False))
            elif p.error:
                click.echo(f"{p.source:<{width}}  skipped: {p.error}")
            else:
                click.echo(f"{p.source:<{width}}  " + "  ".join(f"{label} {prob:.3f}" for label, prob in p.ranked))
    if as_json:
        click.echo("\n]")
    report_unreadable(bad, len(paths), quiet)


def _bar(total: int, enabled: bool) -> Any:  # a tqdm bar
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="classify", unit="img", leave=False)
