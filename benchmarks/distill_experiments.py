"""Reinforced distillation on `shapes`: the figures issue 6 asks for, measured in one run of this script.

1. Learning curves: the same student, steps and batch, trained with plain CLIP loss and with reinforced KD
   (λ = 1, stored teacher embeddings); zero-shot top-1 on the held-out split at several step counts, and
   the first step at which the reinforced student reaches the plain student's final accuracy.
2. Training throughput (samples/s), in one process, rounds interleaved: plain CLIP, reinforced KD, and KD
   with the teachers run online on the same replayed views.
3. Reinforcement throughput (images/s) and bytes per sample on disk.

Usage (from the repository root):
    .venv/bin/python -m benchmarks.distill_experiments --output /tmp/distill-exp
    .venv/bin/python -m benchmarks.distill_experiments --output /tmp/distill-exp \
        --teacher quickstart-run/teacher/model.safetensors

Teachers are trained here with plain CLIP loss on the captions mixed with `--teacher-captions` paraphrases
(EdgeCLIP-Teacher-CNN, seeds 0 and 1: a two-teacher ensemble as in DataCompDR) unless `--teacher FILE` gives
trained ones. `--lam 1 --lam 0.5` draws one reinforced curve per λ. Results go to OUTPUT/results.json and are printed
as markdown tables. Timings on a shared machine vary; compare figures from one run only.

How the steps ratio depends on the horizon, and how long the default run takes: docs/distillation.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

# Convolutional towers: at 64 px the ViT configs do not learn shape (docs/distillation.md).
TEACHER = "EdgeCLIP-Teacher-CNN"
STUDENT = "EdgeCLIP-Student-CNN"


def _train(**kw):
    from edgeclip.distill import DistillConfig, train

    return train(DistillConfig(**kw))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--teacher", action="append", type=Path, help="trained teacher checkpoint(s) to reuse")
    p.add_argument("--teachers", type=int, default=2, help="teachers to train when none are given")
    p.add_argument("--teacher-model", default=TEACHER, help="teacher architecture (trained here or --teacher)")
    p.add_argument("--student-model", default=STUDENT, help="student architecture")
    p.add_argument("--teacher-batch-size", type=int, default=0, help="teacher batch (0: --batch-size)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of both students")
    p.add_argument("--teacher-lr", type=float, default=2e-3)
    p.add_argument(
        "--lam",
        type=float,
        action="append",
        dest="lams",
        help="λ of a reinforced student (repeat for several curves; default 1.0)",
    )
    p.add_argument("--student-seed", type=int, default=0)
    p.add_argument("--shards", type=Path, help="reuse the shards of an earlier run (its OUTPUT/shards)")
    p.add_argument("--skip", default="", help="comma list of phases to skip: curves, throughput")
    p.add_argument("--teacher-steps", type=int, default=2000)
    p.add_argument(
        "--teacher-captions",
        type=int,
        default=5,
        help="paraphrases per image mixed into the teachers' plain-CLIP captions (0: real captions only)",
    )
    p.add_argument("--train-samples", type=int, default=4000)
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--student-steps", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=100, help="students' warmup steps (0: a tenth of --student-steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--evals", type=int, default=40, help="evaluations along each learning curve")
    p.add_argument("--augmentations", type=int, default=5)
    p.add_argument("--synthetic-captions", type=int, default=3)
    p.add_argument("--throughput-steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = p.parse_args(argv)
    args.lams = args.lams or [1.0]

    import torch

    from edgeclip.distill.augment import AugmentConfig
    from edgeclip.distill.quickstart import write_paraphrases
    from edgeclip.distill.shards import reinforce

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "torch_threads": torch.get_num_threads()}  # fmt: skip
    train_spec = f"shapes:train:{args.train_samples}"
    eval_spec = f"shapes:eval:{args.eval_samples}"
    augment = AugmentConfig(scale=(0.6, 1.0), num_ops=1, magnitude=3)  # mild: captions name colours

    if args.shards:  # an earlier run's shards: its reinforcement figures come along from its results.json
        earlier = json.loads((args.shards.parent / "results.json").read_text())
        results["reinforce"] = earlier["reinforce"]
        results["teachers"] = earlier.get("teachers") or _shard_teachers(args.shards)
        return _phases(args, results, out, args.shards.resolve(), eval_spec, augment)
    teachers = [t.resolve() for t in (args.teacher or [])]
    if not teachers:
        teacher_captions = None
        if args.teacher_captions:
            teacher_captions = str(write_paraphrases(train_spec, out / "teacher-captions.jsonl", args.teacher_captions))
        for seed in range(args.teachers):
            run = out / f"teacher{seed}"
            shutil.rmtree(run, ignore_errors=True)
            r = _train(model=args.teacher_model, data=train_spec, output=str(run), loss="clip",
                       steps=args.teacher_steps, batch_size=args.teacher_batch_size or args.batch_size,
                       lr=args.teacher_lr, warmup=args.teacher_steps // 10, augment=augment, eval=eval_spec,
                       captions=teacher_captions, seed=seed, log_every=100)  # fmt: skip
            print(f"teacher {seed}: top-1 {r.final_top1:.3f} after {r.steps} steps ({r.seconds:.0f} s)", flush=True)
            colour = [a for s, n, a in r.extra_evals if n == "color"]
            results.setdefault("teachers", []).append(
                {
                    "seed": seed,
                    "top1": r.final_top1,
                    "top1_colour": colour[-1] if colour else None,
                    "seconds": r.seconds,
                }
            )
            teachers.append(r.model_path)
    refs = [f"{args.teacher_model}:{t}" for t in teachers]
    results.setdefault("teachers", [{"checkpoint": str(t)} for t in teachers])  # given with --teacher

    # --- 3. reinforcement ----------------------------------------------------------------------------------
    shards = out / "shards"
    shutil.rmtree(shards, ignore_errors=True)
    captions = write_paraphrases(train_spec, out / "syn.jsonl", args.synthetic_captions)
    rr = reinforce(train_spec, refs, shards, augmentations=args.augmentations,
                   synthetic_captions=args.synthetic_captions, captions_file=captions, samples_per_shard=1000,
                   augment=augment, batch_size=64)  # fmt: skip
    results["reinforce"] = rr.to_dict()
    print(f"reinforce: {rr.images_per_second:.1f} images/s, {rr.bytes_per_sample:.0f} bytes/sample", flush=True)

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return _phases(args, results, out, shards, eval_spec, augment)


def _shard_teachers(shards: Path) -> list[dict]:
    """The teachers a reinforced dataset was made with, from its manifest (what the students learn from)."""
    from edgeclip.distill.shards import DatasetManifest

    manifest = DatasetManifest.read(shards / "dataset.json")
    return [{"architecture": t.architecture, "checkpoint": t.pretrained} for t in manifest.teachers]


def _phases(args, results: dict, out: Path, shards: Path, eval_spec: str, augment) -> int:
    skip = set(filter(None, args.skip.split(",")))
    if "curves" not in skip:
        _curves(args, results, out, shards, eval_spec, augment)
    if "throughput" not in skip:
        _throughput(args, results, out, shards, augment)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(_markdown(results, args))
    return 0


def _curves(args, results: dict, out: Path, shards: Path, eval_spec: str, augment) -> None:
    """Same student, steps, batch and lr: plain CLIP loss vs reinforced KD (each λ), evaluated along the way."""
    every = max(1, args.student_steps // args.evals)
    runs = [("clip", None)] + [("reinforced", lam) for lam in args.lams]
    curves: dict[str, dict[str, list]] = {"shape": {}, "colour": {}}
    for loss, lam in runs:
        key = _run_key(loss, lam)
        run = out / f"student-{key}"
        shutil.rmtree(run, ignore_errors=True)
        r = _train(model=args.student_model, data=str(shards), output=str(run), loss=loss, steps=args.student_steps,
                   batch_size=args.batch_size, lr=args.lr, warmup=_warmup(args), eval=eval_spec, eval_every=every,
                   augment=augment if loss == "clip" else None, lam=lam, log_every=100,
                   seed=args.student_seed)  # fmt: skip
        curves["shape"][key] = list(r.evals)
        curves["colour"][key] = [(s, a) for s, n, a in r.extra_evals if n == "color"]
        print(f"student {key}: " + ", ".join(f"{s}:{a:.3f}" for s, a in r.evals) + f" ({r.seconds:.0f} s)", flush=True)
    results["curve_runs"] = [_run_key(loss, lam) for loss, lam in runs]
    for name, table in curves.items():
        plain_final = table["clip"][-1][1]
        results[f"learning_curves_{name}"] = {k: [{"step": s, "top1": a} for s, a in v] for k, v in table.items()}
        results[f"plain_final_top1_{name}"] = plain_final
        for key in results["curve_runs"][1:]:
            reached = next((s for s, a in table[key] if a >= plain_final), None)
            results[f"{key}_steps_to_plain_final_{name}"] = reached
            results[f"{key}_steps_ratio_{name}"] = reached / args.student_steps if reached else None


def _warmup(args) -> int:
    return args.warmup or max(1, args.student_steps // 10)


def _run_key(loss: str, lam: float | None) -> str:
    return "clip" if loss == "clip" else f"reinforced-lam{lam:g}"


def _throughput(args, results: dict, out: Path, shards: Path, augment) -> None:
    """Training samples/s in one process, rounds interleaved: plain CLIP, reinforced KD, KD with online teachers."""
    rates: dict[str, list[float]] = {"clip": [], "reinforced": [], "online": []}
    for round_ in range(args.rounds):
        for loss in rates:
            run = out / f"throughput-{loss}-{round_}"
            shutil.rmtree(run, ignore_errors=True)
            r = _train(model=args.student_model, data=str(shards), output=str(run), loss=loss,
                       steps=args.throughput_steps,
                       batch_size=args.batch_size, lr=1e-3, warmup=1, augment=augment if loss == "clip" else None,
                       log_every=0)  # fmt: skip
            rates[loss].append(r.samples_per_second)
            shutil.rmtree(run, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    results["throughput_samples_per_s"] = {k: {"median": medians[k], "rounds": v} for k, v in rates.items()}
    results["reinforced_vs_plain"] = medians["reinforced"] / medians["clip"]
    results["reinforced_vs_online"] = medians["reinforced"] / medians["online"]


def _markdown(r: dict, args) -> str:
    lines = [""]
    threads = r.get("torch_threads")
    if "learning_curves_shape" in r:
        keys = r["curve_runs"]
        names = {k: "plain CLIP" if k == "clip" else f"KD λ={k.split('lam')[1]}" for k in keys}
        lines += [f"## Learning curves (shapes, {args.student_model}, batch {args.batch_size}, lr {args.lr}, "
                  f"warmup {_warmup(args)}, "
                  f"zero-shot top-1 on {args.eval_samples} eval images; {threads} torch thread(s))", "",
                  "| step | " + " | ".join(f"{n}: {names[k]}" for n in ("shape", "colour") for k in keys) + " |",
                  "| ---: |" + " ---: |" * (2 * len(keys))]  # fmt: skip
        tables = {name: {k: {e["step"]: e["top1"] for e in r[f"learning_curves_{name}"][k]} for k in keys}
                  for name in ("shape", "colour")}  # fmt: skip
        for step in sorted(tables["shape"]["clip"]):
            row = [tables[n][k].get(step, float("nan")) for n in ("shape", "colour") for k in keys]
            lines.append(f"| {step} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        lines.append("")
        for name in ("shape", "colour"):
            final = r[f"plain_final_top1_{name}"]
            for k in keys[1:]:
                reached = r[f"{k}_steps_to_plain_final_{name}"]
                where = f"step {reached} ({reached / args.student_steps:.2f}x the steps)" if reached else "never"
                lines.append(f"{name}: plain final top-1 {final:.3f}; {names[k]} reaches it at {where}")
    if "throughput_samples_per_s" in r:
        t = r["throughput_samples_per_s"]
        lines += ["", f"## Training throughput (samples/s, median of {args.rounds} interleaved rounds, one process, "
                  f"{threads} torch thread(s))",
                  "",
                  "| plain CLIP | reinforced KD | KD, teachers online |", "| ---: | ---: | ---: |",
                  f"| {t['clip']['median']:.1f} | {t['reinforced']['median']:.1f} | {t['online']['median']:.1f} |", "",
                  f"reinforced / plain = {r['reinforced_vs_plain']:.2f}x; reinforced / online = "
                  f"{r['reinforced_vs_online']:.2f}x", ""]  # fmt: skip
    rf = r["reinforce"]
    lines += ["## Reinforcement", "", f"{rf['images']} images, K={args.augmentations}, S={args.synthetic_captions}, "
              f"{len(r['teachers'])} teacher(s): {rf['images_per_second']:.1f} "
              f"images/s, {rf['bytes_per_sample']:.0f} bytes per sample on disk", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"wall time {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sys.exit(code)
