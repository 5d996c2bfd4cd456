"""Teachers and captioners for reinforcement: open_clip models with local weights, run once per image.

Each teacher embeds the augmented images at its own resolution and normalization, and the captions; the
ensemble concatenates the L2-normalized embeddings along the feature axis (DataCompDR's `[.., D1 + D2]`)
and records every teacher's own fixed logit scale. Synthetic captions come from an open_clip CoCa model
(top-p sampling) or from a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from edgeclip.data.jsonl import iter_json_objects
from edgeclip.distill.augment import AugmentParams, apply_params, to_tensor
from edgeclip.errors import DatasetError, ModelError, RuntimeUnavailable, UsageError


@dataclass(frozen=True)
class TeacherInfo:
    """What identifies a teacher in a dataset manifest: architecture, weights and its fixed logit scale."""

    architecture: str
    pretrained: str
    weights_sha256: str
    embed_dim: int
    logit_scale: float
    image_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "embed_dim": self.embed_dim,
            "logit_scale": self.logit_scale,
            "image_size": list(self.image_size),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TeacherInfo:
        try:
            return cls(
                str(d["architecture"]),
                str(d["pretrained"]),
                str(d["weights_sha256"]),
                int(d["embed_dim"]),
                float(d["logit_scale"]),
                (int(d["image_size"][0]), int(d["image_size"][1])),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise DatasetError(f"teacher entry {dict(d)!r} is not valid ({type(e).__name__}: {e})") from None


def parse_model_ref(ref: str, what: str = "--teacher") -> tuple[str, str]:
    """`ARCH:WEIGHTS` -> (architecture, weights); the weights must be a local file here."""
    arch, sep, weights = ref.partition(":")
    if not sep or not arch or not weights:
        raise UsageError(f"{what} {ref!r}: expected ARCHITECTURE:WEIGHTS_FILE, e.g. ViT-L-14:./vitl14.safetensors")
    return arch, weights


class Teacher:
    """One open_clip teacher in eval mode: embeds augmented images and texts, L2-normalized, without gradients."""

    def __init__(self, architecture: str, pretrained: str) -> None:
        import open_clip

        from edgeclip.models.loading import load_model
        from edgeclip.models.preprocess import preprocess_spec_for

        loaded = load_model(architecture, pretrained)
        self.model = loaded.model
        self.architecture = loaded.architecture
        spec, _ = preprocess_spec_for(loaded.architecture, pretrained)
        self.preprocess = spec
        self.tokenizer = open_clip.get_tokenizer(loaded.architecture)
        with torch.no_grad():
            dim = int(self.model.encode_text(self.tokenizer(["a"])).shape[-1])
        path = str(Path(pretrained).resolve()) if Path(pretrained).exists() else pretrained
        self.info = TeacherInfo(
            loaded.architecture,
            path,
            loaded.weights_sha256(),
            dim,
            float(self.model.logit_scale.detach().exp().item()),
            spec.image_size,
        )

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], params: Sequence[AugmentParams], interpolation: str):
        """Embeddings [N, D] of each image under its augmentation, at this teacher's size and normalization."""
        size = self.preprocess.image_size
        views = [apply_params(im, p, size, interpolation) for im, p in zip(images, params, strict=True)]
        x = to_tensor(views, self.preprocess.mean, self.preprocess.std)
        return torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings [N, D] of the texts."""
        return torch.nn.functional.normalize(self.model.encode_text(self.tokenizer(list(texts))).float(), dim=-1)


class TeacherEnsemble:
    """Several teachers whose embeddings are concatenated along the feature axis, in the order given."""

    def __init__(self, teachers: Sequence[Teacher]) -> None:
        if not teachers:
            raise UsageError("at least one teacher is needed: pass --teacher ARCH:WEIGHTS")
        self.teachers = list(teachers)

    @classmethod
    def load(cls, refs: Sequence[str]) -> TeacherEnsemble:
        """Load teachers from `ARCH:WEIGHTS` references."""
        return cls([Teacher(*parse_model_ref(ref)) for ref in refs])

    @property
    def infos(self) -> tuple[TeacherInfo, ...]:
        return tuple(t.info for t in self.teachers)

    def encode_images(self, images: Sequence[Image.Image], params: Sequence[AugmentParams], interpolation: str):
        """[N, D_total] float32: each teacher's embeddings of the augmented views, concatenated."""
        return torch.cat([t.encode_images(images, params, interpolation) for t in self.teachers], dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D_total] float32 text embeddings, concatenated."""
        return torch.cat([t.encode_texts(texts) for t in self.teachers], dim=-1)


# --- synthetic captions ------------------------------------------------------------------------------------


class CocaCaptioner:
    """An open_clip CoCa model generating captions by top-p sampling (DataCompDR used top-p 0.9)."""

    def __init__(self, architecture: str, pretrained: str, top_p: float = 0.9, max_tokens: int = 30) -> None:
        import open_clip
        from open_clip import coca_model

        from edgeclip.models.loading import is_coca, load_model
        from edgeclip.models.preprocess import preprocess_spec_for

        if not coca_model._has_transformers:
            raise RuntimeUnavailable(
                "--captioner needs the transformers package (open_clip's CoCa generate uses it): "
                "pip install 'edgeclip[captioner]'"
            )
        loaded = load_model(architecture, pretrained)
        model = loaded.model
        if not is_coca(model):
            raise UsageError(f"--captioner {architecture} is not a CoCa model (it cannot generate text)")
        self.model = model
        self.preprocess, _ = preprocess_spec_for(loaded.architecture, pretrained)
        self.name = f"{loaded.architecture}:{Path(pretrained).name}"
        self.top_p = top_p
        self.max_tokens = max_tokens
        self._decode = open_clip.decode

    @torch.no_grad()
    def caption(self, images: Sequence[Image.Image], count: int, generator: torch.Generator) -> list[list[str]]:
        """`count` sampled captions per image."""
        from edgeclip.runtimes.preprocess import preprocess

        x = torch.from_numpy(preprocess(list(images), self.preprocess))
        out: list[list[str]] = [[] for _ in images]
        for _ in range(count):
            with torch.random.fork_rng():
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                try:
                    tokens = self.model.generate(
                        x, generation_type="top_p", top_p=self.top_p, seq_len=self.max_tokens, fixed_output_length=False
                    )
                except RuntimeError as e:  # torch.multinomial's refusal of NaN / inf probabilities
                    if "probability tensor contains" not in str(e):
                        raise
                    raise ModelError(
                        f"captioner {self.name} gave non-finite token probabilities: do its weights hold NaN or inf?"
                    ) from e
            for i, row in enumerate(tokens):
                text = self._decode(row).split("<end_of_text>")[0].replace("<start_of_text>", "").strip()
                out[i].append(text)
        return out


class CaptionsFile:
    """Synthetic captions supplied as JSONL: `{"uid": ..., "captions": [...]}` (or `syn_text`) per line."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"synthetic captions file {path} does not exist")
        self.path = path
        self.name = f"file:{path.name}"
        self.by_uid: dict[str, list[str]] = {}
        for n, row in iter_json_objects(path, path.read_text(encoding="utf-8").splitlines()):
            captions = row.get("captions", row.get("syn_text"))
            if "uid" not in row or not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                raise DatasetError(f'{path} line {n}: expected {{"uid": ..., "captions": [strings]}}')
            self.by_uid[str(row["uid"])] = captions

    def captions(self, uid: str, count: int) -> list[str]:
        """The first `count` captions for `uid`; too few is an error naming the uid."""
        found = self.by_uid.get(uid)
        if found is None:
            raise DatasetError(f"{self.path}: no synthetic captions for uid {uid!r}")
        if len(found) < count:
            raise DatasetError(f"{self.path}: uid {uid!r} has {len(found)} captions, {count} needed")
        return found[:count]


def stack_text_rows(gt: torch.Tensor, syn: torch.Tensor | None, count: int) -> np.ndarray:
    """Per image `[1 + S, D]`: the ground-truth caption's embedding first, then its S synthetic ones."""
    rows = [gt.unsqueeze(1)]
    if syn is not None and count:
        rows.append(syn.view(gt.shape[0], count, -1))
    return torch.cat(rows, dim=1).numpy().astype(np.float32)
