"""`edgeclip reinforce`, `edgeclip distill` and `edgeclip quickstart`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from edgeclip.cli import cli, emit_json, json_option, quiet_option, show_progress


def _bar(enabled: bool, total: int | None, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit=unit, file=sys.stderr, leave=False)


def _augment(crop_scale: tuple[float, float] | None, ops: int | None, magnitude: int | None):
    from edgeclip.distill.augment import AugmentConfig

    if crop_scale is None and ops is None and magnitude is None:
        return None
    defaults = AugmentConfig()
    return AugmentConfig(
        scale=crop_scale or defaults.scale,
        num_ops=defaults.num_ops if ops is None else ops,
        magnitude=defaults.magnitude if magnitude is None else magnitude,
    )


def _augment_options(fn):
    fn = click.option("--randaug-magnitude", type=click.IntRange(0, 30), help="RandAugment magnitude (0..30; 9).")(fn)
    fn = click.option("--randaug-ops", type=click.IntRange(0, 8), help="RandAugment ops per view (default 2).")(fn)
    fn = click.option(
        "--crop-scale", type=(click.FloatRange(0, 1, min_open=True), click.FloatRange(0, 1)),
        help="RandomResizedCrop area range, e.g. 0.5 1.0 (default 0.08 1.0).",
    )(fn)  # fmt: skip
    return fn


@cli.command()
@click.option(
    "--images",
    "-i",
    help="Image–caption source: captions.jsonl/.csv, a folder with "
    "sidecar .txt captions, img2dataset shards ('data/{00000..00009}.tar') or shapes[:split[:count]].",
)
@click.option(
    "--teacher",
    "-t",
    "teachers",
    multiple=True,
    help="ARCH:WEIGHTS_FILE of one teacher (repeat for an ensemble).",
)
@click.option("--captioner", help="ARCH:WEIGHTS_FILE of an open_clip CoCa model for synthetic captions.")
@click.option(
    "--captions-file",
    type=click.Path(path_type=Path),
    help='JSONL of synthetic captions instead of a captioner: {"uid": ..., "captions": [...]}.',
)
@click.option(
    "--augmentations",
    "-k",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Augmentations stored per image (K).",
)
@click.option(
    "--synthetic-captions",
    "-s",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Synthetic captions per image (S).",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Folder for shards.")
@click.option("--samples-per-shard", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per teacher batch."
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--skip-missing", is_flag=True, help="Leave out records whose image or caption is missing.")
@click.option(
    "--num-workers",
    type=click.IntRange(min=1),
    help="Independent jobs sharing the work (default: SLURM_ARRAY_TASK_COUNT, or EDGECLIP_NUM_WORKERS; else 1).",
)
@click.option(
    "--worker-index",
    type=int,
    help="This job's index, 0..W-1 (default: from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX).",
)
@click.option(
    "--check",
    "check_folder",
    type=click.Path(path_type=Path),
    metavar="FOLDER",
    help="Check a run's folder instead: every planned shard finished, or fail naming the missing ones.",
)
@click.option(
    "--compare",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    metavar="FOLDER",
    help="With --check: compare the data sample by sample with another run's (e.g. a 1-process run).",
)
@click.option(
    "--tolerance",
    default=1e-5,
    show_default=True,
    type=click.FloatRange(min=0),
    help="With --compare: the largest teacher-embedding difference that counts as equal.",
)
@_augment_options
@quiet_option
@json_option
def reinforce(
    images: str,
    teachers: tuple[str, ...],
    captioner: str | None,
    captions_file: Path | None,
    augmentations: int,
    synthetic_captions: int,
    output: Path,
    samples_per_shard: int,
    batch_size: int,
    seed: int,
    skip_missing: bool,
    num_workers: int | None,
    worker_index: int | None,
    check_folder: Path | None,
    compare: Path | None,
    tolerance: float,
    crop_scale: tuple[float, float] | None,
    randaug_ops: int | None,
    randaug_magnitude: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run teachers once over images and K augmentations each; write DataCompDR-layout shards.

    Re-running with the same settings skips finished shards (and redoes any cut short). Work splits over
    independent jobs (--num-workers/--worker-index, or a Slurm array / Kubernetes indexed job's environment)
    and over torchrun processes within a job; the data is the same however it is split. `--check FOLDER`
    confirms every planned shard is there once all jobs are done.

    \b
    Example:
      edgeclip reinforce --images captions.jsonl --teacher ViT-L-14:./vitl14.safetensors \\
          --teacher ViT-L-14:./dc.safetensors --augmentations 10 --output shards/
      edgeclip reinforce --images shapes:train:2000 --teacher EdgeCLIP-Teacher-S:teacher.safetensors \\
          --augmentations 4 --output shapes-shards/ --num-workers 4 --worker-index 0
      edgeclip reinforce --check shapes-shards/ --compare one-process-shards/
    """
    if check_folder is not None:
        _check_run(check_folder, compare, tolerance, as_json)
        return
    if compare is not None:
        raise click.UsageError("--compare goes with --check FOLDER")
    missing = [
        name for name, value in (("--images", images), ("--teacher", teachers), ("--output", output)) if not value
    ]
    if missing:
        raise click.UsageError(f"reinforce needs {', '.join(missing)} (or --check FOLDER to check a finished run)")
    assert images is not None and output is not None  # checked above
    from edgeclip.distill.shards import reinforce as run_reinforce

    with _bar(show_progress(quiet), None, "reinforce", "img") as bar:
        result = run_reinforce(
            images,
            list(teachers),
            output,
            augmentations=augmentations,
            synthetic_captions=synthetic_captions,
            captioner=captioner,
            captions_file=captions_file,
            samples_per_shard=samples_per_shard,
            batch_size=batch_size,
            seed=seed,
            augment=_augment(crop_scale, randaug_ops, randaug_magnitude),
            skip_missing=skip_missing,
            num_workers=num_workers,
            worker_index=worker_index,
            environ=os.environ,  # Slurm array / Kubernetes indexed job variables default the worker split
            on_progress=bar.update,
        )
    if as_json:
        emit_json(result.to_dict())
        return
    m = result.manifest
    dims = "+".join(map(str, m.dims))
    if not result.assigned:
        click.echo(f"{result.where()}: none of the {m.shards} planned shard(s) falls to this process: nothing to write")
        return
    click.echo(
        f"{result.where()}: wrote {len(result.written)} of its {len(result.assigned)} shard(s) (of {m.shards} "
        f"planned) to {result.output} (dataset {m.identity()})"
    )
    for name, why in result.redone.items():
        click.echo(f"  redid {name}: the file there was not finished ({why})")
    click.echo(f"  {result.images} images x K={m.augmentations}, S={m.synthetic_captions}, teacher dims {dims}")
    click.echo(
        f"  {result.images_per_second:.1f} images/s, {result.bytes_per_sample / 1024:.1f} KiB per sample on disk"
    )
    if result.skipped_existing:
        click.echo(f"  {len(result.skipped_existing)} shard(s) already complete, skipped")
    if m.skipped_missing:
        click.echo(f"  {m.skipped_missing} record(s) left out: image or caption missing (--skip-missing)")
    if result.failed:
        first = "; ".join(list(result.failed.values())[:3])
        click.echo(f"  {len(result.failed)} image(s) could not be decoded and were left out: {first}")
    if m.shards > len(result.assigned):  # other jobs or ranks write the rest: say where the whole run stands
        from edgeclip.distill.shards import check_plan

        status = check_plan(result.output)
        if status.complete:
            click.echo(f"  all {m.shards} planned shards are finished: the run is complete")
        else:
            todo = len(status.missing) + len(status.unfinished)
            click.echo(
                f"  {todo} planned shard(s) not finished yet (other jobs' or ranks'); when all have ended: "
                f"edgeclip reinforce --check {result.output}"
            )


def _check_run(folder: Path, compare: Path | None, tolerance: float, as_json: bool) -> None:
    """`reinforce --check`: every planned shard finished (else a one-line refusal naming them), optionally compared."""
    from edgeclip.distill.shards import check_plan, compare_reinforced
    from edgeclip.errors import DatasetError

    report = check_plan(folder)
    comparison = compare_reinforced(folder, compare, tolerance) if compare is not None and report.complete else None
    if as_json:
        emit_json({**report.to_dict(), "comparison": comparison.to_dict() if comparison else None})
    if not report.complete:
        raise DatasetError(report.problem())
    if not as_json:
        m = report.manifest
        click.echo(
            f"{folder}: all {m.shards} planned shard(s) finished, {report.samples} samples "
            f"(dataset {m.identity()}, K={m.augmentations}, S={m.synthetic_captions})"
        )
        if report.unplanned:
            click.echo(
                f"  {len(report.unplanned)} .tar file(s) the plan does not name: {', '.join(report.unplanned[:5])}"
            )
        if report.leftovers:
            click.echo(
                f"  {len(report.leftovers)} temporary file(s) of interrupted writers, safe to delete once no job runs"
            )
        if comparison is not None:
            click.echo(f"  against {compare}: {comparison.summary()}")
    if comparison is not None and not comparison.equal:
        raise DatasetError(f"{folder} differs from {compare}: {comparison.summary()}")


@cli.command()
@click.option(
    "--data",
    "-d",
    required=True,
    help="Reinforced shards (folder or 'shards/{00000..00099}.tar'); with --loss clip also any image–caption source.",
)
@click.option("--model", "-m", required=True, help="open_clip student architecture, e.g. MobileCLIP2-S0.")
@click.option(
    "--pretrained",
    "-p",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Start from these weights (default: seeded random init).",
)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option(
    "--loss",
    type=click.Choice(["reinforced", "clip", "online"]),
    default="reinforced",
    show_default=True,
    help="reinforced: stored teacher embeddings; clip: plain contrastive; online: teachers run every step.",
)
@click.option("--lambda", "lam", type=click.FloatRange(0, 1), help="Weight of KD in (1-λ)·CLIP + λ·KD (default 1.0).")
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Per process.")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--weight-decay", default=0.1, show_default=True, type=click.FloatRange(min=0))
@click.option("--warmup", default=100, show_default=True, type=click.IntRange(min=0), help="Warmup steps.")
@click.option("--grad-clip", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--images", help="Local image source to join pixels by uid/url (Apple's DataCompDR shards).")
@click.option(
    "--datacompdr",
    type=click.IntRange(min=1),
    metavar="K",
    help="Shards are Apple's DataCompDR (no dataset.json) with K augmentations; needs --images.",
)
@click.option(
    "--captions",
    "captions_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help='With --loss clip on an image source: JSONL of extra captions per uid ({"uid", "captions"}); '
    "each step uses the real caption or one of these, uniformly.",
)
@click.option("--eval", "eval_spec", help="Labelled split for zero-shot top-1: shapes:eval:500 or a class-folder tree.")
@click.option("--eval-every", default=0, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--checkpoint-every",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Steps between checkpoints (0: only at the end).",
)
@click.option("--keep-checkpoints", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--log-samples", is_flag=True, help="Record every step's sample uids in log.jsonl.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--threads", type=click.IntRange(min=1), help="PyTorch CPU threads per process.")
@_augment_options
@quiet_option
@json_option
def distill(
    data: str,
    model: str,
    pretrained: Path | None,
    output: Path,
    loss: str,
    lam: float | None,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    grad_clip: float,
    images: str | None,
    datacompdr: int | None,
    captions_file: Path | None,
    eval_spec: str | None,
    eval_every: int,
    checkpoint_every: int,
    keep_checkpoints: int,
    seed: int,
    resume: bool,
    log_samples: bool,
    device: str,
    threads: int | None,
    crop_scale: tuple[float, float] | None,
    randaug_ops: int | None,
    randaug_magnitude: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train a student on reinforced shards with (1-λ)·CLIP + λ·KD; checkpoints export with `edgeclip export`.

    The same command runs on many processes under torchrun (gloo on CPU, nccl on GPU), on one machine or
    several (the shards and --output on a shared filesystem; docs/distillation.md). A folder of shards that
    lacks any its reinforce run planned, or mixes two runs, is refused.

    \b
    Example:
      edgeclip distill --data 'shards/{00000..00099}.tar' --model MobileCLIP2-S0 --lambda 1.0 \\
          --steps 20000 --batch-size 256 --output runs/s0
      torchrun --nproc-per-node 8 -m edgeclip distill --data shards/ --model MobileCLIP2-S0 --output runs/s0
      torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29500 \\
          -m edgeclip distill --data /shared/shards --model MobileCLIP2-S0 --device cuda --output /shared/s0
      edgeclip export --model MobileCLIP2-S0 --pretrained runs/s0/model.safetensors --output s0.edgeclip
    """
    import torch

    from edgeclip.distill import DistillConfig, train
    from edgeclip.distill.distributed import world_from_env

    if threads:
        torch.set_num_threads(threads)
    config = DistillConfig(
        model=model, data=data, output=str(output), loss=loss, lam=lam, steps=steps, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip,
        pretrained=str(pretrained) if pretrained else None, images=images, datacompdr=datacompdr,
        augment=_augment(crop_scale, randaug_ops, randaug_magnitude),
        captions=str(captions_file) if captions_file else None, eval=eval_spec, eval_every=eval_every,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, seed=seed, resume=resume,
        log_samples=log_samples, device=device,
    )  # fmt: skip
    main = world_from_env().is_main
    with _bar(show_progress(quiet) and main, steps, "distill", "step") as bar:

        def on_log(entry: dict) -> None:
            if entry["event"] == "step":
                bar.n = entry["step"]
                bar.set_postfix(loss=f"{entry['loss']:.3f}", refresh=True)
            elif entry["event"] == "eval" and not quiet and not as_json and main:
                extra = "".join(f", {k[5:]} {v:.3f}" for k, v in entry.items() if k.startswith("top1_"))
                bar.write(f"step {entry['step']}: zero-shot top-1 {entry['top1']:.3f}{extra} on {entry['split']}")

        result = train(config, on_log)
    if not main:
        return
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(f"trained {model} for {result.steps} steps -> {result.model_path}")
    if result.resumed_from:
        click.echo(f"  resumed from step {result.resumed_from}")
    click.echo(f"  {result.samples_per_second:.1f} samples/s over {result.world_size} process(es)")
    if result.final_top1 is not None:
        click.echo(f"  zero-shot top-1: {result.final_top1:.3f}")
    if result.skipped_samples:
        click.echo(f"  {result.skipped_samples} unusable sample(s) skipped (see {output}/log.jsonl)")
    if result.corrupt_shards:
        click.echo(
            f"  {len(result.corrupt_shards)} corrupt shard(s) read in part: {result.missing_samples} sample(s) "
            "missing (named in the warnings above)"
        )
    click.echo(f"  export: edgeclip export --model {model} --pretrained {result.model_path} --output student.edgeclip")


@cli.command()
@click.option(
    "--output",
    "-o",
    default="quickstart-run",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for everything the quickstart makes.",
)
@click.option(
    "--fast", is_flag=True,
    help="A seconds-long smoke run of every stage (48 images, 2 steps each): it gives up accuracy, the models "
    "learn nothing, so its figures are chance.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Replace an earlier quickstart folder at --output.")
@click.option("--threads", type=click.IntRange(min=1), help="PyTorch CPU threads (default: PyTorch's choice).")
@quiet_option
@json_option
def quickstart(output: Path, fast: bool, force: bool, threads: int | None, quiet: bool, as_json: bool) -> None:
    """The whole story offline on the shapes dataset: teacher, reinforce, distill, export, classify.

    Trains a small teacher with plain CLIP loss, reinforces the data with it (its embeddings stored once),
    distills a student from the stored embeddings alone, exports the student to an ONNX bundle and classifies
    held-out shapes images with it. About 7 minutes on 2 cores; the figures come from images never trained on.

    \b
    Example:
      edgeclip quickstart
      edgeclip quickstart --output /tmp/qs --fast
    """
    from edgeclip.distill.quickstart import format_summary
    from edgeclip.distill.quickstart import quickstart as run_quickstart

    if threads:
        import torch

        torch.set_num_threads(threads)

    echo = (lambda _m: None) if quiet or as_json else (lambda m: click.echo(m, err=True))
    result = run_quickstart(output, fast=fast, force=force, on_step=echo)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(format_summary(result))
