"""Quickstart ablations (issue 21): how fast the teacher learns shape on `shapes` under a setting, at what CPU cost.

Two probes, one setting per run, printed as one JSON line:
- `clip`: the quickstart's teacher (or `--model`) trained with plain CLIP loss (captions mixed with
  paraphrases), zero-shot shape and colour top-1 on the eval split every `--eval-every` steps.
- `supervised`: the teacher's image tower alone with a linear head and cross-entropy on the shape labels: the
  ceiling of how fast this tower can learn shape at all.

CPU time (user + sys of this process) is the figure to compare on a shared machine; run settings one thread
each (`--threads 1`), several at once if cores allow. Figures from a run are in docs/distillation.md.

Usage (from the repository root):
    .venv/bin/python -m benchmarks.quickstart_ablations clip --steps 300 --no-augment \
        --paraphrase "a {color} {shape}" --paraphrase "a {shape}"
    .venv/bin/python -m benchmarks.quickstart_ablations supervised --steps 200 --lr 5e-3 --size 48
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _clip(args: argparse.Namespace, out: Path) -> dict:
    from edgeclip.distill.augment import AugmentConfig
    from edgeclip.distill.config import DistillConfig
    from edgeclip.distill.loop import train
    from edgeclip.distill.quickstart import PARAPHRASES, TEACHER, write_paraphrases

    suffix = f":{args.size}" if args.size != 64 else ""
    data = f"shapes:train:{args.train}{suffix}"
    templates = tuple(args.paraphrase or ())
    captions = write_paraphrases(data, out / "captions.jsonl", len(templates) or PARAPHRASES, templates)
    augment = (
        AugmentConfig(scale=(1.0, 1.0), num_ops=0, magnitude=0)
        if args.no_augment
        else AugmentConfig(scale=(args.crop_min, 1.0), num_ops=1, magnitude=3)
    )
    result = train(DistillConfig(
        model=args.model or TEACHER, data=data, output=str(out / "teacher"), loss="clip", steps=args.steps,
        batch_size=args.batch, lr=args.lr, warmup=max(1, args.steps // 10), augment=augment, captions=str(captions),
        eval=f"shapes:eval:{args.eval}{suffix}", eval_every=args.eval_every, log_every=0,
    ))  # fmt: skip
    colour = {s: a for s, n, a in result.extra_evals if n == "color"}
    shape = [[s, round(a, 3)] for s, a in result.evals]
    return {"shape": shape, "colour": [[s, round(a, 3)] for s, a in colour.items()]}


def _supervised(args: argparse.Namespace) -> dict:
    import open_clip
    import torch
    from PIL import Image

    from edgeclip.data.shapes import ShapesDataset
    from edgeclip.distill.augment import to_tensor
    from edgeclip.distill.quickstart import TEACHER
    from edgeclip.models.loading import check_architecture

    torch.manual_seed(0)
    if args.tower:  # any timm image model, e.g. to compare widths and depths against the teacher's
        import timm

        tower = timm.create_model(args.tower, pretrained=False, num_classes=0).train()
    else:
        tower = open_clip.create_model(check_architecture(TEACHER), pretrained=None).visual.train()
    with torch.no_grad():
        width = tower(torch.zeros(2, 3, args.size, args.size)).shape[1]
    head = torch.nn.Linear(width, 8)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.1)
    train, held_out = ShapesDataset("train", args.size, args.train), ShapesDataset("eval", args.size, args.eval)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def batch(ds: ShapesDataset, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [ds[i] for i in index]
        return to_tensor([Image.fromarray(s.image) for s in items], mean, std), torch.tensor([s.label for s in items])

    g = torch.Generator().manual_seed(0)
    evals = []
    for step in range(1, args.steps + 1):
        x, y = batch(train, torch.randint(0, len(train), (args.batch,), generator=g).tolist())
        loss = torch.nn.functional.cross_entropy(head(tower(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            tower.eval()
            with torch.no_grad():
                x, y = batch(held_out, list(range(len(held_out))))
                evals.append([step, round(float((head(tower(x)).argmax(1) == y).float().mean()), 3)])
            tower.train()
    return {"shape": evals}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probe", choices=("clip", "supervised"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--train", type=int, default=3000, help="shapes:train items")
    p.add_argument("--eval", type=int, default=400, help="shapes:eval items (never trained on)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--no-augment", action="store_true", help="clip: full-image views, no RandAugment")
    p.add_argument("--crop-min", type=float, default=0.6, help="clip: smallest crop area (quickstart: 0.6)")
    p.add_argument("--paraphrase", action="append", help="clip: a caption template (repeat); default the quickstart's")
    p.add_argument("--model", help="clip: an edgeclip architecture instead of the quickstart's teacher")
    p.add_argument("--tower", help="supervised: a timm model name instead of the teacher's image tower")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="qs-ablation-"))
    started, cpu = time.perf_counter(), time.process_time()
    try:
        figures = _clip(args, out) if args.probe == "clip" else _supervised(args)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    settings = {k: v for k, v in vars(args).items() if k != "probe"}
    print(json.dumps({"probe": args.probe, **settings, **figures, "cpu_s": round(time.process_time() - cpu, 1),
                      "wall_s": round(time.perf_counter() - started, 1), "load": os.getloadavg()[0]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
