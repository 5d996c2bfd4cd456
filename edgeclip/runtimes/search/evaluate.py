"""`edgeclip eval retrieval`: recall@1/5/10 text→image and image→text of a bundle on a captioned image set.

The set is a JSON Lines file, one record per line: ``{"image": "relative/or/absolute.jpg", "caption": "..."}`` or
``{"image": ..., "captions": ["...", ...]}`` (the layout `edgeclip.data.shapes.write_image_folder` writes; an image
named on several lines collects all their captions), or ``shapes[:split[:count[:size]]]`` to render the built-in
shapes world in memory (default ``shapes:eval:1000:64``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeclip.data.images import ImageLike, load_image
from edgeclip.data.jsonl import iter_json_objects
from edgeclip.errors import DatasetError, ImageError, UsageError
from edgeclip.metrics.retrieval import DEFAULT_KS, retrieval_recall
from edgeclip.runtimes.search.store import STORAGES, decode_vectors, encode_vectors

SHAPES_DEFAULT = ("eval", 1000, 64)


@dataclass
class CaptionSet:
    """Images, their captions (several per image allowed) and which image each caption describes."""

    name: str
    images: list[ImageLike] = field(default_factory=list)
    image_names: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_image: list[int] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _shapes(spec: str) -> CaptionSet:
    from edgeclip.data.shapes import ShapesDataset

    parts = spec.split(":")[1:]
    if len(parts) > 3:
        raise UsageError(f"captions {spec!r}: expected shapes[:split[:count[:size]]], e.g. shapes:eval:1000:64")
    try:
        split = parts[0] if parts and parts[0] else SHAPES_DEFAULT[0]
        count = int(parts[1]) if len(parts) > 1 else SHAPES_DEFAULT[1]
        size = int(parts[2]) if len(parts) > 2 else SHAPES_DEFAULT[2]
    except ValueError:
        raise UsageError(f"captions {spec!r}: count and size must be whole numbers") from None
    data = ShapesDataset(split=split, size=size, length=count)
    out = CaptionSet(f"shapes:{split}:{count}:{size}")
    for i in range(len(data)):
        sample = data[i]
        out.images.append(sample.image)
        out.image_names.append(f"shapes-{split}-{i}")
        out.captions.append(sample.caption)
        out.caption_image.append(i)
    return out


def read_caption_set(source: str | os.PathLike) -> CaptionSet:
    """A captioned set from a JSON Lines file or a `shapes[:split[:count[:size]]]` spec."""
    text = os.fspath(source)
    if text == "shapes" or text.startswith("shapes:"):
        return _shapes(text)
    path = Path(text)
    if not path.is_file():
        raise DatasetError(
            f"captions {path} {'is a folder' if path.is_dir() else 'does not exist'}: expected a JSON Lines file "
            'of {"image": ..., "caption": ...} records, or shapes[:split[:count[:size]]]'
        )
    out = CaptionSet(path.name)
    where: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, record in iter_json_objects(path, f):
            if not isinstance(record.get("image"), str):
                raise DatasetError(f'{path} line {number}: expected an object with an "image" path')
            captions = record.get("captions", [record["caption"]] if "caption" in record else None)
            if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
                raise DatasetError(f'{path} line {number}: expected "caption": "..." or "captions": ["...", ...]')
            image = Path(record["image"]).expanduser()
            image = image if image.is_absolute() else path.parent / image
            key = str(image)
            if key not in where:
                where[key] = len(out.images)
                out.images.append(image)
                out.image_names.append(key)
            for caption in captions:
                out.captions.append(caption)
                out.caption_image.append(where[key])
    if not out.images:
        raise DatasetError(f"{path} holds no records: expected one JSON object per line")
    return out


def evaluate_retrieval(
    bundle: Any,
    source: str | os.PathLike | CaptionSet,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """recall@k both ways over the whole set; unreadable images are left out (with their captions) and listed."""
    data = source if isinstance(source, CaptionSet) else read_caption_set(source)
    decoded, keep = [], []
    for i, image in enumerate(data.images):
        try:
            decoded.append(load_image(image))
            keep.append(i)
        except ImageError as e:
            data.skipped.append({"image": data.image_names[i], "error": str(e)})
    if not keep:
        raise DatasetError(f"{data.name}: none of its {len(data.images)} images could be read")
    remap = {old: new for new, old in enumerate(keep)}
    pairs = [(c, remap[i]) for c, i in zip(data.captions, data.caption_image, strict=True) if i in remap]
    image_emb = bundle.encode_image(decoded, batch_size=batch_size, progress=progress)
    text_emb = bundle.encode_text([c for c, _ in pairs], progress=progress)
    owners = [i for _, i in pairs]
    recall = retrieval_recall(text_emb @ image_emb.T, owners, ks)
    stored = {}  # the same, with image vectors as an index stores them: what each storage costs in recall
    for storage in STORAGES:
        rows = encode_vectors(image_emb, storage)
        vectors = decode_vectors([b for b, _ in rows], [s for _, s in rows], storage, image_emb.shape[1])
        r = retrieval_recall(text_emb @ vectors.T, owners, ks)
        stored[storage] = {d: {f"R@{k}": round(v, 4) for k, v in r[d].items()} for d in r}
    return {
        "dataset": data.name,
        "bundle": str(bundle.path),
        "model_id": bundle.model_id,
        "images": len(keep),
        "captions": len(pairs),
        "text_to_image": {f"R@{k}": round(v, 4) for k, v in recall["text_to_image"].items()},
        "image_to_text": {f"R@{k}": round(v, 4) for k, v in recall["image_to_text"].items()},
        "chance": {f"R@{k}": round(min(1.0, k / len(keep)), 4) for k in ks},
        "stored": stored,
        "skipped": data.skipped,
    }
