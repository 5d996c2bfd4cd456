"""Photo search commands: `index`, `search`, `eval retrieval` and `bench search`."""

from __future__ import annotations

from pathlib import Path

import click

from edgeclip.cli import (
    CommaList,
    cli,
    emit_json,
    json_option,
    quiet_option,
    runtime_options,
    show_progress,
    verify_option,
)
from edgeclip.cli.bench import IntList, _Steps, bench, show_result
from edgeclip.cli.tasks import eval_group

_STORAGES = ("fp16", "int8")


@cli.command("index")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--db", required=True, type=click.Path(path_type=Path), help="The index file (SQLite), made if new.")
@click.option(
    "--storage",
    type=click.Choice(_STORAGES),
    help="How vectors are stored in a new index: fp16 (default) or int8 with a per-vector scale.",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per encoder run.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Decoding threads.")
@click.option(
    "--commit-every",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Encoder batches per commit (a killed run loses at most these).",
)
@click.option(
    "--ann",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "on", "off"]),
    help="Approximate index: auto builds one from 20,000 photos when usearch is installed (edgeclip[search]).",
)
@click.option("--wait", is_flag=True, help="Wait for another indexer of the same file instead of stopping.")
@runtime_options
@quiet_option
@json_option
def index_command(
    bundle, folder, db, storage, batch_size, workers, commit_every, ann, wait, providers, threads, quiet, as_json
) -> None:
    """Embed the photos under FOLDER into an index file; run again to add new and changed photos and drop deleted ones.

    \b
    Example:
      edgeclip index mc2s0.edgeclip ~/Pictures --db photos.sqlite
      edgeclip search photos.sqlite "a dog on the beach at sunset"
    """
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.search import index_folder

    b = load_bundle(bundle, providers=providers or None, threads=threads)
    report = index_folder(
        b,
        folder,
        db,
        storage=storage,
        batch_size=batch_size,
        workers=workers,
        commit_every=commit_every,
        ann=ann,
        wait=wait,
        progress=show_progress(quiet),
    )
    if as_json:
        emit_json(report.to_dict())
        return
    r = report
    click.echo(
        f"{r.db}: {r.total} photos. This run: {r.embedded} embedded ({r.added} new, {r.changed} changed), "
        f"{r.reused} copied from identical photos, {r.touched} touched, {r.unchanged} unchanged, {r.removed} removed, "
        f"{len(r.skipped)} skipped; {r.images_per_s:.1f} images/s ({r.storage} vectors)"
    )
    for item in r.skipped[:10]:
        click.echo(f"  skipped {item['path']}: {item['error']}")
    if len(r.skipped) > 10:
        click.echo(f"  ... and {len(r.skipped) - 10} more (--json lists them all)")
    if r.ann:
        if r.ann.get("kind"):
            click.echo(
                f"approximate index: {r.ann['kind']}, {r.ann['count']} entries, recall@10 against exact "
                f"{r.ann['recall_at_10']:.4f} ({r.ann['recall_queries']} queries)"
                + ("" if r.ann.get("built") else ", unchanged")
            )
        else:
            click.echo(f"note: {r.ann['note']}")


@cli.command("search")
@click.argument("db", type=click.Path(path_type=Path))
@click.argument("text", required=False)
@click.option("--image", type=click.Path(path_type=Path), help="Find photos like this one instead of by text.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="How many results.")
@click.option(
    "--templates",
    help="Prompt templates for text queries: openai, simple or @file (default: the text as typed).",
)
@click.option("--glob", help="Only paths matching this glob (SQLite GLOB: case-sensitive, * crosses folders).")
@click.option("--since", help="Only photos modified on or after this date (YYYY-MM-DD).")
@click.option("--until", help="Only photos modified before this date (YYYY-MM-DD).")
@click.option(
    "--method",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "exact", "approximate"]),
    help="auto: the approximate index when fresh and no filter is given, else exact.",
)
@click.option("--bundle", type=click.Path(path_type=Path), help="The bundle (default: the one the index recorded).")
@runtime_options
@json_option
def search_command(
    db, text, image, k, templates, glob, since, until, method, bundle, providers, threads, as_json
) -> None:
    """Find the photos in an index most like a text or an example image.

    \b
    Example:
      edgeclip search photos.sqlite "a dog on the beach at sunset" -k 10
      edgeclip search photos.sqlite --image query.jpg -k 10 --json
      edgeclip search photos.sqlite "birthday cake" --glob '*/2024/*' --since 2024-01-01
    """
    from edgeclip.errors import UsageError
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.search import open_index

    if (text is None) == (image is None):
        raise UsageError("give a TEXT query or --image PATH (one of them)")
    options = {"providers": providers or None, "threads": threads}
    b = load_bundle(bundle, **options) if bundle else None
    template_arg = None
    if templates:
        template_arg = CommaList().convert(templates, None, None) if templates.startswith("@") else templates
    with open_index(db, b, **options) as index:
        filters = {"glob": glob, "since": since, "until": until, "method": method}
        if text is not None:
            result = index.search_text(text, k, templates=template_arg, **filters)
        else:
            result = index.search_image(image, k, **filters)
    if as_json:
        emit_json(result.to_dict())
    else:
        for rank, hit in enumerate(result.hits, 1):
            click.echo(f"{rank:3d}  {hit.score:.4f}  {hit.path}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


@eval_group.command("retrieval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("captions")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@runtime_options
@quiet_option
@json_option
def eval_retrieval(bundle, captions, batch_size, providers, threads, quiet, as_json) -> None:
    """recall@1/5/10 text→image and image→text on CAPTIONS: a JSON Lines file of {"image", "caption"} records, or
    shapes[:split[:count[:size]]] (the built-in shapes world, e.g. shapes:eval:1000:64).

    \b
    Example:
      edgeclip eval retrieval mc2s0.edgeclip captions.jsonl --json
      edgeclip eval retrieval shapes.edgeclip shapes:eval:1000
    """
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.search import evaluate_retrieval

    b = load_bundle(bundle, providers=providers or None, threads=threads)
    report = evaluate_retrieval(b, captions, batch_size=batch_size, progress=show_progress(quiet))
    if as_json:
        emit_json(report)
        return
    ks = list(report["text_to_image"])
    click.echo(f"{report['dataset']}: {report['images']} images, {report['captions']} captions ({report['model_id']})")
    click.echo(f"{'':16}" + "".join(f"{k:>8}" for k in ks))
    for key, name in (("text_to_image", "text → image"), ("image_to_text", "image → text"), ("chance", "chance")):
        click.echo(f"{name:16}" + "".join(f"{report[key][k]:8.4f}" for k in ks))
    for storage, figures in report["stored"].items():
        t2i = figures["text_to_image"]
        i2t = figures["image_to_text"]
        click.echo(
            f"stored as {storage}: text → image "
            + " ".join(f"{k} {t2i[k]:.4f}" for k in ks)
            + "; image → text "
            + " ".join(f"{k} {i2t[k]:.4f}" for k in ks)
        )
    for item in report["skipped"]:
        click.echo(f"  skipped {item['image']}: {item['error']}")


@bench.command("search")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--entries",
    "sizes",
    type=IntList(),
    default="10000,100000",
    show_default=True,
    help="Collection sizes for query latency.",
)
@click.option("--images", default=256, show_default=True, type=click.IntRange(min=1), help="Images to index.")
@click.option("--image-size", default=128, show_default=True, type=click.IntRange(16, 1024), help="Their side, px.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Decoding threads.")
@click.option("--runs", default=200, show_default=True, type=click.IntRange(min=1), help="Timed queries per row.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--dim", type=click.IntRange(min=1), help="Width of the synthetic vectors (default: the bundle's).")
@click.option("--storage", default="fp16", show_default=True, type=click.Choice(_STORAGES))
@click.option("--label", help="How reports name this run.")
@click.option("--device-name", help="Device name in the results (default: the host name).")
@click.option("--json", "json_path", help="Write the results file here; '-' prints it.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@verify_option
@runtime_options
@quiet_option
def bench_search(
    bundle, sizes, images, image_size, batch_size, workers, runs, warmup, dim, storage, label, device_name,
    json_path, markdown, no_verify, providers, threads, quiet,
) -> None:  # fmt: skip
    """Photo-search rows: index throughput against the encoder's own, and query p50/p99 and recall@10 of exact and
    approximate search at each --entries size (synthetic vectors). Rows go into the usual results file.

    \b
    Example:
      edgeclip bench search mc2s0.edgeclip --json results/search-$(hostname).json
      edgeclip bench report results/*.json --markdown report.md
    """
    from edgeclip.bench.search import run_search_bench

    steps = _Steps(show_progress(quiet))
    try:
        result = run_search_bench(
            bundle,
            sizes=sizes,
            images=images,
            image_size=image_size,
            batch_size=batch_size,
            workers=workers,
            runs=runs,
            warmup=warmup,
            dim=dim,
            storage=storage,
            threads=threads,
            providers=providers or None,
            label=label,
            device_name=device_name,
            verify=not no_verify,
            on_step=steps.step,
        )
    finally:
        steps.close()
    show_result(result, json_path, markdown=markdown, quiet=quiet)
