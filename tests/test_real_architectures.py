"""End to end on the real MobileCLIP2-S0 and MobileCLIP-S1 architectures (random weights the test writes).

export -> load_bundle (torch-free path) -> embeddings compared with open_clip's own model, reparameterized,
with open_clip's own preprocessing and tokenizer, on real photographs and varied strings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.export import export_bundle
from edgeclip.runtimes import load_bundle
from tests.conftest import cosine_rows

STRINGS = [
    "a photo of an astronaut",
    "a cup of coffee",
    "a tabby cat lying on a blanket",
    "Ünïcödé façade — déjà vu",
    "🚀🌙 launch",
    "",
    "a very long caption " * 30,
]


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["MobileCLIP2-S0", "MobileCLIP-S1"])
def test_bundle_matches_open_clip(architecture: str, tmp_path: Path, photos) -> None:
    import open_clip
    from safetensors.torch import save_file
    from timm.utils.model import reparameterize_model

    torch.manual_seed(7)
    model = open_clip.create_model(architecture, pretrained=None)
    ckpt = tmp_path / f"{architecture}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))

    result = export_bundle(architecture, str(ckpt), tmp_path / "bundle.edgeclip")
    bundle = load_bundle(result.path)
    p = bundle.manifest.preprocess
    # The MobileCLIP families' own preprocessing, not open_clip's OpenAI fallback for weights without a tag.
    assert (p.mean, p.std, p.interpolation, p.image_size) == ((0.0,) * 3, (1.0,) * 3, "bilinear", (256, 256))
    assert all(e.parity.min_cosine >= 0.9999 for e in bundle.manifest.encoders.values())

    # open_clip's own pipeline, loading the same file the way its users do.
    reference, _, preprocess = open_clip.create_model_and_transforms(
        architecture, pretrained=str(ckpt), image_mean=p.mean, image_std=p.std, image_interpolation=p.interpolation
    )
    reference = reparameterize_model(reference.eval())
    tokenizer = open_clip.get_tokenizer(architecture)
    images = list(photos.values())
    with torch.no_grad():
        ref_img = reference.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
        ref_txt = reference.encode_text(tokenizer(STRINGS), normalize=True).numpy()

    img_cos = cosine_rows(ref_img, bundle.encode_image(images))
    txt_cos = cosine_rows(ref_txt, bundle.encode_text(STRINGS))
    print(f"\n{architecture}: image min cosine {img_cos.min():.7f}, text min cosine {txt_cos.min():.7f}")
    assert img_cos.min() >= 0.9999
    assert txt_cos.min() >= 0.9999
    np.testing.assert_array_equal(bundle.tokenizer.encode(STRINGS), tokenizer(STRINGS).numpy())
