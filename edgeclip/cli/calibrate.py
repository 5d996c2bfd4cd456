"""`edgeclip calibrate`: choose and store a calibration set for int8 export (one .npz every backend reads)."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import click

from edgeclip.cli import CommaList, cli, emit_json, json_option, quiet_option, show_progress


def _preprocess_spec(model: str, pretrained: str | None):
    """The model's preprocessing: from a bundle's manifest, or from the open_clip architecture (needs torch)."""
    from edgeclip.runtimes.manifest import MANIFEST_NAME, BundleManifest

    path = Path(model)
    if (path / MANIFEST_NAME).is_file():
        return BundleManifest.from_json((path / MANIFEST_NAME).read_text(encoding="utf-8")).preprocess
    from edgeclip.models.loading import check_architecture
    from edgeclip.models.preprocess import preprocess_spec_for

    return preprocess_spec_for(check_architecture(model), pretrained)[0]


@cli.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--model", "-m", required=True, help="open_clip architecture or a bundle folder: whose preprocessing.")
@click.option("--pretrained", "-p", help="Pretrained tag or checkpoint whose preprocessing applies (architectures).")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="The .npz to write.")
@click.option("--count", "-n", type=click.IntRange(min=1), default=256, show_default=True, help="Images to keep.")
@click.option(
    "--strategy",
    type=click.Choice(["random", "diverse"]),
    default="random",
    show_default=True,
    help="random: seeded draw; diverse: farthest-point over image features (bundle: its embeddings).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for the draw.")
@click.option(
    "--texts",
    "texts_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Text calibration strings, one per line (default: captions, else templates x --labels).",
)
@click.option("--labels", type=CommaList(), help="Label words for templated text strings: a,b,c or @file.")
@click.option("--force", is_flag=True, help="Overwrite an existing --output.")
@quiet_option
@json_option
def calibrate(
    source: Path,
    model: str,
    pretrained: str | None,
    output: Path,
    count: int,
    strategy: str,
    seed: int,
    texts_file: Path | None,
    labels: list[str] | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a calibration set from a folder of images (recursive) or a captions file (.jsonl/.tsv).

    \b
    Examples:
      edgeclip calibrate ./my_domain_images --count 256 --output calib.npz --model MobileCLIP2-S0
      edgeclip calibrate ./photos -o calib.npz -m mc2s0.edgeclip --strategy diverse --labels cat,dog,car
      edgeclip export -m MobileCLIP2-S0 -p ckpt.safetensors --precision int8 --calibration calib.npz -o int8.edgeclip
    """
    from edgeclip.calibration import build_calibration_set, default_text_strings, read_text_strings
    from edgeclip.errors import UsageError

    if output.exists() and not force:
        raise UsageError(f"output {output} exists: pass --force to overwrite it")
    spec = _preprocess_spec(model, pretrained)
    texts = read_text_strings(texts_file) if texts_file else (default_text_strings(labels) if labels else None)
    embed = None
    if strategy == "diverse" and (Path(model) / "manifest.json").is_file():
        from edgeclip.runtimes.bundle import load_bundle

        bundle = load_bundle(Path(model))
        embed = lambda pixels: bundle.encoder("image").run({"pixels": pixels})[0]  # noqa: E731
    bar = None
    if show_progress(quiet):
        from tqdm.auto import tqdm

        bar = tqdm(file=sys.stderr, leave=False, desc="reading images")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calib, skipped = build_calibration_set(
            source, spec, count=count, strategy=strategy, seed=seed, texts=texts, embed=embed, progress=progress
        )
    calib.save(output)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    notes = [str(w.message) for w in caught]
    if as_json:
        emit_json(
            {
                "path": str(output),
                "seconds": round(seconds, 3),
                "skipped": skipped,
                "warnings": notes,
                **calib.describe(),
            }
        )
        return
    for line in skipped:
        click.echo(f"skipped {line}", err=True)
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    h, w = spec.image_size
    click.echo(
        f"wrote {output}  ({calib.id}: {len(calib)} images at {h}x{w}, {len(calib.texts)} texts, "
        f"{strategy}, seed {seed}, {seconds:.1f}s)"
    )
