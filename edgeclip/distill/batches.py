"""Training data by index and the stream of batches one process draws from it.

Data order is a per-epoch permutation seeded by (seed, epoch); process r takes every world-th position, so
the samples seen depend only on the seed, never on timing, and a `Cursor` (epoch, position) resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgeclip.distill import distributed as ddp
from edgeclip.distill.augment import AugmentConfig, AugmentParams, apply_params, sample_params, sample_rng
from edgeclip.distill.config import DistillConfig
from edgeclip.distill.shards import DatasetManifest, ReinforcedShards, open_pixels
from edgeclip.distill.sources import ImageCaptionSource, open_source
from edgeclip.errors import DatasetError, ImageError, UsageError


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


class TrainingData:
    """Samples by index: reinforced shards joined with their pixels, or a plain image–caption source."""

    def __init__(self, config: DistillConfig, image_size: tuple[int, int]) -> None:
        self.config = config
        self.image_size = image_size
        self.shards: ReinforcedShards | None = None
        self.manifest: DatasetManifest | None = None
        teachers = config.uses_teachers
        if teachers or looks_like_shards(config.data):
            manifest = None
            if config.datacompdr:
                manifest = DatasetManifest.datacompdr(config.datacompdr, config.images or "")
            self.shards = ReinforcedShards(config.data, manifest)
            self.shards.require_complete(config.data)  # a folder lacking planned shards: a worker has not finished
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
        if config.augment and self.shards is not None and teachers:
            raise UsageError("--crop-scale/--randaug-* apply to --loss clip only: reinforced data replays stored views")
        if not teachers and config.augment:
            self.augment = config.augment
        self.use_syn = teachers and self.manifest is not None and self.manifest.synthetic_captions > 0
        self.extra_captions = None
        if config.captions:
            if self.shards is not None:
                raise UsageError("--captions applies to an image source; reinforced shards carry their own captions")
            from edgeclip.distill.teachers import CaptionsFile

            self.extra_captions = CaptionsFile(config.captions)

    @property
    def corrupt_shards(self) -> dict[str, str]:
        """Shards that could be read only in part (path -> why); their readable samples are used."""
        return dict(self.shards.corrupt_shards) if self.shards is not None else {}

    @property
    def missing_samples(self) -> dict[str, int | None]:
        """Per corrupt shard, how many samples it promised and lost (None: it records no count)."""
        return dict(self.shards.missing_samples) if self.shards is not None else {}

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
        if not self.config.uses_teachers:
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


def looks_like_shards(spec: str) -> bool:
    """Whether a --data spec names tar shards (a pattern, a .tar file, or a folder holding .tar files)."""
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

    def __init__(self, data: TrainingData, world: ddp.World, seed: int, cursor: Cursor | None = None) -> None:
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
        """The next `size` usable items, moving the cursor past every position used or skipped."""
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


__all__ = ["BatchStream", "Cursor", "TrainItem", "TrainingData", "looks_like_shards"]
