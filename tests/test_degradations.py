"""Degradations (monotone in level, deterministic by seed) and synthetic presentation attacks, on real photos."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from edgeclip.data.attacks import apply_attack, list_attacks, register_attack
from edgeclip.data.degradations import (
    LEVELS,
    colourfulness,
    degradation_ladder,
    degrade,
    get_degradation,
    list_degradations,
    register_degradation,
)
from edgeclip.errors import ImageError, UsageError


@pytest.fixture(scope="module")
def photo(photos) -> Image.Image:
    return photos["astronaut"].resize((128, 128), Image.BICUBIC)


def _sharpness(x: np.ndarray) -> float:
    grey = x.astype(np.float64).mean(axis=2)
    lap = grey[1:-1, 1:-1] * 4 - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(lap.var())


def _error(reference: np.ndarray):
    return lambda x: -float(np.mean((x.astype(np.float64) - reference) ** 2))


def test_the_six_families_with_five_levels() -> None:
    assert list_degradations()[:6] == ["blur", "noise", "jpeg", "brightness", "contrast", "colour"]
    for name in list_degradations():
        assert len(get_degradation(name).values) == LEVELS
    with pytest.raises(ValueError, match="registered twice"):
        register_degradation("blur", description="", parameter="", values=(1, 2, 3, 4, 5))(lambda *a: a[0])


@pytest.mark.parametrize("family", ["blur", "noise", "jpeg", "brightness", "contrast", "colour"])
def test_each_level_is_worse_than_the_last(family: str, photo: Image.Image) -> None:
    ladder = degradation_ladder(photo, family, seed=3)
    reference = ladder[0].astype(np.float64)
    assert len(ladder) == LEVELS + 1 and all(x.shape == (128, 128, 3) and x.dtype == np.uint8 for x in ladder)
    np.testing.assert_array_equal(ladder[0], np.asarray(photo))  # level 0 is the image untouched
    # A statistic that the family should push down, level after level.
    measure = {
        "blur": _sharpness,
        "noise": _error(reference),
        "jpeg": _error(reference),
        "brightness": lambda x: float(x.mean()),
        "contrast": lambda x: float(x.astype(np.float64).std()),
        "colour": colourfulness,
    }[family]
    values = [measure(x) for x in ladder]
    assert all(a > b for a, b in itertools.pairwise(values)), values


def test_deterministic_by_seed(photo: Image.Image) -> None:
    a = degrade(photo, "noise", 3, seed=1)
    np.testing.assert_array_equal(a, degrade(np.asarray(photo), "noise", 3, seed=1))
    assert not np.array_equal(a, degrade(photo, "noise", 3, seed=2))


def test_bad_requests(photo: Image.Image, tmp_path) -> None:
    with pytest.raises(UsageError, match="unknown degradation 'fog': expected one of blur, noise"):
        degrade(photo, "fog", 1)
    for level in (-1, 6, 2.5, True):
        with pytest.raises(UsageError, match="expected an integer 0..5"):
            degrade(photo, "blur", level)
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="x.jpg"):
        degrade(bad, "blur", 1)


def test_colourfulness_is_zero_for_grey(photos) -> None:
    assert colourfulness(photos["astronaut"].convert("L").convert("RGB")) == pytest.approx(0.0, abs=1e-6)
    assert colourfulness(photos["astronaut"]) > 20


# --- synthetic presentation attacks ---------------------------------------------------------------

ASTRONAUT_FACE = (88, 33, 48, 48)  # in the 256 x 256 astronaut


@pytest.fixture(scope="module")
def face(photos) -> Image.Image:
    return photos["astronaut"].resize((256, 256), Image.BICUBIC)


def test_every_species_renders_a_changed_image_of_the_same_size(face: Image.Image) -> None:
    assert set(list_attacks()) >= {
        "print",
        "screen_replay",
        "video_replay",
        "cutout",
        "paper_mask",
        "tampered_id",
        "low_light",
    }
    original = np.asarray(face).astype(np.float64)
    x, y, w, h = ASTRONAUT_FACE
    for species in list_attacks():
        out = apply_attack(face, species, seed=0, face_box=ASTRONAUT_FACE)
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8, species
        # The face itself is visibly not the bona fide capture.
        assert np.abs(out[y : y + h, x : x + w] - original[y : y + h, x : x + w]).mean() > 8, species
        np.testing.assert_array_equal(out, apply_attack(face, species, seed=0, face_box=ASTRONAUT_FACE))
        assert not np.array_equal(out, apply_attack(face, species, seed=1, face_box=ASTRONAUT_FACE)), species


def test_cutout_shows_the_real_eyes_through_the_holes(face: Image.Image) -> None:
    x, y, w, h = ASTRONAUT_FACE
    out = apply_attack(face, "cutout", seed=0, face_box=ASTRONAUT_FACE).astype(np.float64)
    original = np.asarray(face).astype(np.float64)
    eye = (slice(int(y + 0.4 * h) - 1, int(y + 0.4 * h) + 2), slice(int(x + 0.32 * w) - 2, int(x + 0.32 * w) + 3))
    cheek = (slice(int(y + 0.7 * h) - 1, int(y + 0.7 * h) + 2), slice(int(x + 0.5 * w) - 2, int(x + 0.5 * w) + 3))
    # Inside a hole: the real pixels (slightly shadowed); elsewhere: the print, far from the original.
    assert np.abs(out[eye] - 0.85 * original[eye]).mean() < 12
    assert np.abs(out[cheek] - original[cheek]).mean() > np.abs(out[eye] - 0.85 * original[eye]).mean()


def test_attack_errors(face: Image.Image) -> None:
    with pytest.raises(UsageError, match="unknown attack species 'hologram'"):
        apply_attack(face, "hologram")
    with pytest.raises(UsageError, match="does not fit a 256x256 image"):
        apply_attack(face, "cutout", face_box=(200, 200, 100, 100))
    with pytest.raises(UsageError, match="too small"):
        apply_attack(np.zeros((10, 10, 3), np.uint8), "print")
    with pytest.raises(ValueError, match="registered twice"):
        register_attack("print", "again")(lambda *a: a[0])
