"""QualiCLIP-style opinion-unaware quality training: no human scores, only degradations of known order.

After Agnolucci et al., "Quality-Aware Image-Text Alignment for Opinion-Unaware Image Quality Assessment"
(QualiCLIP, 2024). Each step takes pristine images, cuts two overlapping crops from each, degrades both crops
with one family (blur, noise, JPEG, brightness, contrast, colour) at levels 0..5, and trains the image encoder
so that, for every pair of levels i < j,

* cosine to the good prompt of level i exceeds that of level j by a margin (ranking loss, good pole),
* cosine to the bad prompt of level i falls short of that of level j by a margin (ranking loss, bad pole),
* the two crops at the same level have the same cosines (consistency loss),
* and, only if `anchor_weight` > 0 (our addition, off by default), each pair's P(good) is pulled towards 1 for
  the pristine crops and towards 0 at level 5 (binary cross-entropy). The ranking losses are relative and leave
  each image's offset free; a model trained from random weights then lets content decide the offset, which the
  anchors tie down. Still no human scores: the targets come from the synthetic levels.
* and, only if `pooled_weight` > 0 (our addition, off by default), the overall pair's score (good minus bad
  cosine) is ranked across the whole batch: any crop at level i should beat any crop of *another* image, of
  any family, at level j > i, by `margin`. QualiCLIP ranks levels within one image; this ties images and
  families to one scale, which is what an SRCC pooled over photos and families measures.

The overall pair ("Good photo." / "Bad photo.") is trained on every family; each attribute pair only on its own
family (sharpness on blur, noise on noise, exposure on brightness, contrast on contrast, colourfulness on colour),
so per-attribute scores mean what they say. The text encoder stays frozen unless `train_text` (a random-weight
model has no language to preserve). Output: the whole model as an open_clip-format safetensors checkpoint that
`edgeclip export --pretrained` takes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgeclip.data.degradations import LEVELS, colourfulness, degrade, get_degradation, list_degradations
from edgeclip.data.images import expand_image_paths, load_image
from edgeclip.errors import ImageError, UsageError
from edgeclip.runtimes.checksums import atomic_output
from edgeclip.runtimes.quality import OVERALL, QUALITY_ATTRIBUTES, Attribute

# Which attribute pair (besides the overall one) each degradation family trains.
FAMILY_ATTRIBUTE: dict[str, str | None] = {
    "blur": "sharpness",
    "noise": "noise",
    "jpeg": None,
    "brightness": "exposure",
    "contrast": "contrast",
    "colour": "colourfulness",
}
# Below this colourfulness a crop is grey: desaturating it changes nothing, so 'colour' is not drawn for it.
_GREY = 8.0
# Pristine images in the fixed probe batch whose pair-ranking accuracy is reported before and after training.
PROBE_IMAGES = 16

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class QualityTrainConfig:
    """One opinion-unaware training run (recorded in the checkpoint's metadata)."""

    architecture: str = "EdgeCLIP-Tiny-ViT"
    pretrained: str | None = None
    random_init: bool = False
    images: tuple[str, ...] = ()  # files or folders of pristine images
    shapes: int = 0  # plus this many images of the built-in shapes dataset (train split)
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 20
    margin: float = 0.05
    consistency_weight: float = 1.0
    anchor_weight: float = 0.0
    pooled_weight: float = 0.0
    families: tuple[str, ...] = tuple(FAMILY_ATTRIBUTE)
    train_text: bool = False
    crop_scale: tuple[float, float] = (0.35, 1.0)
    seed: int = 0
    attributes: tuple[Attribute, ...] = field(default=QUALITY_ATTRIBUTES)

    def __post_init__(self) -> None:
        if self.random_init == bool(self.pretrained):
            raise UsageError("give --pretrained WEIGHTS or --random-init (one of them)")
        if not self.images and self.shapes <= 0:
            raise UsageError("no pristine images: give --images FOLDER and/or --shapes N")
        counts = (("steps", self.steps, 1), ("batch size", self.batch_size, 1), ("shapes", self.shapes, 0))
        for name, value, least in counts:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UsageError(f"{name} {value!r} is not allowed: expected an integer >= {least}")
        weights = (
            ("lr", self.lr),
            ("margin", self.margin),
            ("consistency weight", self.consistency_weight),
            ("anchor weight", self.anchor_weight),
            ("pooled weight", self.pooled_weight),
        )
        for name, weight in weights:
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise UsageError(f"{name} {weight!r} is not allowed: expected a finite number >= 0")
        for family in self.families:
            get_degradation(family)
            if family not in FAMILY_ATTRIBUTE:
                raise UsageError(f"degradation {family!r} has no quality attribute to train")
        if not self.families:
            raise UsageError("no degradation families: expected at least one of " + ", ".join(list_degradations()))
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise UsageError(f"crop scale {self.crop_scale} is not allowed: expected 0 < low <= high <= 1")
        if OVERALL not in [a.name for a in self.attributes]:
            raise UsageError(f"the attributes must include the overall pair {OVERALL!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["attributes"] = [asdict(a) for a in self.attributes]
        return data


@dataclass(frozen=True)
class QualityTrainResult:
    """The checkpoint written, the loss per logged step and the probe's pair-ranking accuracy before and after."""

    path: Path
    history: list[dict[str, float]]
    probe_before: float
    probe_after: float
    seconds: float


def load_pristine(config: QualityTrainConfig, min_side: int) -> list[Image.Image]:
    """The pristine pool: the given images (decoded once) and shapes-dataset renders."""
    from edgeclip.data.shapes import ShapesDataset

    pool = []
    for path in expand_image_paths(config.images):
        image = load_image(path)
        if min(image.size) < min_side:
            raise ImageError(f"{path}: {image.size[0]}x{image.size[1]} is smaller than the model input {min_side}")
        pool.append(image)
    if config.shapes:
        shapes = ShapesDataset("train", size=max(2 * min_side, 96), length=max(config.shapes, 1), seed=config.seed)
        pool += [Image.fromarray(shapes[i].image) for i in range(config.shapes)]
    return pool


def _crop_pair(image: Image.Image, size: int, scale: tuple[float, float], rng: np.random.Generator):
    """Two overlapping square crops of the same random scale, resized to the model's input size, maybe mirrored."""
    width, height = image.size
    side = max(8, round(min(width, height) * math.sqrt(rng.uniform(*scale))))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    shift = side // 4
    left2 = int(np.clip(left + rng.integers(-shift, shift + 1), 0, width - side))
    top2 = int(np.clip(top + rng.integers(-shift, shift + 1), 0, height - side))
    crops = [
        image.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)
        for x, y in ((left, top), (left2, top2))
    ]
    if rng.random() < 0.5:
        crops = [crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for crop in crops]
    return crops


def sample_batch(
    pool: Sequence[Image.Image], config: QualityTrainConfig, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """uint8 [B, 2 crops, 6 levels, S, S, 3] and the family drawn for each image."""
    out = np.empty((config.batch_size, 2, LEVELS + 1, size, size, 3), np.uint8)
    families = []
    for b in range(config.batch_size):
        image = pool[int(rng.integers(len(pool)))]
        crops = _crop_pair(image, size, config.crop_scale, rng)
        allowed = [f for f in config.families if f != "colour" or colourfulness(crops[0]) >= _GREY]
        family = allowed[int(rng.integers(len(allowed)))]
        seed = int(rng.integers(2**31))
        for c, crop in enumerate(crops):
            for level in range(LEVELS + 1):
                out[b, c, level] = degrade(crop, family, level, seed + c)
        families.append(family)
    return out, families


def _text_targets(model, tokenizer, attributes: Sequence[Attribute]) -> torch.Tensor:
    """[A, 2, D]: per attribute the good and bad pole, prompts normalized, averaged and normalized again."""
    rows = []
    for attribute in attributes:
        poles = []
        for prompts in (attribute.good, attribute.bad):
            emb = F.normalize(model.encode_text(tokenizer(list(prompts))), dim=-1)
            poles.append(F.normalize(emb.mean(dim=0), dim=-1))
        rows.append(torch.stack(poles))
    return torch.stack(rows)


def _to_tensor(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = torch.from_numpy(batch).float().div_(255.0)
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.movedim(-1, -3).contiguous()


def ranking_losses(
    sims: torch.Tensor, relevant: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(good-pole ranking, bad-pole ranking, consistency) from cosines [B, 2, L, A, 2] and a mask [B, A]."""
    levels = sims.shape[2]
    i, j = torch.triu_indices(levels, levels, offset=1)
    good, bad = sims[..., 0], sims[..., 1]  # [B, 2, L, A]
    rank_good = F.relu(good[:, :, j] - good[:, :, i] + margin)  # level i should score higher than j
    rank_bad = F.relu(bad[:, :, i] - bad[:, :, j] + margin)  # and be less like the bad prompt
    weight = relevant[:, None, None, :].float()
    denominator = weight.expand_as(rank_good).sum().clamp(min=1.0)
    consistency = (sims[:, 0] - sims[:, 1]).abs().mean(dim=-1)  # [B, L, A]
    cons_weight = relevant[:, None, :].float()
    return (
        (rank_good * weight).sum() / denominator,
        (rank_bad * weight).sum() / denominator,
        (consistency * cons_weight).sum() / cons_weight.expand_as(consistency).sum().clamp(min=1.0),
    )


def anchor_loss(sims: torch.Tensor, relevant: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Cross-entropy pulling each pair's P(good) to 1 for pristine crops and to 0 at the strongest level."""
    logits = logit_scale * (sims[..., 0] - sims[..., 1])  # [B, 2, L, A]: log-odds of the good pole
    ends = torch.stack([logits[:, :, 0], logits[:, :, -1]], dim=2)  # [B, 2, 2, A]
    targets = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1).expand_as(ends)
    loss = F.binary_cross_entropy_with_logits(ends, targets, reduction="none")
    weight = relevant[:, None, None, :].float().expand_as(loss)
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def pooled_ranking_loss(sims: torch.Tensor, overall: int, margin: float) -> torch.Tensor:
    """Hinge loss ranking the overall score of every crop at level i above every other image's crop at level j > i."""
    score = sims[..., overall, 0] - sims[..., overall, 1]  # [B, 2, L]
    batch, crops, levels = score.shape
    flat = score.reshape(-1)
    image = torch.arange(batch).repeat_interleave(crops * levels)
    level = torch.arange(levels).repeat(batch * crops)
    pairs = (level[:, None] < level[None, :]) & (image[:, None] != image[None, :])  # row should beat column
    hinge = F.relu(flat[None, :] - flat[:, None] + 2 * margin)
    return (hinge * pairs).sum() / pairs.sum().clamp(min=1)


def pair_ranking_accuracy(sims: torch.Tensor, relevant: torch.Tensor) -> float:
    """Share of level pairs i < j whose overall-pair quality (good minus bad cosine) is ordered correctly."""
    score = sims[..., 0] - sims[..., 1]  # [B, 2, L, A]
    levels = score.shape[2]
    i, j = torch.triu_indices(levels, levels, offset=1)
    right = (score[:, :, i] > score[:, :, j]).float()
    weight = relevant[:, None, None, :].float().expand_as(right)
    return float((right * weight).sum() / weight.sum().clamp(min=1.0))


def _relevance(families: Sequence[str], attributes: Sequence[Attribute]) -> torch.Tensor:
    names = [a.name for a in attributes]
    mask = torch.zeros(len(families), len(names), dtype=torch.bool)
    for b, family in enumerate(families):
        mask[b, names.index(OVERALL)] = True
        linked = FAMILY_ATTRIBUTE.get(family)
        if linked in names:
            mask[b, names.index(linked)] = True
    return mask


def _overall_only(families: Sequence[str], attributes: Sequence[Attribute]) -> torch.Tensor:
    mask = torch.zeros(len(families), len(attributes), dtype=torch.bool)
    mask[:, [a.name for a in attributes].index(OVERALL)] = True
    return mask


def _token_tables(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Token embedding tables of the text tower (open_clip's CLIP and CustomTextCLIP name them differently)."""
    return [m.weight for name, m in model.named_modules() if name.endswith("token_embedding")]


def save_checkpoint(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> Path:
    """The model's state dict as safetensors, written to a temporary file and renamed into place."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:  # the umask's mode, like every other output (mkstemp alone makes 0600)
        save_file(state, str(tmp), metadata=metadata)
    return path


def train_quality(
    config: QualityTrainConfig, output: str | Path, on_log: StepCallback | None = None, log_every: int = 25
) -> QualityTrainResult:
    """Fine-tune a CLIP on synthetically degraded crops with margin-ranking losses; write a safetensors checkpoint."""
    import open_clip

    from edgeclip.models.loading import load_model
    from edgeclip.models.preprocess import preprocess_spec_for

    output = Path(output)
    if output.suffix != ".safetensors":
        raise UsageError(f"output {output} must end in .safetensors (an open_clip-format checkpoint)")
    started = time.perf_counter()
    loaded = load_model(config.architecture, config.pretrained, random_init=config.random_init, seed=config.seed)
    model = loaded.model
    spec, _ = preprocess_spec_for(loaded.architecture, config.pretrained)
    size = spec.image_size[0]
    if spec.image_size[0] != spec.image_size[1]:
        raise UsageError(f"{loaded.architecture} takes {spec.image_size}: the trainer needs a square input")
    pool = load_pristine(config, size)
    tokenizer = open_clip.get_tokenizer(loaded.architecture)
    attributes = list(config.attributes)

    rng = np.random.default_rng(config.seed)
    probe_rng = np.random.default_rng([config.seed, 1])
    probe, probe_families = sample_batch(
        pool, replace(config, batch_size=max(config.batch_size, PROBE_IMAGES)), size, probe_rng
    )
    probe_x = _to_tensor(probe, spec.mean, spec.std).flatten(0, 2)
    probe_mask = _overall_only(probe_families, attributes)

    def probe_accuracy() -> float:
        model.eval()
        with torch.no_grad():
            text = _text_targets(model, tokenizer, attributes)
            emb = F.normalize(model.encode_image(probe_x), dim=-1)
            sims = torch.einsum("nd,akd->nak", emb, text).reshape(*probe.shape[:3], len(attributes), 2)
        return pair_ranking_accuracy(sims, probe_mask)

    before = probe_accuracy()
    trainable = list(model.visual.parameters())
    if config.train_text:
        # The token table (49k rows, a dozen used) stays frozen: training it is slow and changes nothing useful.
        frozen = {id(model.logit_scale), *(id(p) for p in _token_tables(model))}
        trainable = [p for p in model.parameters() if id(p) not in frozen]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))

    logit_scale = float(model.logit_scale.detach().exp())
    overall_index = [a.name for a in attributes].index(OVERALL)
    frozen_text = None
    if not config.train_text:
        with torch.no_grad():
            frozen_text = _text_targets(model, tokenizer, attributes)
    history: list[dict[str, float]] = []
    model.train()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        batch, families = sample_batch(pool, config, size, rng)
        x = _to_tensor(batch, spec.mean, spec.std).flatten(0, 2)
        text = frozen_text if frozen_text is not None else _text_targets(model, tokenizer, attributes)
        emb = F.normalize(model.encode_image(x), dim=-1)
        sims = torch.einsum("nd,akd->nak", emb, text).reshape(*batch.shape[:3], len(attributes), 2)
        relevant = _relevance(families, attributes)
        rank_good, rank_bad, consistency = ranking_losses(sims, relevant, config.margin)
        loss = rank_good + rank_bad + config.consistency_weight * consistency
        if config.anchor_weight:
            loss = loss + config.anchor_weight * anchor_loss(sims, relevant, logit_scale)
        if config.pooled_weight:
            loss = loss + config.pooled_weight * pooled_ranking_loss(sims, overall_index, config.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if step % log_every == 0 or step == config.steps - 1:
            record = {
                "step": step,
                "loss": loss.item(),
                "rank_good": rank_good.item(),
                "rank_bad": rank_bad.item(),
                "consistency": consistency.item(),
                "batch_pair_accuracy": pair_ranking_accuracy(sims.detach(), _overall_only(families, attributes)),
                "lr": lr_at(step),
            }
            history.append(record)
            if on_log is not None:
                on_log(step, record)
    after = probe_accuracy()
    model.eval()
    metadata = {
        "format": "pt",
        "producer": "edgeclip train-quality",
        "architecture": loaded.architecture,
        "config": json.dumps(config.to_dict()),
    }
    path = save_checkpoint(model, output, metadata)
    return QualityTrainResult(path, history, before, after, time.perf_counter() - started)
