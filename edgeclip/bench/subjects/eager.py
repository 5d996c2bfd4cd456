"""The PyTorch eager baseline: the open_clip model as users run it (not reparameterized), for ratios and parity.

Preprocessing is edgeclip's (the same numpy code every bundle uses), so the end-to-end stage differs from a
bundle's only in the encoders. Torch and open_clip are imported when a subject is opened, never before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeclip.bench.latency import Stage
from edgeclip.bench.results import ModelIdentity
from edgeclip.bench.subjects import Subject, register_subject
from edgeclip.data.images import ImageLike, image_list
from edgeclip.runtimes.backends import RuntimeOptions
from edgeclip.runtimes.heads import Head
from edgeclip.runtimes.preprocess import PreprocessSpec, preprocess


class EagerEncoder:
    """An open_clip model's L2-normalized image and text towers behind the same surface as a Bundle."""

    def __init__(self, model: Any, tokenizer: Any, spec: PreprocessSpec, model_id: str, logit_scale: float) -> None:
        from edgeclip.models.encoders import ImageEncoder, TextEncoder

        self.image = ImageEncoder(model).eval()
        self.text = TextEncoder(model).eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.model_id = model_id
        self.logit_scale = logit_scale

    def run_image(self, pixels: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.image(pixels).float().numpy()

    def run_text(self, tokens: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.text(tokens).float().numpy()

    def encode_image(
        self, images: ImageLike | Sequence[ImageLike], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """L2-normalized embeddings of paths, PIL images or arrays, preprocessed as a bundle would."""
        import torch

        items = image_list(images)
        out = [
            self.run_image(torch.from_numpy(preprocess(items[s : s + batch_size], self.spec)))
            for s in range(0, len(items), batch_size)
        ]
        return np.concatenate(out)

    def encode_text(self, texts: Sequence[str] | str, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """L2-normalized embeddings of strings, tokenized by open_clip's own tokenizer."""
        items = [texts] if isinstance(texts, str) else list(texts)
        out = [self.run_text(self.tokenizer(items[s : s + batch_size])) for s in range(0, len(items), batch_size)]
        return np.concatenate(out)


@register_subject("eager")
def open_eager(source: Mapping[str, Any], options: RuntimeOptions) -> Subject:
    """Load the model (checkpoint or random weights) and wrap its towers; threads set torch's intra-op pool."""
    import open_clip
    import torch

    from edgeclip.models.loading import load_model
    from edgeclip.models.preprocess import preprocess_spec_for
    from edgeclip.runtimes.manifest import SourceModel

    architecture, pretrained = source["architecture"], source.get("pretrained")
    random_init = bool(source.get("random_init"))
    loaded = load_model(architecture, pretrained, random_init=random_init)
    identity = SourceModel(
        architecture=loaded.architecture,
        pretrained=Path(pretrained).name if pretrained and loaded.checkpoint_sha256 else pretrained,
        checkpoint_sha256=loaded.checkpoint_sha256,
        weights_sha256=loaded.weights_sha256(),
        random_init=random_init,
    )
    spec, _ = preprocess_spec_for(loaded.architecture, pretrained, None)
    logit_scale = float(np.exp(loaded.model.logit_scale.detach().float().numpy()).item())
    encoder = EagerEncoder(
        loaded.model, open_clip.get_tokenizer(loaded.architecture), spec, identity.model_id, logit_scale
    )
    if loaded.checkpoint_sha256 and pretrained:
        size = Path(pretrained).stat().st_size
    else:
        size = sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values())

    def build_stages(image: Image.Image, text: str, head: Head, batch: int) -> dict[str, Stage]:
        pixels = torch.from_numpy(preprocess([image] * batch, spec))
        tokens = encoder.tokenizer([text] * batch)
        images = [image] * batch
        return {
            "image": lambda: encoder.run_image(pixels),
            "text": lambda: encoder.run_text(tokens),
            "end_to_end": lambda: head.probabilities(encoder.encode_image(images, batch_size=batch), logit_scale),
        }

    previous_threads = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    return Subject(
        encoder=encoder,
        build_stages=build_stages,
        runtime=lambda: f"torch {torch.__version__} eager, {torch.get_num_threads()} threads",
        model=ModelIdentity(identity.architecture, identity.model_id, identity.pretrained, random_init),
        size_bytes={"model": int(size)},
        close=lambda: torch.set_num_threads(previous_threads),
    )
