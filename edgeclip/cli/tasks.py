"""Task commands: `liveness`, `quality`, `eval liveness`, `eval quality`, `adapt`, `train-quality`, and
`heads add-liveness` / `heads add-quality` to store the task heads in a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeclip.cli import (
    CommaList,
    EdgeclipGroup,
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
from edgeclip.cli.bundle import heads

if TYPE_CHECKING:
    from edgeclip.runtimes.liveness import LivenessResult

_DETECTORS = ("haar", "none")


def _face_options(fn):
    fn = click.option(
        "--margin",
        default=0.3,
        show_default=True,
        type=click.FloatRange(0, 2),
        help="Face crop margin, as a fraction of the face size on each side.",
    )(fn)
    fn = click.option(
        "--min-face",
        default=40,
        show_default=True,
        type=click.IntRange(min=1),
        help="Smallest face (box side, pixels) that counts; smaller ones are reported as no face.",
    )(fn)
    fn = click.option(
        "--detector",
        default="haar",
        show_default=True,
        type=click.Choice(_DETECTORS),
        help="Face detector: haar (OpenCV's bundled cascade) or none (inputs are face crops).",
    )(fn)
    return fn


def _detector(bundle, head, detector, min_face, margin, threshold=0.5):
    from edgeclip.runtimes.liveness import LivenessDetector

    return LivenessDetector(bundle, head, detector=detector, min_face=min_face, margin=margin, threshold=threshold)


# --- liveness ---------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--head", help="A liveness head stored in the bundle (default: 'liveness' if stored, else built now).")
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="A face is live when P(bona fide) >= this.",
)
@_face_options
@click.option("--skip-bad", is_flag=True, help="Report unreadable images and go on, instead of stopping.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@max_pixels_option
@verify_option
@runtime_options
@quiet_option
@json_option
def liveness(
    bundle,
    images,
    head,
    threshold,
    detector,
    min_face,
    margin,
    skip_bad,
    batch_size,
    max_pixels,
    no_verify,
    providers,
    threads,
    quiet,
    as_json,
) -> None:
    """Face liveness: find faces, crop them and score P(bona fide) against attack species.

    \b
    Example:
      edgeclip liveness mc2s0.edgeclip selfie.jpg id_front.jpg --threshold 0.5 --json
    """
    from edgeclip.data.images import expand_image_paths, pixel_limit
    from edgeclip.runtimes import load_bundle

    paths = expand_image_paths(images)
    b = load_bundle(bundle, providers=providers or None, threads=threads, verify=not no_verify)
    det = _detector(b, head, detector, min_face, margin, threshold)
    with pixel_limit(max_pixels):
        results = det.score_many(paths, skip_bad=skip_bad, batch_size=batch_size, progress=show_progress(quiet))
    _print_liveness(results, min_face, as_json)
    report_unreadable(sum(1 for r in results if r.error), len(results), quiet=True)


def _print_liveness(results: list[LivenessResult], min_face: int, as_json: bool) -> None:
    if as_json:
        emit_json([r.to_dict() for r in results])
        return
    width = max(len(r.source) for r in results)
    for r in results:
        if r.error:
            click.echo(f"{r.source:<{width}}  skipped: {r.error}")
        elif not r.faces:
            click.echo(f"{r.source:<{width}}  no face found (faces smaller than {min_face} px are not counted)")
        for i, face in enumerate(r.faces):
            name = r.source if i == 0 else ""
            verdict = "LIVE" if face.is_live else "ATTACK"
            top = max(face.species_probabilities, key=lambda s: face.species_probabilities[s])
            box = face.box
            click.echo(
                f"{name:<{width}}  {verdict:<6} P(bona fide) {face.live_probability:.3f}  top: {top} "
                f"{face.species_probabilities[top]:.3f}  face {box.x},{box.y} {box.width}x{box.height}"
            )


# --- quality ----------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--head", help="A quality head stored in the bundle (default: 'quality' if stored, else built now).")
@click.option(
    "--overall",
    default="quality",
    show_default=True,
    help="The attribute that gives the overall score, or 'mean' of all attributes.",
)
@click.option("--skip-bad", is_flag=True, help="Report unreadable images and go on, instead of stopping.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@max_pixels_option
@verify_option
@runtime_options
@quiet_option
@json_option
def quality(
    bundle, images, head, overall, skip_bad, batch_size, max_pixels, no_verify, providers, threads, quiet, as_json
) -> None:
    """No-reference image quality: an overall score in [0, 1] and one per attribute (CLIP-IQA prompt pairs).

    \b
    Example:
      edgeclip quality mc2s0.edgeclip photos/*.jpg --json
    """
    from edgeclip.data.images import expand_image_paths, pixel_limit
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.quality import QualityScorer

    paths = expand_image_paths(images)
    b = load_bundle(bundle, providers=providers or None, threads=threads, verify=not no_verify)
    scorer = QualityScorer(b, head, overall=overall)
    with pixel_limit(max_pixels):
        results = scorer.score_many(paths, skip_bad=skip_bad, batch_size=batch_size, progress=show_progress(quiet))
    if as_json:
        emit_json([r.to_dict() for r in results])
    else:
        width = max(len(r.source) for r in results)
        for r in results:
            if r.error:
                click.echo(f"{r.source:<{width}}  skipped: {r.error}")
            else:
                parts = "  ".join(f"{k} {v:.2f}" for k, v in r.attributes.items())
                click.echo(f"{r.source:<{width}}  score {r.score:.3f}  ({parts})")
    report_unreadable(sum(1 for r in results if r.error), len(results), quiet=True)


# --- eval -------------------------------------------------------------------------------------------


@cli.group("eval", cls=EdgeclipGroup)
def eval_group() -> None:
    """Measure a task with its field's own metrics.

    \b
    Example:
      edgeclip eval liveness mc2s0.edgeclip ./fas_data
      edgeclip eval quality mc2s0.edgeclip ./iqa_data/scores.csv
    """


@eval_group.command("liveness")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--head", help="A liveness head stored in the bundle (default: 'liveness' if stored, else built now).")
@click.option(
    "--rule",
    default="eer",
    show_default=True,
    type=click.Choice(["eer", "apcer@0.01", "apcer@0.05"]),
    help="How the threshold is chosen on the dev split.",
)
@click.option("--bona-fide", default="bona_fide", show_default=True, help="Folder name of the bona fide class.")
@_face_options
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable images instead of stopping.")
@verify_option
@runtime_options
@quiet_option
@json_option
def eval_liveness(
    bundle,
    data,
    head,
    rule,
    bona_fide,
    detector,
    min_face,
    margin,
    skip_bad,
    no_verify,
    providers,
    threads,
    quiet,
    as_json,
) -> None:
    """ISO/IEC 30107-3 figures on DATA/{dev,test}/<species>/ folders: threshold chosen on dev, applied to test.

    A presentation whose face is not found scores 0 (rejected); the counts are reported.

    \b
    Example:
      edgeclip eval liveness mc2s0.edgeclip ./fas_data --rule eer --json
    """
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.liveness import evaluate_folder

    b = load_bundle(bundle, providers=providers or None, threads=threads, verify=not no_verify)
    det = _detector(b, head, detector, min_face, margin)
    report = evaluate_folder(
        det, data, rule=rule, bona_fide=bona_fide, skip_bad=skip_bad, progress=show_progress(quiet)
    )
    if as_json:
        emit_json(report)
        return
    test = report["test"]
    click.echo(
        f"head {report['head']}, detector {report['detector']}; threshold {report['threshold']:.4f} "
        f"({report['threshold_rule']} on dev)"
    )
    click.echo("test split at the dev threshold:")
    for species, value in test["apcer"].items():
        click.echo(f"  APCER {species:<20} {value:6.1%}")
    click.echo(
        f"  worst APCER ({test['worst_species']}) {test['worst_apcer']:.1%}   BPCER {test['bpcer']:.1%}   "
        f"ACER {test['acer']:.1%}"
    )
    at = "   ".join(f"BPCER@APCER={float(k):.0%} {v:.1%}" for k, v in report["test_bpcer_at_apcer"].items())
    click.echo(f"  EER {report['test_eer']:.1%}   AUC {report['test_auc']:.3f}   {at}")
    missing = {k: v for k, v in report["no_face"].items() if v}
    if missing:
        click.echo(f"  no face found (scored 0): {missing}")


@eval_group.command("quality")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("scores_csv", type=click.Path(path_type=Path))
@click.option("--head", help="A quality head stored in the bundle (default: 'quality' if stored, else built now).")
@click.option("--overall", default="quality", show_default=True, help="Attribute giving the score, or 'mean'.")
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable images instead of stopping.")
@verify_option
@runtime_options
@quiet_option
@json_option
def eval_quality(bundle, scores_csv, head, overall, skip_bad, no_verify, providers, threads, quiet, as_json) -> None:
    """SRCC and PLCC (4-parameter logistic) between quality scores and a CSV of image,score rows.

    \b
    Example:
      edgeclip eval quality mc2s0.edgeclip ./iqa_data/scores.csv --json
    """
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.quality import QualityScorer, evaluate_csv

    b = load_bundle(bundle, providers=providers or None, threads=threads, verify=not no_verify)
    report = evaluate_csv(
        QualityScorer(b, head, overall=overall), scores_csv, skip_bad=skip_bad, progress=show_progress(quiet)
    )
    if as_json:
        emit_json(report)
        return
    click.echo(
        f"{report['images']} images: SRCC {report['srcc']:.4f}  PLCC {report['plcc']:.4f} "
        f"(raw {report['plcc_raw']:.4f})"
    )
    for item in report["skipped"]:
        click.echo(f"  skipped line {item['line']}: {item['error']}")


# --- adapt ------------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("shots", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Name of the head to store.")
@click.option("--base", help="Head to adapt (e.g. liveness); default: a zero-shot head of the folder names.")
@click.option("--templates", default="simple", show_default=True, help="Without --base: openai, simple or @file.")
@click.option("--alpha", type=click.FloatRange(min=0), help="Weight of the GDA logits (default: cross-validated).")
@click.option(
    "--shrinkage",
    type=click.FloatRange(0, 1),
    help="Covariance shrinkage (default: cross-validated with alpha; Ledoit-Wolf is a candidate).",
)
@click.option(
    "--detector",
    type=click.Choice(_DETECTORS),
    help="Crop faces from the shots first (default: haar for a liveness base head, else none).",
)
@click.option(
    "--min-face",
    default=40,
    show_default=True,
    type=click.IntRange(min=1),
    help="With a detector: smallest face (pixels) that counts.",
)
@click.option(
    "--margin",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0, 2),
    help="With a detector: face crop margin, as at scoring time.",
)
@click.option("--force", is_flag=True, help="Replace a head of the same name.")
@verify_option
@runtime_options
@quiet_option
@json_option
def adapt(
    bundle,
    shots,
    name,
    base,
    templates,
    alpha,
    shrinkage,
    detector,
    min_face,
    margin,
    force,
    no_verify,
    providers,
    threads,
    quiet,
    as_json,
) -> None:
    """Training-free adaptation: a GDA head from labelled shots (SHOTS/<label>/*.jpg), stored in the bundle.

    \b
    Example:
      edgeclip adapt mc2s0.edgeclip ./labelled_shots --name my_liveness --base liveness
    """
    from edgeclip.errors import BundleError
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.adapt import adapt_head, read_shots_folder
    from edgeclip.runtimes.faces import get_face_detector
    from edgeclip.runtimes.liveness import HEAD_KIND

    b = load_bundle(bundle, providers=providers or None, threads=threads, verify=not no_verify)
    if b.head_path(name).exists() and not force:
        raise BundleError(f"{b.head_path(name)} exists: pass --force to replace it")
    base_head = b.load_head(base) if base else None
    if detector is None:
        detector = "haar" if base_head is not None and base_head.kind == HEAD_KIND else "none"
    faces = get_face_detector(detector, min_face) if detector != "none" else None
    result = adapt_head(
        b,
        read_shots_folder(shots),
        name,
        base=base_head,
        templates=_templates(templates),
        alpha=alpha,
        shrinkage=shrinkage,
        detector=faces,
        margin=margin,
        progress=show_progress(quiet),
    )
    path = b.save_head(result.head, force=force)
    data = {"path": str(path), **result.to_dict()}
    if as_json:
        emit_json(data)
        return
    click.echo(
        f"wrote {path}: {len(result.head.labels)} classes, alpha {result.alpha:g}, "
        f"shrinkage {result.shrinkage:.3f}, shots {result.shots}"
    )
    cv = data.get("cross_validation")
    if cv:
        click.echo(
            f"  held-out accuracy on the shots ({cv['folds']}-fold): zero-shot {cv['zero_shot_accuracy']:.1%}, "
            f"adapted {cv['adapted_accuracy']:.1%}"
        )
    if result.dropped:
        click.echo(f"  classes without shots, left out: {', '.join(result.dropped)}")
    if result.no_face:
        click.echo(f"  shots without a face, left out: {result.no_face}")


def _templates(value: str) -> str | list[str]:
    return CommaList().convert(value, None, None) if value.startswith("@") else value


# --- train-quality ----------------------------------------------------------------------------------


@cli.command("train-quality")
@click.option("--model", "-m", required=True, help="open_clip architecture, e.g. EdgeCLIP-Tiny-ViT.")
@click.option("--pretrained", "-p", help="Starting weights (checkpoint file or tag).")
@click.option("--random-init", is_flag=True, help="Start from random weights on purpose.")
@click.option(
    "--images", multiple=True, type=click.Path(path_type=Path), help="Folder or file of pristine images (repeatable)."
)
@click.option(
    "--shapes",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Also use this many images of the built-in shapes dataset.",
)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Checkpoint .safetensors.")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Pristine images per step (each gives 2 crops x 6 levels).",
)
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0))
@click.option("--margin", default=0.05, show_default=True, type=click.FloatRange(min=0), help="Ranking margin.")
@click.option(
    "--anchor-weight",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Pull P(good) to 1 at level 0 and to 0 at level 5 (ties each image's offset down).",
)
@click.option(
    "--pooled-weight",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Rank the overall score across images and families too, not only within one image.",
)
@click.option("--families", type=CommaList(), help="Degradation families (default: all six).")
@click.option("--train-text", is_flag=True, help="Train the text encoder too (for random-weight models).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads for this run (default: torch's).")
@quiet_option
@json_option
def train_quality_command(
    model,
    pretrained,
    random_init,
    images,
    shapes,
    output,
    steps,
    batch_size,
    lr,
    margin,
    anchor_weight,
    pooled_weight,
    families,
    train_text,
    seed,
    threads,
    quiet,
    as_json,
) -> None:
    """Opinion-unaware quality training (QualiCLIP-style): ranking losses on degraded crops, no human scores.

    Writes an open_clip-format safetensors checkpoint; export it with `edgeclip export --pretrained`.

    \b
    Example:
      edgeclip train-quality -m EdgeCLIP-Tiny-ViT --random-init --train-text --shapes 500 -o q.safetensors
      edgeclip train-quality -m EdgeCLIP-Tiny-MNv3 --random-init --shapes 600 --pooled-weight 1 -o q.safetensors
      edgeclip export -m EdgeCLIP-Tiny-ViT -p q.safetensors -o q.edgeclip
    """
    from edgeclip.train.quality import FAMILY_ATTRIBUTE, QualityTrainConfig, train_quality

    if threads:
        import torch

        torch.set_num_threads(threads)  # this process is the command's own

    config = QualityTrainConfig(
        architecture=model,
        pretrained=pretrained,
        random_init=random_init,
        images=tuple(str(p) for p in images),
        shapes=shapes,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        margin=margin,
        anchor_weight=anchor_weight,
        pooled_weight=pooled_weight,
        families=tuple(families) if families else tuple(FAMILY_ATTRIBUTE),
        train_text=train_text,
        seed=seed,
    )
    bar = None
    if show_progress(quiet):
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train-quality", unit="step", leave=False)

    def on_log(step: int, record: dict) -> None:
        if bar is not None:
            bar.n = step + 1
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['batch_pair_accuracy']:.2f}")
            bar.refresh()

    try:
        result = train_quality(config, output, on_log=on_log)
    finally:
        if bar is not None:
            bar.close()
    data = {
        "path": str(result.path),
        "seconds": round(result.seconds, 1),
        "probe_pair_accuracy_before": result.probe_before,
        "probe_pair_accuracy_after": result.probe_after,
        "history": result.history,
    }
    if as_json:
        emit_json(data)
        return
    first, last = result.history[0], result.history[-1]
    click.echo(
        f"wrote {result.path} in {result.seconds:.0f}s: loss {first['loss']:.4f} -> {last['loss']:.4f}, "
        f"probe pair-ranking accuracy {result.probe_before:.1%} -> {result.probe_after:.1%}"
    )


# --- task heads -------------------------------------------------------------------------------------


@heads.command("add-liveness")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--name", default="liveness", show_default=True, help="Head name.")
@click.option(
    "--species",
    "species_file",
    type=click.Path(path_type=Path),
    help="JSON {class: [prompts]} replacing the built-in species and prompts.",
)
@click.option("--bona-fide", default="bona_fide", show_default=True, help="The bona fide class's name.")
@click.option("--force", is_flag=True, help="Replace a head of the same name.")
@json_option
def heads_add_liveness(bundle, name, species_file, bona_fide, force, as_json) -> None:
    """Embed the liveness species' prompts and store them as a head, so devices need no text encoder.

    \b
    Example:
      edgeclip heads add-liveness mc2s0.edgeclip --species my_species.json
    """
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.liveness import LIVENESS_SPECIES, build_liveness_head, load_species_file

    b = load_bundle(bundle)
    species = load_species_file(species_file) if species_file else LIVENESS_SPECIES
    head = build_liveness_head(b, species, name, bona_fide)
    path = b.save_head(head, force=force)
    if as_json:
        emit_json({"path": str(path), "labels": list(head.labels), "bona_fide": head.positives[0]})
    else:
        click.echo(f"wrote {path}: {len(head.labels)} classes ({', '.join(head.labels)}), bona fide {bona_fide!r}")


@heads.command("add-quality")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--name", default="quality", show_default=True, help="Head name.")
@click.option("--force", is_flag=True, help="Replace a head of the same name.")
@json_option
def heads_add_quality(bundle, name, force, as_json) -> None:
    """Embed the quality attributes' antonym prompts and store them as a head.

    \b
    Example:
      edgeclip heads add-quality mc2s0.edgeclip
    """
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.quality import build_quality_head

    b = load_bundle(bundle)
    head = build_quality_head(b, name=name)
    path = b.save_head(head, force=force)
    if as_json:
        emit_json({"path": str(path), "labels": list(head.labels)})
    else:
        click.echo(f"wrote {path}: {len(head.labels) // 2} attribute pairs ({', '.join(dict.fromkeys(head.groups))})")
