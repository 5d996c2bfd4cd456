"""The training loop: a student trained with (1-λ)·CLIP + λ·KD from stored teacher embeddings (or plain CLIP, or KD
with the teachers run online, for comparison), on one process or many under `torchrun`.

AdamW with warmup + cosine, gradient clipping, the student's logit scale clamped at 100 as open_clip does,
zero-shot top-1 on a labelled split at intervals (distill.evaluate), open_clip-format safetensors checkpoints
and exact resume (distill.checkpoint), the batch stream (distill.batches), and the per-loss teacher targets
(distill.kd_targets).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.distill import distributed as ddp
from edgeclip.distill.augment import to_tensor
from edgeclip.distill.batches import BatchStream, Cursor, TrainingData, TrainItem
from edgeclip.distill.checkpoint import RunFolder
from edgeclip.distill.config import DistillConfig
from edgeclip.distill.evaluate import TorchEncoders, evaluate_top1, open_eval_set
from edgeclip.distill.kd_targets import get_kd_targets
from edgeclip.distill.losses import distill_loss
from edgeclip.errors import DatasetError, UsageError


@dataclass(frozen=True)
class DistillResult:
    """The outcome of a distillation run: where the weights are, the evaluations, throughput, what was skipped."""

    output: Path
    model_path: Path
    steps: int
    evals: tuple[tuple[int, float], ...]
    samples_per_second: float
    skipped_samples: int
    seconds: float
    resumed_from: int = 0
    world_size: int = 1
    extra_evals: tuple[tuple[int, str, float], ...] = ()  # (step, name, top-1), e.g. shapes' colour labels
    corrupt_shards: dict[str, str] = field(default_factory=dict)  # shard path -> why it was read only in part
    missing_samples: int = 0  # samples the corrupt shards promised and lost (where they record a count)

    @property
    def final_top1(self) -> float | None:
        return self.evals[-1][1] if self.evals else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "model": str(self.model_path),
            "steps": self.steps,
            "evals": [{"step": s, "top1": a} for s, a in self.evals],
            "extra_evals": [{"step": s, "name": n, "top1": a} for s, n, a in self.extra_evals],
            "final_top1": self.final_top1,
            "samples_per_second": round(self.samples_per_second, 2),
            "skipped_samples": self.skipped_samples,
            "corrupt_shards": dict(self.corrupt_shards),
            "missing_samples": self.missing_samples,
            "seconds": round(self.seconds, 2),
            "resumed_from": self.resumed_from,
            "world_size": self.world_size,
        }


def build_student(config: DistillConfig):
    """The student open_clip model in train mode: seeded random init, or weights from --pretrained."""
    from edgeclip.models.loading import check_architecture, load_weights, unweighted_model

    arch = check_architecture(config.model)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = unweighted_model(arch)
    if config.pretrained:
        load_weights(model, Path(config.pretrained), arch)
    return arch, model.train()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, norms and the logit scale."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _warn_corrupt_shards(data: TrainingData) -> None:
    """One warning per shard read only in part, naming it, what was wrong and how many samples it lost."""
    missing = data.missing_samples
    for path, why in data.corrupt_shards.items():
        lost = missing.get(path)
        count = "an unknown number of samples" if lost is None else f"{lost} sample(s)"
        warnings.warn(f"{path}: {why}; {count} missing, its readable samples are used", stacklevel=3)


def _syn_captions(items: list[TrainItem]) -> list[str]:
    """Each item's synthetic caption (batches drawn with `use_syn` carry one)."""
    captions: list[str] = []
    for it in items:
        if it.syn_caption is None:
            raise DatasetError(f"training item {it.uid} has no synthetic caption, which this run trains on")
        captions.append(it.syn_caption)
    return captions


def train(config: DistillConfig, on_log: Callable[[dict], None] | None = None) -> DistillResult:
    """Train (or resume) a student as configured; returns where the weights are and how it went."""
    world = ddp.world_from_env()
    device = torch.device(config.device if config.device != "cuda" else f"cuda:{world.local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = ddp.init_process_group(world, device)
    try:
        return _train(config, world, device, on_log or (lambda _e: None))
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _train(config: DistillConfig, world: ddp.World, device: torch.device, on_log: Callable[[dict], None]):
    from edgeclip.models.preprocess import preprocess_spec_for

    started = time.perf_counter()
    arch, model = build_student(config)
    spec, _ = preprocess_spec_for(arch, config.pretrained)
    data = TrainingData(config, spec.image_size)
    manifest = data.manifest
    if config.uses_teachers and manifest is None:
        raise UsageError(f"--loss {config.loss} needs reinforced shards as --data")
    teachers = [t.to_dict() for t in manifest.teachers] if manifest and config.uses_teachers else []
    run = RunFolder(config, world, data.identity, teachers)
    resume_step = run.prepare(config.resume)
    if world.is_main:
        _warn_corrupt_shards(data)
        if data.corrupt_shards:
            run.log({"event": "corrupt_shards", "step": 0, "shards": data.corrupt_shards,
                     "missing": data.missing_samples})  # fmt: skip
    eval_set = open_eval_set(config.eval, config.eval_samples) if config.eval and world.is_main else None

    import open_clip

    tokenizer = open_clip.get_tokenizer(arch)
    model.to(device)
    # Fused AdamW where torch has it: ~5x faster optimizer steps on the CPU (docs/distillation.md).
    fused = True if device.type in ("cpu", "cuda") else None
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6, fused=fused
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.warmup, config.steps))
    cursor = Cursor()
    step = 0
    if resume_step is not None:
        cursor = run.load(resume_step, model, optimizer, scheduler)
        step = resume_step
        run.truncate_log(step)
        run.log({"event": "resume", "step": step})
    elif run.restarted:
        run.log({"event": "restart", "step": 0, "note": "no checkpoint was written: starting again from step 0"})
    elif config.resume:
        run.log({"event": "resume", "step": 0, "note": "no checkpoint yet: starting from step 0"})
    net = model
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    targets = get_kd_targets(config.loss).build(manifest, data.augment.interpolation)
    stream = BatchStream(data, world, config.seed, cursor)
    dims = manifest.dims if manifest else ()
    scales = manifest.scales if manifest else ()
    evals: list[tuple[int, float]] = []
    extra: list[tuple[int, str, float]] = []
    rates: list[float] = []
    encoders = TorchEncoders(model, arch, spec, device)
    last_eval = -1  # the same on every process, so that all of them meet at the barrier below

    def evaluate(at: int) -> None:
        nonlocal last_eval
        last_eval = at
        if eval_set is not None:
            model.eval()
            scores = evaluate_top1(encoders, eval_set)
            model.train()
            evals.append((at, scores["top1"]))
            extra.extend((at, e.name, scores[f"top1_{e.name}"]) for e in eval_set.also)
            entry = {"event": "eval", "step": at, **scores, "split": eval_set.name}
            run.log(entry)
            on_log(entry)
        ddp.barrier()

    start_step = step
    while step < config.steps:
        tick = time.perf_counter()
        items = stream.next_batch(config.batch_size)
        pixels = to_tensor([it.view for it in items], spec.mean, spec.std).to(device)
        captions = [[it.caption for it in items]]
        if data.use_syn:
            captions.append(_syn_captions(items))
        tokens = tokenizer([c for group in captions for c in group]).to(device)
        t_img, t_txt = targets(items, captions, device)
        out = net(image=pixels, text=tokens)
        image_f, text_f, scale = (
            (out["image_features"], out["text_features"], out["logit_scale"]) if isinstance(out, dict) else out[:3]
        )
        image_g = ddp.gather_with_grad(image_f)
        texts_g = [ddp.gather_with_grad(t) for t in text_f.split(len(items))]
        if t_img is not None:
            t_img = ddp.gather(t_img)
        if t_txt is not None:
            t_txt = [ddp.gather(t) for t in t_txt]
        loss, parts = distill_loss(image_g, texts_g, scale, t_img, t_txt, dims, scales, config.kd_lambda)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        elapsed = time.perf_counter() - tick
        rates.append(config.batch_size * world.size / elapsed)
        if stream.skip_log:
            entry = {
                "event": "skipped",
                "step": step,
                "count": len(stream.skip_log),
                "first": stream.skip_log[:3],
                "rank": world.rank,
            }
            if world.is_main:
                run.log(entry)
            on_log(entry)
            stream.skip_log.clear()
        if config.log_every and (step % config.log_every == 0 or step == config.steps or config.log_samples):
            entry = {
                "event": "step",
                "step": step,
                "loss": float(loss.detach()),
                **parts,
                "lr": scheduler.get_last_lr()[0],
                "logit_scale": float(scale.detach()),
                "grad_norm": float(grad_norm),
                "samples_per_s": rates[-1],
            }
            if config.log_samples:
                entry["uids"] = [u for rank_uids in ddp.gather_objects([it.uid for it in items]) for u in rank_uids]
            run.log(entry)
            on_log(entry)
        if config.eval_every and step % config.eval_every == 0 and step != config.steps:
            evaluate(step)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step != config.steps:
            run.save(step, model, optimizer, scheduler, stream.cursor, config.keep_checkpoints)
    if config.eval and last_eval != step:
        evaluate(step)
    run.save(step, model, optimizer, scheduler, stream.cursor, config.keep_checkpoints)
    final = run.publish(step)
    skipped = sum(c["skipped"] for c in ddp.gather_objects(asdict(stream.cursor)))
    warm = rates[min(len(rates) - 1, 3) :] if rates else []
    missing = sum(n for n in data.missing_samples.values() if n)
    result = DistillResult(
        Path(config.output), final, step, tuple(evals), float(np.median(warm)) if warm else 0.0, skipped,
        time.perf_counter() - started, start_step, world.size, tuple(extra), data.corrupt_shards, missing,
    )  # fmt: skip
    summary = {k: v for k, v in result.to_dict().items() if k not in ("evals", "extra_evals")}
    run.log({"event": "done", "step": step, **summary})
    return result


__all__ = ["DistillResult", "build_student", "lr_factor", "param_groups", "train"]
