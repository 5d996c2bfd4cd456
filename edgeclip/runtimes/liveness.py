"""Face liveness (presentation-attack detection) on the device: find faces, crop, score against a liveness head.

Zero-shot scoring after CLIPC8 and FLIP: a bona fide class and presentation-attack species, each described by
a few prompts; the prompt embeddings of a class are averaged (normalized each, then the mean normalized), the
face crop's embedding is compared with every class at the bundle's logit scale, a softmax over all classes
gives P(class), and liveness = P(bona fide) = 1 - sum of P(attack species). The head stores the class order
and which label is bona fide, so a reordered head can never invert the score.

The CLIPC8 paper names eight attack categories but does not publish its prompts; the species and prompts
below are ours, documented one by one, and replaceable (`species_from_mapping`, `--species FILE.json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeclip.data.images import ImageLike, load_image
from edgeclip.errors import ImageError, UsageError
from edgeclip.runtimes.bundle import Bundle
from edgeclip.runtimes.faces import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_FACE,
    FaceBox,
    FaceDetector,
    crop_face,
    get_face_detector,
)
from edgeclip.runtimes.heads import Head, build_prompt_head, resolve_task_head
from edgeclip.runtimes.zeroshot import _describe

BONA_FIDE = "bona_fide"
HEAD_NAME = "liveness"
HEAD_KIND = "liveness"


@dataclass(frozen=True)
class Species:
    """A liveness class: its label (also the eval folder name), what it covers, and the prompts describing it."""

    name: str
    description: str
    prompts: tuple[str, ...]


LIVENESS_SPECIES: tuple[Species, ...] = (
    Species(
        BONA_FIDE,
        "a live person in front of the camera",
        (
            "a photo of a real person's face",
            "a live human face captured by a phone camera",
            "a selfie of a real person with natural skin texture",
        ),
    ),
    Species(
        "print",
        "a printed photograph held up to the camera",
        (
            "a photo of a printed photograph of a face",
            "a face printed on paper held in front of the camera",
            "a paper print of a face with visible halftone dots",
        ),
    ),
    Species(
        "screen_replay",
        "a still photo shown on a phone, tablet or monitor",
        (
            "a photo of a face displayed on a phone screen",
            "a face shown on a monitor with moiré patterns and screen glare",
            "a picture of a screen showing a face, with a visible bezel",
        ),
    ),
    Species(
        "video_replay",
        "a recorded video of the person replayed on a screen",
        (
            "a video of a face replayed on a tablet screen",
            "a blurry recording of a face played back on a display",
        ),
    ),
    Species(
        "tampered_id",
        "an identity-document photo, or an ID card with a replaced photo",
        (
            "a photo of an ID card with a face photo on it",
            "an identity card whose photo has been replaced",
        ),
    ),
    Species(
        "paper_mask",
        "a paper or 3D mask worn over the face",
        (
            "a person wearing a paper mask of someone else's face",
            "a face covered by a printed mask with eye holes",
            "a 3D mask of a human face",
        ),
    ),
    Species(
        "cutout",
        "a printed face with the eyes cut out, real eyes behind it",
        (
            "a printed photo of a face with the eyes cut out",
            "a paper cutout of a face held up with real eyes showing through holes",
        ),
    ),
    Species(
        "low_light",
        "an attack presented in a dark room to hide its artefacts",
        (
            "a very dark photo of a face taken in a dark room",
            "a face on a glowing screen in a dark room",
        ),
    ),
    Species(
        "digital_injection",
        "a synthetic or manipulated image injected into the camera stream",
        (
            "a computer-generated image of a face",
            "a deepfake image of a face",
        ),
    ),
)


def species_from_mapping(data: Mapping[str, Any], where: str = "species") -> tuple[Species, ...]:
    """Species from `{"name": ["prompt", ...]}` or `{"name": {"description": ..., "prompts": [...]}}`."""
    if not isinstance(data, Mapping) or not data:
        raise UsageError(f'{where} must map class names to prompt lists, e.g. {{"bona_fide": ["a live face"]}}')
    out = []
    for name, value in data.items():
        entry = value if isinstance(value, Mapping) else {"prompts": value}
        prompts = entry.get("prompts")
        if isinstance(prompts, str) or not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise UsageError(f"{where}: class {name!r} needs a list of prompt strings")
        out.append(Species(str(name), str(entry.get("description", "")), tuple(prompts)))
    return tuple(out)


def load_species_file(path: Path) -> tuple[Species, ...]:
    """Species from a JSON file (see `species_from_mapping`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: expected a JSON file of species") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise UsageError(f"{path} is nested too deeply: expected a JSON object of species") from None
    return species_from_mapping(data, str(path))


def build_liveness_head(
    bundle: Bundle,
    species: Sequence[Species] = LIVENESS_SPECIES,
    name: str = HEAD_NAME,
    bona_fide: str = BONA_FIDE,
    *,
    progress: bool = False,
) -> Head:
    """Embed every species' prompts with the bundle's text encoder into a liveness head (class order stored)."""
    names = [s.name for s in species]
    if bona_fide not in names:
        raise UsageError(f"the species list has no bona fide class {bona_fide!r}: expected it among {names}")
    if len(names) < 2:
        raise UsageError("a liveness head needs the bona fide class and at least one attack species")
    prompts = {s.name: s.prompts for s in species}
    return build_prompt_head(bundle, name, HEAD_KIND, prompts, positives=(bona_fide,), progress=progress)


@dataclass(frozen=True)
class FaceScore:
    """One face: where it is, P(bona fide), P(each class) and the decision at the detector's threshold."""

    box: FaceBox
    live_probability: float
    species_probabilities: dict[str, float]
    is_live: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "face_box": self.box.to_dict(),
            "live_probability": self.live_probability,
            "is_live": self.is_live,
            "species_probabilities": self.species_probabilities,
        }


@dataclass(frozen=True)
class LivenessResult:
    """All faces found in one image (largest first), or why the image could not be read."""

    source: str
    faces: tuple[FaceScore, ...] = ()
    error: str | None = None
    image_size: tuple[int, int] | None = None  # width, height

    @property
    def face_found(self) -> bool:
        return bool(self.faces)

    @property
    def face_box(self) -> FaceBox | None:
        return self.faces[0].box if self.faces else None

    @property
    def live_probability(self) -> float | None:
        """P(bona fide) of the largest face; None when no face was found."""
        return self.faces[0].live_probability if self.faces else None

    @property
    def species_probabilities(self) -> dict[str, float] | None:
        return self.faces[0].species_probabilities if self.faces else None

    @property
    def is_live(self) -> bool:
        """The largest face passes the threshold; no face is never live."""
        return bool(self.faces) and self.faces[0].is_live

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.error is not None:
            out["error"] = self.error
            return out
        out["face_found"] = self.face_found
        out["is_live"] = self.is_live
        out["live_probability"] = self.live_probability
        out["faces"] = [f.to_dict() for f in self.faces]
        return out


class LivenessDetector:
    """Face liveness through any backend a bundle has: detect faces, crop with margin, score P(bona fide)."""

    def __init__(
        self,
        bundle: Bundle,
        head: str | Head | None = None,
        *,
        detector: str | FaceDetector = "haar",
        min_face: int = DEFAULT_MIN_FACE,
        margin: float = DEFAULT_MARGIN,
        threshold: float = 0.5,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"liveness threshold {threshold!r} is not allowed: expected a probability 0..1")
        if not 0.0 <= margin <= 2.0:
            raise UsageError(f"face margin {margin!r} is not allowed: expected 0..2 (a fraction of the face size)")
        self.bundle = bundle
        self.head = resolve_task_head(bundle, head, HEAD_NAME, HEAD_KIND, build_liveness_head)
        if len(self.head.positives) != 1 or len(self.head.group_slices()) != 1:
            raise UsageError(f"head {self.head.name!r} does not name exactly one bona fide label and one group")
        self.bona_fide_index = self.head.labels.index(self.head.positives[0])
        self.detector = get_face_detector(detector, min_face) if isinstance(detector, str) else detector
        self.margin = margin
        self.threshold = threshold

    @property
    def labels(self) -> tuple[str, ...]:
        return self.head.labels

    def probabilities(self, crops: Sequence[ImageLike], *, batch_size: int = 32) -> np.ndarray:
        """P(class) [N, C] for face crops (no detection), in the head's class order."""
        if not crops:
            return np.zeros((0, len(self.labels)), np.float32)
        emb = self.bundle.encode_image(list(crops), batch_size=batch_size)
        return self.head.probabilities(emb, self.bundle.logit_scale)

    def detect(self, image: ImageLike) -> tuple[Image.Image, list[FaceBox]]:
        """The decoded image and its faces (largest first)."""
        rgb = load_image(image)
        return rgb, self.detector.detect(rgb)

    def score(self, image: ImageLike) -> LivenessResult:
        """Liveness of every face in one image; an image without a face gives a result that says so."""
        return self.score_many([image])[0]

    def score_many(
        self,
        images: Sequence[ImageLike],
        *,
        skip_bad: bool = False,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[LivenessResult]:
        """Results for many images; unreadable ones stop the run, or are reported and skipped with skip_bad."""
        from tqdm.auto import tqdm

        results: list[LivenessResult] = []
        with tqdm(total=len(images), disable=not progress, desc="liveness", unit="img", leave=False) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                found: list[tuple[str, Image.Image | None, list[FaceBox], str | None]] = []
                crops: list[Image.Image] = []
                rgb: Image.Image | None
                for image in chunk:
                    try:
                        rgb, boxes = self.detect(image)
                    except ImageError as e:
                        if not skip_bad:
                            raise
                        found.append((_describe(image), None, [], str(e)))
                        continue
                    found.append((_describe(image), rgb, boxes, None))
                    crops.extend(crop_face(rgb, box, self.margin) for box in boxes)
                probs = self.probabilities(crops)
                row = 0
                for source, rgb, boxes, error in found:
                    if error is not None or rgb is None:
                        results.append(LivenessResult(source, error=error))
                        continue
                    faces = []
                    for box in boxes:
                        faces.append(self._face_score(box, probs[row]))
                        row += 1
                    results.append(LivenessResult(source, tuple(faces), image_size=rgb.size))
                bar.update(len(chunk))
        return results

    def _face_score(self, box: FaceBox, probs: np.ndarray) -> FaceScore:
        live = float(probs[self.bona_fide_index])
        species = {label: float(p) for label, p in zip(self.labels, probs, strict=True)}
        return FaceScore(box, live, species, live >= self.threshold)


@dataclass(frozen=True)
class SplitScores:
    """One eval split: per image its species folder, path and liveness score (0 when no face was found)."""

    species: tuple[str, ...]
    paths: tuple[str, ...]
    scores: np.ndarray
    no_face: dict[str, int]


SPLITS = ("dev", "test")


def read_eval_folder(folder: Path, bona_fide: str = BONA_FIDE) -> dict[str, dict[str, list[Path]]]:
    """`folder/{dev,test}/<species>/*.jpg` as {split: {species: images}}, checked for bona fide and attacks."""
    from edgeclip.data.images import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(
            f"{folder}: {'does not exist' if not folder.exists() else 'is not a folder'}; "
            "expected dev/ and test/ folders, each with bona_fide/ and one folder per attack species"
        )
    out: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        root = folder / split
        if not root.is_dir():
            raise UsageError(f"{folder} has no {split}/ folder: expected dev/ and test/ splits")
        species = {
            sub.name: list_images(sub)
            for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        }
        species = {name: images for name, images in species.items() if images}
        if bona_fide not in species:
            raise UsageError(f"{root} has no bona fide samples: expected images in {root / bona_fide}")
        if len(species) < 2:
            raise UsageError(f"{root} has no attack samples: expected at least one species folder besides {bona_fide}/")
        out[split] = species
    return out


def score_split(
    detector: LivenessDetector, species: dict[str, list[Path]], *, skip_bad: bool = False, progress: bool = False
) -> SplitScores:
    """Liveness scores of every image of a split: the largest face's P(bona fide); no face scores 0 (rejected)."""
    names = [name for name, images in species.items() for _ in images]
    paths = [path for images in species.values() for path in images]
    results = detector.score_many(paths, skip_bad=skip_bad, progress=progress)
    keep = [i for i, r in enumerate(results) if r.error is None]
    no_face: dict[str, int] = {}
    for i in keep:
        if not results[i].face_found:
            no_face[names[i]] = no_face.get(names[i], 0) + 1
    scores = np.array([results[i].live_probability or 0.0 for i in keep], dtype=np.float64)
    return SplitScores(tuple(names[i] for i in keep), tuple(str(paths[i]) for i in keep), scores, no_face)


def evaluate_folder(
    detector: LivenessDetector,
    folder: Path,
    *,
    rule: str = "eer",
    bona_fide: str = BONA_FIDE,
    skip_bad: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """ISO/IEC 30107-3 figures for an eval folder: threshold chosen on dev by `rule`, applied to test."""
    from edgeclip.metrics.liveness import ScoreSet, evaluate

    splits = read_eval_folder(folder, bona_fide)
    scored = {
        name: score_split(detector, species, skip_bad=skip_bad, progress=progress) for name, species in splits.items()
    }
    sets = {name: ScoreSet.from_labels(s.scores, s.species, bona_fide) for name, s in scored.items()}
    report = evaluate(sets["dev"], sets["test"], rule)
    return {
        **report.to_dict(),
        "head": detector.head.name,
        "detector": detector.detector.name,
        "no_face": {name: s.no_face for name, s in scored.items()},
    }
