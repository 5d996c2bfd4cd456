"""Training-free GDA adaptation: the maths on known Gaussians, and `edgeclip adapt` on a real bundle.

The bundle has random weights; the synthetic attacks still leave texture statistics that even random features
carry, which is what a few-shot linear head can pick up and a random zero-shot head cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeclip.cli import cli
from edgeclip.data.attacks import apply_attack
from edgeclip.errors import UsageError
from edgeclip.runtimes import Head, ZeroShotClassifier, load_bundle
from edgeclip.runtimes.adapt import adapt_head, cross_validate, fit_gda, ledoit_wolf_shrinkage, read_shots_folder
from edgeclip.runtimes.liveness import LivenessDetector, build_liveness_head
from edgeclip.runtimes.quality import build_quality_head

SPECIES = ("bona_fide", "print", "screen_replay")


def test_gda_without_shrinkage_is_the_lda_solution() -> None:
    # Two classes, means +-m, shared covariance C: W_k = C^-1 mu_k and b_k = -1/2 mu_k' C^-1 mu_k + log(1/2).
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.6], [0.6, 1.0]])
    means = np.array([[1.0, 0.5], [-1.0, -0.5]])
    noise = rng.multivariate_normal([0, 0], cov, 4000)
    x = np.concatenate([means[0] + noise[:2000], means[1] + noise[2000:]])
    y = np.repeat([0, 1], 2000)
    fit = fit_gda(x, y, 2, shrinkage=0.0)
    sample_means = np.stack([x[y == k].mean(0) for k in (0, 1)])
    centered = x - sample_means[y]
    sigma = centered.T @ centered / len(x)
    expected_w = np.linalg.solve(sigma, sample_means.T).T
    np.testing.assert_allclose(fit.weight, expected_w, rtol=1e-4)
    expected_b = -0.5 * np.einsum("kd,kd->k", expected_w, sample_means) + np.log(0.5)
    np.testing.assert_allclose(fit.bias, expected_b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(expected_w, np.linalg.solve(cov, means.T).T, atol=0.15)  # and near the truth


def test_full_shrinkage_gives_the_nearest_mean_direction() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8)) + np.repeat(np.eye(3, 8) * 3, 10, axis=0)
    y = np.repeat([0, 1, 2], 10)
    fit = fit_gda(x, y, 3, shrinkage=1.0)
    means = np.stack([x[y == k].mean(0) for k in range(3)])
    ratio = fit.weight / means
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-4)  # W proportional to the class means


def test_ledoit_wolf_matches_its_textbook_form() -> None:
    # delta = ||S - mu I||_F^2 / p, beta = (1/n^2) sum_i ||x_i x_i' - S||_F^2 / p, shrinkage = min(beta, delta) / delta
    rng = np.random.default_rng(2)
    for n, p in ((200, 5), (10, 40)):
        x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p))
        x -= x.mean(0)
        s = x.T @ x / n
        mu = np.trace(s) / p
        delta = np.sum((s - mu * np.eye(p)) ** 2) / p
        beta = sum(np.sum((np.outer(r, r) - s) ** 2) for r in x) / n**2 / p
        assert ledoit_wolf_shrinkage(x) == pytest.approx(min(beta, delta) / delta, rel=1e-9)
    # Far from a scaled identity, a few samples still want much shrinkage and many samples little.
    scales = np.linspace(0.2, 3.0, 40)
    few, many = (rng.normal(size=(n, 40)) * scales for n in (10, 5000))
    assert ledoit_wolf_shrinkage(few - few.mean(0)) > 0.5 > 0.05 > ledoit_wolf_shrinkage(many - many.mean(0))


def test_alpha_and_shrinkage_are_cross_validated() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6)) + np.repeat(np.eye(2, 6) * 4, 20, axis=0)
    y = np.repeat([0, 1], 20)
    useless = np.zeros((40, 2))  # a zero-shot head that knows nothing
    choice = cross_validate(x, y, useless)
    assert choice.alpha > 0 and choice.accuracy > 0.9 and choice.zero_shot_accuracy == 0.5
    assert choice.log_loss < choice.zero_shot_log_loss == pytest.approx(np.log(2))
    # Jointly over shrinkages: the pick is the best of picking within each shrinkage alone.
    wide = rng.normal(size=(24, 60)) * np.linspace(0.1, 1.0, 60)
    wide[12:, 0] += 1.0
    wide_y = np.repeat([0, 1], 12)
    grid = (None, 0.0, 0.5, 0.9)
    joint = cross_validate(wide, wide_y, np.zeros((24, 2)), shrinkages=grid)
    alone = [cross_validate(wide, wide_y, np.zeros((24, 2)), shrinkages=(g,)) for g in grid]
    assert joint.log_loss == pytest.approx(min(c.log_loss for c in alone))
    assert joint.shrinkage == grid[int(np.argmin([c.log_loss for c in alone]))]
    with pytest.raises(UsageError, match="at least 2 shots per class"):
        cross_validate(x[:21], np.r_[np.zeros(20, int), 1], useless[:21])


@pytest.fixture(scope="module")
def faces() -> list[Image.Image]:
    from skimage import data

    lfw = data.lfw_subset()[:36]
    return [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB").resize((96, 96), Image.BICUBIC) for f in lfw]


def _shots(faces: list[Image.Image], seed: int) -> dict[str, list]:
    out = {"bona_fide": list(faces)}
    for species in SPECIES[1:]:
        out[species] = [apply_attack(f, species, seed=seed + i) for i, f in enumerate(faces)]
    return out


def _accuracy(head: Head, bundle, data: dict[str, list]) -> float:
    right = total = 0
    for label, images in data.items():
        probs = head.probabilities(bundle.encode_image(images), bundle.logit_scale)
        right += int((probs.argmax(1) == head.labels.index(label)).sum())
        total += len(images)
    return right / total


def test_adapted_liveness_head_beats_zero_shot_on_held_out_faces(tiny_bundle: Path, faces) -> None:
    bundle = load_bundle(tiny_bundle)
    base = build_liveness_head(bundle)
    result = adapt_head(bundle, _shots(faces[:12], 0), "adapted", base=base)
    head = result.head
    assert head.labels == SPECIES and head.kind == "liveness" and head.positives == ("bona_fide",)
    assert set(result.dropped) == set(base.labels) - set(SPECIES)
    assert result.shots == {s: 12 for s in SPECIES} and 0 < result.shrinkage <= 1 and result.alpha > 0
    held_out = _shots(faces[20:36], 1000)  # other identities, other attack draws
    zero_shot = Head("zs", "liveness", SPECIES, (), bundle.model_id, head.embeddings, positives=head.positives)
    adapted, plain = _accuracy(head, bundle, held_out), _accuracy(zero_shot, bundle, held_out)
    print(f"\nheld-out 3-class accuracy: zero-shot {plain:.2f}, adapted {adapted:.2f}")
    assert adapted > 0.8 > plain + 0.3


def test_adapt_cli_stores_a_head_used_by_liveness_and_classify(tiny_bundle_copy: Path, faces, tmp_path) -> None:
    shots = tmp_path / "shots"
    for label, images in _shots(faces[:8], 0).items():
        (shots / label).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(np.asarray(image)).save(shots / label / f"{i}.png")
    runner = CliRunner()
    assert runner.invoke(cli, ["heads", "add-liveness", str(tiny_bundle_copy)]).exit_code == 0
    args = [
        "adapt",
        str(tiny_bundle_copy),
        str(shots),
        "--name",
        "my_liveness",
        "--base",
        "liveness",
        "--detector",
        "none",
        "--json",
    ]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["labels"] == list(SPECIES) and report["cross_validation"]["folds"] == 5
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "exists: pass --force" in again.output

    bundle = load_bundle(tiny_bundle_copy)
    stored = bundle.load_head("my_liveness")
    assert stored.adapter_weight is not None and stored.adapter_alpha == report["alpha"]
    probe = [faces[30], apply_attack(faces[31], "print", seed=5)]
    det = LivenessDetector(bundle, "my_liveness", detector="none")
    direct = stored.probabilities(bundle.encode_image(probe), bundle.logit_scale)
    np.testing.assert_allclose([r.live_probability for r in det.score_many(probe)], direct[:, 0], atol=1e-6)
    # The same head classifies: ZeroShotClassifier adds the adapter's logits.
    clf = ZeroShotClassifier(bundle, head="my_liveness")
    np.testing.assert_allclose(clf.probabilities(probe), direct, atol=1e-5)


def test_adapt_without_a_base_uses_the_folder_names(tiny_bundle: Path, faces, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    shots = tmp_path / "shots"
    for label, images in _shots(faces[:4], 0).items():
        (shots / label).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(np.asarray(image)).save(shots / label / f"{i}.png")
    result = adapt_head(bundle, read_shots_folder(shots), "plain")
    assert result.head.kind == "zero-shot" and result.head.labels == SPECIES and result.head.templates


def test_adapt_errors(tiny_bundle: Path, faces, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    base = build_liveness_head(bundle)
    with pytest.raises(UsageError, match="shots class 'glare' is not a label of head 'liveness'"):
        adapt_head(bundle, {"bona_fide": faces[:2], "glare": faces[2:4]}, "x", base=base)
    with pytest.raises(UsageError, match="no shots of 'bona_fide'"):
        adapt_head(bundle, {"print": faces[:2], "cutout": faces[2:4]}, "x", base=base)
    with pytest.raises(UsageError, match="at least 2 shots per class"):
        adapt_head(bundle, {"bona_fide": faces[:1], "print": faces[1:2]}, "x", base=base)
    one_shot = adapt_head(bundle, {"bona_fide": faces[:1], "print": faces[1:2]}, "x", base=base, alpha=1.0)
    assert one_shot.alpha == 1.0 and one_shot.choice is None
    with pytest.raises(UsageError, match="2 softmax groups: adapt needs a head with one group"):
        adapt_head(bundle, {"a:good": faces[:2]}, "x", base=_pair(bundle))
    (tmp_path / "only").mkdir()
    with pytest.raises(UsageError, match="expected at least 2"):
        read_shots_folder(tmp_path)


def _pair(bundle) -> Head:
    from edgeclip.runtimes.quality import Attribute

    return build_quality_head(bundle, (Attribute("a", ("good",), ("bad",)), Attribute("b", ("nice",), ("ugly",))))
