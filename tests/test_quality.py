"""The quality wrapper, `edgeclip quality` / `eval quality`, and the opinion-unaware trainer (a tiny model, a few
steps: the loss falls and the ranking of degradation levels improves; the checkpoint exports)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeclip.cli import cli
from edgeclip.data.degradations import degradation_ladder
from edgeclip.errors import ImageError, UsageError
from edgeclip.runtimes import Head, load_bundle
from edgeclip.runtimes.quality import QUALITY_ATTRIBUTES, QualityScorer, build_quality_head, evaluate_csv
from tests.conftest import TINY


def test_scores_are_probabilities_per_attribute(tiny_bundle: Path, photos) -> None:
    bundle = load_bundle(tiny_bundle)
    scorer = QualityScorer(bundle)
    images = list(photos.values())
    per = scorer.attribute_scores(images)
    assert per.shape == (3, len(QUALITY_ATTRIBUTES)) and ((per > 0) & (per < 1)).all()
    assert scorer.attributes == tuple(a.name for a in QUALITY_ATTRIBUTES)
    np.testing.assert_allclose(scorer.scores(images), per[:, 0], atol=1e-6)  # overall = the 'quality' pair
    np.testing.assert_allclose(QualityScorer(bundle, overall="mean").scores(images), per.mean(1), atol=1e-6)
    r = scorer.score(images[0])
    assert r.score == pytest.approx(per[0, 0], abs=1e-6) and list(r.attributes) == list(scorer.attributes)
    # Each pair's score is the softmax over its two poles at the bundle's logit scale.
    head = scorer.head
    emb = bundle.encode_image(images[:1])
    good, bad = head.labels.index("sharpness:good"), head.labels.index("sharpness:bad")
    logits = bundle.logit_scale * emb @ head.embeddings[[good, bad]].T
    expected = 1 / (1 + np.exp(logits[0, 1] - logits[0, 0]))
    assert r.attributes["sharpness"] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(UsageError, match="overall score 'beauty'"):
        QualityScorer(bundle, overall="beauty")


def test_pole_order_is_stored_not_assumed(tiny_bundle: Path, photos) -> None:
    bundle = load_bundle(tiny_bundle)
    head = build_quality_head(bundle)
    swap = np.arange(len(head.labels)).reshape(-1, 2)[:, ::-1].ravel()  # every pair stored bad first
    swapped = Head(
        head.name,
        head.kind,
        tuple(head.labels[i] for i in swap),
        (),
        head.model_id,
        head.embeddings[swap],
        groups=tuple(head.groups[i] for i in swap),
        positives=head.positives,
    )
    images = list(photos.values())
    np.testing.assert_allclose(
        QualityScorer(bundle, swapped).attribute_scores(images),
        QualityScorer(bundle, head).attribute_scores(images),
        atol=1e-6,
    )


def test_stored_quality_head(tiny_bundle_copy: Path, photos) -> None:
    result = CliRunner().invoke(cli, ["heads", "add-quality", str(tiny_bundle_copy)], catch_exceptions=False)
    assert result.exit_code == 0 and "6 attribute pairs" in result.output
    bundle = load_bundle(tiny_bundle_copy)
    assert QualityScorer(bundle).head.name == "quality"
    listed = CliRunner().invoke(cli, ["heads", "list", str(tiny_bundle_copy), "--json"])
    assert {"name": "quality", "kind": "quality"}.items() <= json.loads(listed.output)[0].items()


def _scores_csv(folder: Path, photos, rows: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for level in range(6):
        for name, image in photos.items():
            path = folder / f"{name}_{level}.png"
            Image.fromarray(degradation_ladder(image.resize((96, 96)), "blur")[level]).save(path)
            names.append((path.name, 5 - level))
    csv = folder / "scores.csv"
    lines = ["image,mos", *(f"{n},{s}" for n, s in names)] if rows is None else rows
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_eval_quality_cli_and_csv_errors(tiny_bundle: Path, photos, tmp_path: Path) -> None:
    csv = _scores_csv(tmp_path / "iqa", photos)
    result = CliRunner().invoke(cli, ["eval", "quality", str(tiny_bundle), str(csv), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == 18 and -1 <= report["srcc"] <= 1 and -1 <= report["plcc"] <= 1
    cases = [
        (["image,mos", "astronaut_0.png,5", "astronaut_1.png,abc"], "line 3: score 'abc' is not a number"),
        (["astronaut_0.png,5", "gone.png,4", "coffee_0.png,3"], "line 2: image gone.png does not exist"),
        (["astronaut_0.png"], "line 1: 1 column"),
        (["image,mos", "astronaut_0.png,5"], "1 scored image(s): expected at least 3"),
    ]
    for rows, message in cases:
        csv.write_text("\n".join(rows) + "\n")
        bad = CliRunner().invoke(cli, ["eval", "quality", str(tiny_bundle), str(csv)])
        assert bad.exit_code == 2 and message in bad.output, bad.output


def test_unreadable_images_in_the_csv(tiny_bundle: Path, photos, tmp_path: Path) -> None:
    csv = _scores_csv(tmp_path / "iqa", photos)
    (tmp_path / "iqa" / "broken.png").write_bytes(b"\x89PNG broken")
    csv.write_text(csv.read_text() + "broken.png,1\n")
    scorer = QualityScorer(load_bundle(tiny_bundle))
    with pytest.raises(ImageError, match="line 20: .*broken.png"):
        evaluate_csv(scorer, csv)
    report = evaluate_csv(scorer, csv, skip_bad=True)
    assert report["images"] == 18 and report["skipped"][0]["line"] == 20


def test_quality_cli(tiny_bundle: Path, photo_files: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt.jpg"
    bad.write_text("hello")
    result = CliRunner().invoke(
        cli,
        ["quality", str(tiny_bundle), *map(str, photo_files), str(bad), "--skip-bad", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [("error" in r) for r in rows] == [False, False, False, True]
    assert 0 <= rows[0]["score"] <= 1 and set(rows[0]["attributes"]) == {a.name for a in QUALITY_ATTRIBUTES}
    stop = CliRunner().invoke(cli, ["quality", str(tiny_bundle), str(bad)])
    assert stop.exit_code == 1 and "notes.txt.jpg" in stop.output


@pytest.fixture()
def one_torch_thread():
    """Training on a shared 2-core machine: one thread avoids oversubscription (5x faster here); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_trainer_ranks_levels_better_and_its_checkpoint_exports(tmp_path: Path, photos, one_torch_thread) -> None:
    import torch

    from edgeclip.export import export_bundle
    from edgeclip.metrics.quality import srcc
    from edgeclip.train import QualityTrainConfig, train_quality

    config = QualityTrainConfig(
        TINY,
        random_init=True,
        shapes=24,
        steps=60,
        batch_size=6,
        lr=2e-3,
        warmup=2,
        families=("brightness", "contrast"),
        seed=1,
    )
    with torch.random.fork_rng():
        result = train_quality(config, tmp_path / "q.safetensors", log_every=1)
    losses = [r["loss"] for r in result.history]
    print(
        f"\nloss {np.mean(losses[:5]):.4f} -> {np.mean(losses[-5:]):.4f}, "
        f"probe pair accuracy {result.probe_before:.2f} -> {result.probe_after:.2f}"
    )
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert result.probe_after > max(0.85, result.probe_before)

    exported = export_bundle(TINY, str(result.path), tmp_path / "q.edgeclip")
    scorer = QualityScorer(load_bundle(exported.path))
    photo = photos["coffee"].resize((96, 64))  # a real photo the trainer never saw (it saw shapes only)
    ladder = degradation_ladder(photo, "brightness", seed=0)
    scores = scorer.scores(ladder)
    print("exported bundle, coffee darkened level 0..5:", np.round(scores, 3))
    assert scores[:2].mean() > scores[-2:].mean() + 0.3  # a few steps: the dark end is told apart
    assert srcc(scores, -np.arange(len(ladder))) > 0.8

    with pytest.raises(UsageError, match="--random-init"):
        QualityTrainConfig(TINY, shapes=1)
    with pytest.raises(UsageError, match="no pristine images"):
        QualityTrainConfig(TINY, random_init=True)
    with pytest.raises(UsageError, match="unknown degradation 'fog'"):
        QualityTrainConfig(TINY, random_init=True, shapes=1, families=("fog",))


def test_pooled_ranking_loss_ties_images_to_one_scale() -> None:
    import torch

    from edgeclip.train.quality import QualityTrainConfig, pooled_ranking_loss

    # cosines [B=2 images, 2 crops, 6 levels, 1 attribute, (good, bad)]; score = good - bad falls with the level
    sims = torch.zeros(2, 2, 6, 1, 2)
    sims[..., 0, 0] = torch.linspace(0.5, 0.0, 6)
    assert pooled_ranking_loss(sims, 0, 0.04).item() == 0.0  # same scale, gaps of 0.1 > 2 x margin
    shifted = sims.clone()
    shifted[1, ..., 0] -= 0.3  # image 1 ordered within itself, but its pristine crops score below image 0 at level 3
    assert pooled_ranking_loss(shifted, 0, 0.04).item() > 0.01
    with pytest.raises(UsageError, match="pooled weight"):
        QualityTrainConfig(TINY, random_init=True, shapes=1, pooled_weight=-1.0)
