"""The training loop: a student trained with (1-λ)·CLIP + λ·KD from stored teacher embeddings (or plain CLIP, or KD
with the teachers run online, for comparison), on one process or many under `torchrun`.

AdamW with warmup + cosine, gradient clipping, the student's logit scale clamped at 100 as open_clip does,
zero-shot top-1 on a labelled split at intervals (through `edgeclip.runtimes.zeroshot`), open_clip-format
safetensors checkpoints, and exact resume: weights, optimizer, scheduler, RNG and every process's position
in the data. Data order is a per-epoch permutation seeded by (seed, epoch); process r takes every
world-th position, so the samples seen depend only on the seed, never on timing.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from edgeclip.distill import distributed as ddp
from edgeclip.distill.augment import AugmentConfig, AugmentParams, apply_params, sample_params, sample_rng, to_tensor
from edgeclip.distill.losses import distill_loss
from edgeclip.distill.shards import DatasetManifest, ReinforcedShards, open_pixels
from edgeclip.distill.sources import ImageCaptionSource, open_source
from edgeclip.errors import DatasetError, ImageError, UsageError

LOSSES = ("reinforced", "clip", "online")
RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
MODEL_FILE = "model.safetensors"
CHECKPOINTS = "checkpoints"
_CKPT = re.compile(r"^step_(\d{7})\.safetensors$")
# Settings that may change on resume; every other one must match the run being resumed.
_MAY_CHANGE = frozenset(
    {
        "output",
        "resume",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "log_samples",
        "device",
        "eval",
        "eval_samples",
        "images",
    }
)


@dataclass(frozen=True)
class DistillConfig:
    """One training run: student, data, loss and optimisation settings (recorded in run.json)."""

    model: str
    data: str
    output: str
    loss: str = "reinforced"
    lam: float | None = None  # default 1.0 for reinforced/online; plain CLIP takes none
    steps: int = 1000
    batch_size: int = 64  # per process
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    grad_clip: float = 1.0
    pretrained: str | None = None
    images: str | None = None
    datacompdr: int | None = None
    augment: AugmentConfig | None = None
    captions: str | None = None  # --loss clip on an image source: JSONL of extra captions per uid, mixed in
    eval: str | None = None
    eval_every: int = 0
    eval_samples: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    log_samples: bool = False
    seed: int = 0
    resume: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.loss == "clip" and self.lam not in (None, 0.0):
            raise UsageError("--loss clip is plain contrastive training: it takes no --lambda (or --lambda 0)")
        lam = (0.0 if self.loss == "clip" else 1.0) if self.lam is None else float(self.lam)
        if not 0.0 <= lam <= 1.0:
            raise UsageError(f"--lambda must be within 0..1, got {lam}")
        object.__setattr__(self, "lam", lam)
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "checkpoint_every", "log_every", "eval_samples", "seed"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise UsageError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise UsageError("--lr and --grad-clip must be > 0 and --weight-decay >= 0")
        if self.captions and self.loss != "clip":
            raise UsageError("--captions (extra captions per image) applies to --loss clip on an image source only")
        if self.eval_every and not self.eval:
            raise UsageError("--eval-every needs --eval (a labelled split, e.g. shapes:eval:500)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict() if self.augment else None
        return d


@dataclass(frozen=True)
class TrainResult:
    """The outcome: where the weights are, the evaluations, throughput and what was skipped."""

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
            "seconds": round(self.seconds, 2),
            "resumed_from": self.resumed_from,
            "world_size": self.world_size,
        }


# --- data ------------------------------------------------------------------------------------------------


@dataclass
class TrainItem:
    """One training example after replaying (or drawing) its augmentation."""

    uid: str
    view: Image.Image  # at the student's resolution
    caption: str
    syn_caption: str | None = None
    teacher_image: np.ndarray | None = None
    teacher_text: np.ndarray | None = None
    teacher_syn: np.ndarray | None = None
    source_image: Image.Image | None = None  # for teachers run online
    params: AugmentParams | None = None


class _Data:
    """Samples by index: reinforced shards joined with their pixels, or a plain image–caption source."""

    def __init__(self, config: DistillConfig, image_size: tuple[int, int]) -> None:
        self.config = config
        self.image_size = image_size
        self.shards: ReinforcedShards | None = None
        self.manifest: DatasetManifest | None = None
        if config.loss != "clip" or _looks_like_shards(config.data):
            manifest = None
            if config.datacompdr:
                manifest = DatasetManifest.datacompdr(config.datacompdr, config.images or "")
            self.shards = ReinforcedShards(config.data, manifest)
            self.manifest = self.shards.manifest
            self.pixels: ImageCaptionSource = open_pixels(self.manifest, config.images)
            self.augment = self.manifest.augment
            self.length = len(self.shards)
            self.identity = self.manifest.identity()
        else:
            self.pixels = open_source(config.data)
            self.augment = config.augment or AugmentConfig()
            self.length = len(self.pixels)
            self.identity = f"source:{self.pixels.spec}"
        if config.augment and self.shards is not None and config.loss != "clip":
            raise UsageError("--crop-scale/--randaug-* apply to --loss clip only: reinforced data replays stored views")
        if config.loss == "clip" and config.augment:
            self.augment = config.augment
        self.use_syn = config.loss != "clip" and self.manifest is not None and self.manifest.synthetic_captions > 0
        self.extra_captions = None
        if config.captions:
            if self.shards is not None:
                raise UsageError("--captions applies to an image source; reinforced shards carry their own captions")
            from edgeclip.distill.teachers import CaptionsFile

            self.extra_captions = CaptionsFile(config.captions)

    def fetch(self, index: int, epoch: int) -> TrainItem:
        """Example `index` in `epoch`: the augmentation and synthetic caption picked from (seed, epoch, index)."""
        rng = sample_rng(self.config.seed, epoch, index)
        interpolation = self.augment.interpolation
        if self.shards is None:
            record, image = self.pixels.item(index)
            params = sample_params(rng, image.width, image.height, self.augment)
            view = apply_params(image, params, self.image_size, interpolation)
            caption = record.caption
            if self.extra_captions is not None:  # the real caption or one of the extra ones, uniformly
                pool = [caption, *self.extra_captions.by_uid.get(record.uid, ())]
                caption = pool[int(rng.integers(len(pool)))]
            return TrainItem(record.uid, view, caption)
        sample = self.shards.read(index)
        at = self.pixels.find(sample.uid, sample.url)
        if at is None:
            raise DatasetError(f"no pixels for uid {sample.uid!r} (url {sample.url!r}) in {self.pixels.spec}")
        image = self.pixels.image(at)
        caption = sample.caption or self.pixels.record(at).caption
        if self.config.loss == "clip":
            params = sample_params(rng, image.width, image.height, self.augment)
            return TrainItem(sample.uid, apply_params(image, params, self.image_size, interpolation), caption)
        k = int(rng.integers(len(sample.params)))
        item = TrainItem(
            sample.uid,
            apply_params(image, sample.params[k], self.image_size, interpolation),
            caption,
            teacher_image=sample.image_emb[k],
            teacher_text=sample.text_emb[0],
            source_image=image,
            params=sample.params[k],
        )
        if self.use_syn:
            s = int(rng.integers(len(sample.syn_text)))
            item.syn_caption = sample.syn_text[s]
            item.teacher_syn = sample.text_emb[1 + s]
        return item


def _looks_like_shards(spec: str) -> bool:
    path = Path(spec)
    return "{" in spec or path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar")))


@dataclass
class Cursor:
    """Where one process is in the data: the epoch and how many of its positions in that epoch it has used."""

    epoch: int = 0
    position: int = 0
    skipped: int = 0


class BatchStream:
    """This process's share of the epoch permutations, turned into batches; unusable samples are skipped."""

    def __init__(self, data: _Data, world: ddp.World, seed: int, cursor: Cursor | None = None) -> None:
        self.data = data
        self.world = world
        self.seed = seed
        self.cursor = cursor or Cursor()
        self._order: tuple[int, np.ndarray] | None = None
        self.skip_log: list[str] = []

    def _positions(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            order = np.random.default_rng([self.seed, epoch, 7]).permutation(self.data.length)
            self._order = (epoch, order[self.world.rank :: self.world.size])
        return self._order[1]

    def next_batch(self, size: int) -> list[TrainItem]:
        items: list[TrainItem] = []
        misses = 0
        while len(items) < size:
            positions = self._positions(self.cursor.epoch)
            if self.cursor.position >= len(positions):
                self.cursor.epoch += 1
                self.cursor.position = 0
                continue
            index = int(positions[self.cursor.position])
            self.cursor.position += 1
            try:
                items.append(self.data.fetch(index, self.cursor.epoch))
            except (DatasetError, ImageError) as e:
                self.cursor.skipped += 1
                self.skip_log.append(str(e))
                misses += 1
                if misses > self.data.length:
                    raise DatasetError(f"no usable sample in {self.data.config.data}: {e}") from None
        return items


# --- model, optimiser, evaluation -------------------------------------------------------------------------


def build_student(config: DistillConfig):
    """The student open_clip model in train mode: seeded random init, or weights from --pretrained."""
    import open_clip

    from edgeclip.models.loading import check_architecture, load_weights

    arch = check_architecture(config.model)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = open_clip.create_model(arch, pretrained=None)
    if config.pretrained:
        load_weights(model, Path(config.pretrained), arch)
    return arch, model.train()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, norms and the logit scale."""
    decay, no_decay = [], []
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


class TorchEncoders:
    """A PyTorch model behind the surface ZeroShotClassifier uses (encode_image/encode_text/logit_scale/model_id).

    Zero-shot evaluation during training then runs the very code the deployed bundle runs, on the same
    numpy preprocessing, so a training-time accuracy is the bundle's accuracy up to export parity.
    """

    def __init__(self, model: torch.nn.Module, architecture: str, preprocess, device: torch.device) -> None:
        import open_clip

        self.model = model
        self.architecture = architecture
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.device = device
        self.model_id = f"{architecture}@training"

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    @torch.no_grad()
    def encode_image(self, images: Sequence, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        from edgeclip.runtimes.preprocess import preprocess

        items = list(images) if isinstance(images, (list, tuple)) else [images]
        out = []
        for start in range(0, len(items), batch_size):
            x = torch.from_numpy(preprocess(items[start : start + batch_size], self.preprocess)).to(self.device)
            out.append(self.model.encode_image(x, normalize=True).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        items = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for start in range(0, len(items), batch_size):
            tokens = self.tokenizer(items[start : start + batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out)


@dataclass(frozen=True)
class EvalSet:
    """A labelled split for zero-shot top-1: images, their class index, class names and prompt templates."""

    name: str
    images: list
    targets: np.ndarray
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    also: tuple[EvalSet, ...] = ()  # further labelings of the same images, reported beside the main one


def open_eval_set(spec: str, limit: int = 0) -> EvalSet:
    """`shapes[:eval[:count[:size]]]`, or a folder with one subfolder of images per class."""
    from edgeclip.data.images import list_images

    if spec == "shapes" or spec.startswith("shapes:"):
        from edgeclip.data.shapes import CLASS_PROMPT

        parts = spec.split(":")
        spec = ":".join([parts[0], parts[1] if len(parts) > 1 and parts[1] else "eval", *parts[2:]])
        source = open_source(spec)
        n = min(len(source), limit) if limit else len(source)
        items = [source.dataset[i] for i in range(n)]
        images = [s.image for s in items]
        colors = EvalSet("color", images, np.array([s.color_label for s in items]), source.dataset.colors,
                         ("a photo of a {} shape",))  # fmt: skip
        return EvalSet(
            spec, images, np.array([s.label for s in items]), source.dataset.classes, (CLASS_PROMPT,), (colors,)
        )
    folder = Path(spec)
    if not folder.is_dir():
        raise DatasetError(f"--eval {spec}: expected shapes:eval[:count] or a folder with one subfolder per class")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(f"--eval {spec}: found {len(classes)} class subfolder(s), expected at least 2")
    images, targets = [], []
    for c, name in enumerate(classes):
        for path in list_images(folder / name):
            images.append(path)
            targets.append(c)
    if limit:
        keep = np.random.default_rng(0).permutation(len(images))[:limit]
        images, targets = [images[i] for i in sorted(keep)], [targets[i] for i in sorted(keep)]
    return EvalSet(spec, images, np.array(targets), tuple(classes), ("a photo of a {}.",))


def zero_shot_top1(encoders: Any, eval_set: EvalSet) -> float:
    """Top-1 accuracy of a zero-shot head built from the split's labels (edgeclip.runtimes.zeroshot)."""
    from edgeclip.runtimes.zeroshot import ZeroShotClassifier

    classifier = ZeroShotClassifier(encoders, labels=list(eval_set.labels), templates=list(eval_set.templates))
    logits = classifier.logits(eval_set.images, batch_size=128)
    return float((logits.argmax(axis=1) == eval_set.targets).mean())


# --- checkpoints -----------------------------------------------------------------------------------------


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "producer": "edgeclip distill"})
    os.replace(tmp, path)


def _latest_checkpoint(folder: Path) -> int | None:
    steps = [int(m.group(1)) for p in folder.glob("step_*.safetensors") if (m := _CKPT.match(p.name))]
    complete = [s for s in steps if (folder / f"step_{s:07d}.state.pt").is_file()]
    return max(complete) if complete else None


class _Run:
    """The run folder: run.json, the log, checkpoints; rank 0 writes, every rank reads."""

    def __init__(self, config: DistillConfig, world: ddp.World, dataset_id: str, teachers: list) -> None:
        self.folder = Path(config.output)
        self.world = world
        self.ckpt = self.folder / CHECKPOINTS
        self.record = {
            **{k: v for k, v in config.to_dict().items() if k not in _MAY_CHANGE},
            "dataset_id": dataset_id,
            "teachers": teachers,
            "world_size": world.size,
        }

    def prepare(self, resume: bool) -> int | None:
        """Check or create the run folder; the checkpoint step to resume from, if any."""
        run_file = self.folder / RUN_FILE
        if run_file.exists():
            if not resume:
                raise UsageError(f"{self.folder} holds a run: pass --resume to continue it, or choose a new --output")
            old = json.loads(run_file.read_text(encoding="utf-8"))
            differ = [k for k in sorted(set(old) | set(self.record)) if old.get(k) != self.record.get(k)]
            if differ:
                what = ", ".join(f"{k} ({old.get(k)!r} -> {self.record.get(k)!r})" for k in differ[:3])
                raise UsageError(f"cannot resume {self.folder}: the run used different settings: {what}")
            return _latest_checkpoint(self.ckpt)
        if self.folder.exists() and any(self.folder.iterdir()):
            raise UsageError(f"--output {self.folder} exists and is not an edgeclip run folder")
        ddp.barrier()
        if self.world.is_main:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            tmp = run_file.with_name(f".{RUN_FILE}.tmp")
            tmp.write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, run_file)
        ddp.barrier()
        return None

    def log(self, entry: dict) -> None:
        if self.world.is_main:
            with open(self.folder / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop log lines after the checkpoint a resume starts from: those steps are run again."""
        path = self.folder / LOG_FILE
        if not self.world.is_main or not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        tmp = path.with_name(f".{LOG_FILE}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)

    def save(self, step: int, model, optimizer, scheduler, cursor: Cursor, keep: int) -> Path:
        cursors = ddp.gather_objects(asdict(cursor))
        rngs = ddp.gather_objects(torch.get_rng_state())
        path = self.ckpt / f"step_{step:07d}.safetensors"
        if self.world.is_main:
            _save_weights(model, path)
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": rngs,
                "cursors": [[c["epoch"], c["position"], c["skipped"]] for c in cursors],
                "world_size": self.world.size,
            }
            state_path = self.ckpt / f"step_{step:07d}.state.pt"
            tmp = state_path.with_name(f".{state_path.name}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, state_path)
            done = sorted(int(m.group(1)) for p in self.ckpt.glob("step_*.safetensors") if (m := _CKPT.match(p.name)))
            for old in done[:-keep]:
                (self.ckpt / f"step_{old:07d}.safetensors").unlink(missing_ok=True)
                (self.ckpt / f"step_{old:07d}.state.pt").unlink(missing_ok=True)
        ddp.barrier()
        return path

    def load(self, step: int, model, optimizer, scheduler) -> Cursor:
        from edgeclip.models.loading import read_state_dict

        model.load_state_dict(read_state_dict(self.ckpt / f"step_{step:07d}.safetensors"), strict=True)
        state = torch.load(self.ckpt / f"step_{step:07d}.state.pt", map_location="cpu", weights_only=True)
        if state["world_size"] != self.world.size:
            raise UsageError(
                f"checkpoint step {step} was written by {state['world_size']} processes, not {self.world.size}"
            )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"][self.world.rank])
        epoch, position, skipped = state["cursors"][self.world.rank]
        return Cursor(int(epoch), int(position), int(skipped))


# --- the loop --------------------------------------------------------------------------------------------


def _online_teachers(manifest: DatasetManifest):
    from edgeclip.distill.teachers import Teacher, TeacherEnsemble

    teachers = []
    for info in manifest.teachers:
        teacher = Teacher(info.architecture, info.pretrained)
        if teacher.info.weights_sha256 != info.weights_sha256:
            raise DatasetError(
                f"teacher {info.architecture} at {info.pretrained} is not the one the shards were made with"
            )
        teachers.append(teacher)
    return TeacherEnsemble(teachers)


def train(config: DistillConfig, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train (or resume) a student as configured; returns where the weights are and how it went."""
    from edgeclip.models.preprocess import preprocess_spec_for

    world = ddp.world_from_env()
    device = torch.device(config.device if config.device != "cuda" else f"cuda:{world.local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = ddp.init_process_group(world, device)
    try:
        return _train(config, world, device, on_log or (lambda _e: None), preprocess_spec_for)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _train(config, world, device, on_log, preprocess_spec_for) -> TrainResult:
    started = time.perf_counter()
    arch, model = build_student(config)
    spec, _ = preprocess_spec_for(arch, config.pretrained)
    data = _Data(config, spec.image_size)
    manifest = data.manifest
    if config.loss != "clip" and manifest is None:
        raise UsageError(f"--loss {config.loss} needs reinforced shards as --data")
    teachers = [t.to_dict() for t in manifest.teachers] if manifest and config.loss != "clip" else []
    run = _Run(config, world, data.identity, teachers)
    resume_step = run.prepare(config.resume)
    eval_set = open_eval_set(config.eval, config.eval_samples) if config.eval and world.is_main else None

    import open_clip

    tokenizer = open_clip.get_tokenizer(arch)
    model.to(device)
    # Fused AdamW where torch has it: on CPU the default is a per-tensor loop, 53 ms a step against fused's 9.5 ms
    # for EdgeCLIP-Teacher-CNN (7.3M parameters, 2 threads), about an eighth of the whole step.
    fused = True if device.type in ("cpu", "cuda") else None
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6, fused=fused
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.warmup, config.steps))
    cursor = Cursor()
    step = 0
    if resume_step is not None:
        cursor = run.load(resume_step, model, optimizer, scheduler)
        step = resume_step
        run.truncate_log(step)
        run.log({"event": "resume", "step": step})
    elif config.resume and world.is_main:
        run.log({"event": "resume", "step": 0, "note": "no checkpoint yet: starting from step 0"})
    net = model
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    online = _online_teachers(manifest) if config.loss == "online" else None
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
            top1 = zero_shot_top1(encoders, eval_set)
            others = {f"top1_{e.name}": zero_shot_top1(encoders, e) for e in eval_set.also}
            model.train()
            evals.append((at, top1))
            extra.extend((at, e.name, others[f"top1_{e.name}"]) for e in eval_set.also)
            entry = {"event": "eval", "step": at, "top1": top1, **others, "split": eval_set.name}
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
            captions.append([it.syn_caption for it in items])
        tokens = tokenizer([c for group in captions for c in group]).to(device)
        t_img = t_txt = None
        if config.loss == "reinforced":
            t_img = torch.from_numpy(np.stack([it.teacher_image for it in items])).to(device)
            t_txt = [torch.from_numpy(np.stack([it.teacher_text for it in items])).to(device)]
            if data.use_syn:
                t_txt.append(torch.from_numpy(np.stack([it.teacher_syn for it in items])).to(device))
        elif config.loss == "online":
            t_img = online.encode_images(
                [it.source_image for it in items], [it.params for it in items], data.augment.interpolation
            ).to(device)
            t_txt = [online.encode_texts(group).to(device) for group in captions]
        out = net(image=pixels, text=tokens)
        image_f, text_f, scale = (
            (out["image_features"], out["text_features"], out["logit_scale"]) if isinstance(out, dict) else out[:3]
        )
        image_g = ddp.gather_with_grad(image_f)
        texts_g = [ddp.gather_with_grad(t) for t in text_f.split(len(items))]
        if t_img is not None:
            t_img = ddp.gather(t_img)
            t_txt = [ddp.gather(t) for t in t_txt]
        loss, parts = distill_loss(image_g, texts_g, scale, t_img, t_txt, dims, scales, config.lam)
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
    final = Path(config.output) / MODEL_FILE
    if world.is_main:
        tmp = final.with_name(f".{MODEL_FILE}.tmp")
        shutil.copyfile(run.ckpt / f"step_{step:07d}.safetensors", tmp)
        os.replace(tmp, final)
    skipped = sum(c["skipped"] for c in ddp.gather_objects(asdict(stream.cursor)))
    warm = rates[min(len(rates) - 1, 3) :] if rates else []
    result = TrainResult(
        Path(config.output), final, step, tuple(evals), float(np.median(warm)) if warm else 0.0, skipped,
        time.perf_counter() - started, start_step, world.size, tuple(extra),
    )  # fmt: skip
    summary = {k: v for k, v in result.to_dict().items() if k not in ("evals", "extra_evals")}
    run.log({"event": "done", "step": step, **summary})
    return result


def config_from(**kwargs: Any) -> DistillConfig:
    """A DistillConfig from keyword arguments, rejecting unknown names with the list of known ones."""
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UsageError(f"unknown distill setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return DistillConfig(**kwargs)


__all__ = ["LOSSES", "DistillConfig", "TrainResult", "config_from", "open_eval_set", "train", "zero_shot_top1"]
