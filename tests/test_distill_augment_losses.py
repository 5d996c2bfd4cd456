"""Replayable augmentations and the (1-λ)·CLIP + λ·KD loss, against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.distill.augment import (
    OPS,
    AugmentConfig,
    AugmentParams,
    apply_params,
    params_from_json,
    params_to_json,
    sample_params,
)
from edgeclip.distill.losses import clip_loss, distill_loss, kd_loss, teacher_targets
from edgeclip.errors import DatasetError, UsageError


def test_replaying_stored_parameters_reproduces_the_pixels_exactly(photos: dict[str, Image.Image]) -> None:
    image = photos["astronaut"]
    rng = np.random.default_rng(3)
    config = AugmentConfig(magnitude=12)
    params = [sample_params(rng, image.width, image.height, config) for _ in range(24)]
    first = [np.asarray(apply_params(image, p, (64, 48), "bilinear")) for p in params]
    # Through the JSON that paug.json stores, as a reader in another process would see it.
    replayed = params_from_json(json.loads(json.dumps({"param_aug": params_to_json(params)}))["param_aug"])
    assert replayed == params
    again = [np.asarray(apply_params(image, p, (64, 48), "bilinear")) for p in replayed]
    for a, b in zip(first, again, strict=True):
        assert a.shape == (64, 48, 3) and np.array_equal(a, b)
    # The views really differ from each other (crops and ops are drawn, not constant).
    assert len({a.tobytes() for a in first}) == len(first)
    used = {OPS[op] for p in params for op, _ in p.ops}
    assert len(used) >= 8, used


def test_each_op_changes_pixels_deterministically(photos: dict[str, Image.Image]) -> None:
    image = photos["coffee"]
    full = (0, 0, image.height, image.width)
    plain = np.asarray(apply_params(image, AugmentParams(full, ()), (96, 96), "bicubic"))
    for index, name in enumerate(OPS):
        mag = {"Posterize": 4.0, "Solarize": 128.0, "Rotate": 20.0}.get(name, 0.25)
        p = AugmentParams(full, ((index, mag),))
        a = np.asarray(apply_params(image, p, (96, 96), "bicubic"))
        assert np.array_equal(a, np.asarray(apply_params(image, p, (96, 96), "bicubic")))
        assert (name == "Identity") == np.array_equal(a, plain), name


def test_crop_box_outside_the_image_is_refused_and_bad_params_named() -> None:
    image = Image.new("RGB", (40, 30))
    with pytest.raises(DatasetError, match="outside the 40x30 image"):
        apply_params(image, AugmentParams((10, 0, 25, 10), ()), (16, 16), "bilinear")
    with pytest.raises(DatasetError, match="op index 99"):
        params_from_json('[{"RandomResizedCrop": [0, 0, 4, 4], "RandAugment": [[99, 1.0]]}]')
    with pytest.raises(DatasetError, match="not valid JSON"):
        params_from_json("{oops")
    with pytest.raises(UsageError, match="crop scale"):
        AugmentConfig(scale=(0.0, 1.0))


def _normalized(rng: np.random.Generator, shape: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    return torch.nn.functional.normalize(x, dim=-1)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_clip_loss_equals_open_clips() -> None:
    from open_clip.loss import ClipLoss

    rng = np.random.default_rng(0)
    img, txt = _normalized(rng, (12, 16)), _normalized(rng, (12, 16))
    scale = torch.tensor(14.0)
    assert torch.allclose(clip_loss(img, txt, scale), ClipLoss()(img, txt, scale), atol=1e-6)


def test_kd_averages_teacher_softmaxes_at_their_own_scales_in_both_directions() -> None:
    rng = np.random.default_rng(1)
    b, dims, scales = 6, (8, 5), (100.0, 30.0)
    t_img = torch.cat([_normalized(rng, (b, d)) for d in dims], dim=1)
    t_txt = torch.cat([_normalized(rng, (b, d)) for d in dims], dim=1)
    s_img, s_txt = _normalized(rng, (b, 4)), _normalized(rng, (b, 4))
    s_scale = torch.tensor(20.0)

    # Independent numpy reference: teacher k's softmax at scale s_k, averaged after the softmax.
    ti, tt = t_img.numpy().astype(np.float64), t_txt.numpy().astype(np.float64)
    target_i2t = np.zeros((b, b))
    target_t2i = np.zeros((b, b))
    start = 0
    for d, s in zip(dims, scales, strict=True):
        sim = s * ti[:, start : start + d] @ tt[:, start : start + d].T
        target_i2t += _np_softmax(sim) / len(dims)
        target_t2i += _np_softmax(sim.T) / len(dims)
        start += d
    logits = 20.0 * s_img.numpy().astype(np.float64) @ s_txt.numpy().astype(np.float64).T
    log_p = np.log(_np_softmax(logits))
    log_q = np.log(_np_softmax(logits.T))
    want = (-(target_i2t * log_p).sum(1).mean() - (target_t2i * log_q).sum(1).mean()) / 2

    targets = teacher_targets(t_img, t_txt, dims, scales)
    got = kd_loss(s_img, s_txt, s_scale, targets)
    assert abs(float(got) - want) < 1e-4
    # Averaging logits before the softmax would give a different target: the order matters and is checked.
    mixed = sum(s * ti[:, a : a + d] @ tt[:, a : a + d].T for d, s, a in ((8, 100.0, 0), (5, 30.0, 8)))
    before = _np_softmax(mixed / 2)
    assert not np.allclose(before, targets[0].numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="add up to 13"):
        teacher_targets(t_img[:, :12], t_txt[:, :12], dims, scales)


def test_distill_loss_mixes_clip_and_kd_summed_over_real_and_synthetic_captions() -> None:
    rng = np.random.default_rng(2)
    img = _normalized(rng, (5, 8))
    texts = [_normalized(rng, (5, 8)), _normalized(rng, (5, 8))]
    t_img, t_txt = _normalized(rng, (5, 6)), [_normalized(rng, (5, 6)), _normalized(rng, (5, 6))]
    scale = torch.tensor(10.0)
    clip_sum = sum(clip_loss(img, t, scale) for t in texts)
    pairs = zip(texts, t_txt, strict=True)
    kd_sum = sum(kd_loss(img, t, scale, teacher_targets(t_img, tt, (6,), (50.0,))) for t, tt in pairs)
    for lam in (0.0, 0.25, 1.0):
        total, _ = distill_loss(img, texts, scale, t_img, t_txt, (6,), (50.0,), lam)
        assert torch.allclose(total, (1 - lam) * clip_sum + lam * kd_sum, atol=1e-5)
    assert set(distill_loss(img, texts, scale, t_img, t_txt, (6,), (50.0,), 0.5)[1]) == {
        "clip_gt",
        "clip_syn",
        "kd_gt",
        "kd_syn",
    }
    # Student similarities equal to the teacher's (same scale) minimise KD: any other student scores worse.
    same, _ = distill_loss(t_img, [t_txt[0]], torch.tensor(50.0), t_img, [t_txt[0]], (6,), (50.0,), 1.0)
    other, _ = distill_loss(img, [texts[0]], torch.tensor(50.0), t_img, [t_txt[0]], (6,), (50.0,), 1.0)
    assert float(same) < float(other)


def test_to_tensor_gives_contiguous_nchw() -> None:
    """Training batches are plain NCHW: channels-last strides crashed torch 2.14.1's CPU conv backward (FastViT)."""
    from PIL import Image

    from edgeclip.distill.augment import to_tensor

    images = [Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("RGB", (8, 6), (0, 0, 255))]
    x = to_tensor(images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert x.shape == (2, 3, 6, 8) and x.is_contiguous()
    assert x[0, 0].eq(1).all() and x[0, 2].eq(0).all() and x[1, 2].eq(1).all()


def test_kd_targets_registry_lists_losses_refuses_duplicates_and_matches_the_cli() -> None:
    from edgeclip.cli import cli
    from edgeclip.distill.batches import TrainItem
    from edgeclip.distill.kd_targets import get_kd_targets, list_losses, register_kd_targets

    assert list_losses() == ["reinforced", "clip", "online"]
    with pytest.raises(ValueError, match="'clip' is already registered"):
        register_kd_targets("clip", uses_teachers=False, help="again")(lambda manifest, interpolation: None)
    assert list_losses() == ["reinforced", "clip", "online"] and get_kd_targets("clip").help == "plain contrastive"
    with pytest.raises(UsageError, match="--loss must be one of reinforced, clip, online, got 'kd'"):
        get_kd_targets("kd")
    loss_option = next(p for p in cli.commands["distill"].params if p.name == "loss")
    assert list(loss_option.type.choices) == list_losses()

    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(2)]  # per item: image, text, synthetic
    items = [TrainItem(f"u{i}", Image.new("RGB", (4, 4)), "c", "s", r[0], r[1], r[2]) for i, r in enumerate(rows)]
    cpu = torch.device("cpu")
    image, texts = get_kd_targets("reinforced").build(None, "bilinear")(items, [["c", "c"], ["s", "s"]], cpu)
    assert torch.equal(image, torch.from_numpy(np.stack([r[0] for r in rows])))
    assert [t.tolist() for t in texts] == [np.stack([r[j] for r in rows]).tolist() for j in (1, 2)]
    _, real_only = get_kd_targets("reinforced").build(None, "bilinear")(items, [["c", "c"]], cpu)
    assert len(real_only) == 1
    assert get_kd_targets("clip").build(None, "bilinear")(items, [["c", "c"]], cpu) == (None, None)
    with pytest.raises(UsageError, match="--loss online needs reinforced shards"):
        get_kd_targets("online").build(None, "bilinear")
