"""A distillation run's settings: one frozen dataclass, validated on creation and recorded in run.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeclip.distill.augment import AugmentConfig
from edgeclip.distill.kd_targets import get_kd_targets, list_losses
from edgeclip.distill.tario import check_pattern
from edgeclip.errors import UsageError

LOSSES = tuple(list_losses())


@dataclass(frozen=True)
class DistillConfig:
    """One training run: student, data, loss and optimisation settings (recorded in run.json)."""

    model: str
    data: str
    output: str
    loss: str = "reinforced"
    lam: float | None = None  # default 1.0 for losses with teachers; plain CLIP takes none
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
        teachers = get_kd_targets(self.loss).uses_teachers
        if not teachers and self.lam not in (None, 0.0):
            raise UsageError(f"--loss {self.loss} is plain contrastive training: it takes no --lambda (or --lambda 0)")
        lam = (1.0 if teachers else 0.0) if self.lam is None else float(self.lam)
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
        if self.captions and teachers:
            raise UsageError("--captions (extra captions per image) applies to --loss clip on an image source only")
        if self.eval_every and not self.eval:
            raise UsageError("--eval-every needs --eval (a labelled split, e.g. shapes:eval:500)")
        check_pattern(str(self.data))  # a runaway brace pattern fails now, not after the student and teachers load

    @property
    def kd_lambda(self) -> float:
        """λ, the KD share of the loss, as `__post_init__` settled it."""
        assert self.lam is not None  # __post_init__ always sets it
        return self.lam

    @property
    def uses_teachers(self) -> bool:
        """Whether the loss distills from teachers (stored or online), so the data must be reinforced shards."""
        return get_kd_targets(self.loss).uses_teachers

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict() if self.augment else None
        return d


def config_from(**kwargs: Any) -> DistillConfig:
    """A DistillConfig from keyword arguments, rejecting unknown names with the list of known ones."""
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UsageError(f"unknown distill setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return DistillConfig(**kwargs)


__all__ = ["LOSSES", "DistillConfig", "config_from"]
