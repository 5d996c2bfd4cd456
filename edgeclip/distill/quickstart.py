"""The offline quickstart: teacher, reinforcement, distillation, export and zero-shot classification on `shapes`.

Everything is made here, nothing is downloaded: a small teacher (EdgeCLIP-Teacher-CNN-48) learns the shapes
captions, mixed with paraphrases of them, with plain CLIP loss; reinforcement stores its embeddings of K
augmentations per image plus paraphrased captions (a stand-in for a CoCa captioner, supplied as a captions
file), a student with a 64-d embedding (EdgeCLIP-Student-CNN-48) is distilled from the stored embeddings, exported
to an ONNX bundle, and the bundle classifies shapes images. The summary compares teacher and student on the
held-out split.

Both use timm's ``test_resnet`` image tower at 48 px with a 64-wide, 2-layer text tower: at 64 px the ViT configs
(a 4x4 grid of tokens) stay at chance on shape, 32 px halves the cost of a step but loses small shapes (a hexagon is
a circle at 32 px: student shape top-1 0.85 at best, the small triangle of the sample images called a star), and
``test_efficientnet`` as the student learned shape more slowly than ``test_resnet`` from the same stored embeddings
(0.78 against 0.88 after 2000 steps). Measurements: docs/distillation.md, "The quickstart's budget".
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeclip.errors import UsageError

TEACHER = "EdgeCLIP-Teacher-CNN-48"
STUDENT = "EdgeCLIP-Student-CNN-48"
PARAPHRASES = 5  # paraphrases per image: all mixed into the teacher's captions, the first S stored as synthetic
MARKER = ".edgeclip-quickstart"


# Captions that name colour and shape only: with no position, size or background words to match on, CLIP loss
# has to tell same-coloured shapes apart, and learns shape in far fewer steps (docs/distillation.md).
_NAMING = ("a {color} {shape}", "a {shape}", "a picture of a {color} {shape}")


@dataclass(frozen=True)
class QuickstartPlan:
    """How big each stage is."""

    train_samples: int
    eval_samples: int
    teacher_steps: int
    student_steps: int
    batch_size: int
    augmentations: int
    synthetic_captions: int
    teacher_lr: float = 2e-3
    student_lr: float = 2e-3
    seed: int = 0  # both runs' initialisation and batch order: the same plan gives the same figures
    crop_scale: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop area range of the teacher's and stored views
    randaug_ops: int = 1
    randaug_magnitude: int = 3
    paraphrases: tuple[str, ...] = ()  # templates of the captions mixed into the teacher's (default _PARAPHRASES)
    teacher: str = TEACHER  # architectures: their configs fix the image size the whole run trains and exports at
    student: str = STUDENT

    def augment(self):
        """The teacher's and reinforcement's augmentation (mild: captions name colours and positions)."""
        from edgeclip.distill.augment import AugmentConfig

        return AugmentConfig(scale=self.crop_scale, num_ops=self.randaug_ops, magnitude=self.randaug_magnitude)


FULL = QuickstartPlan(
    train_samples=10000, eval_samples=800, teacher_steps=1400, student_steps=1600, batch_size=64, augmentations=1,
    synthetic_captions=3, student_lr=4e-3, crop_scale=(1.0, 1.0), randaug_ops=0, randaug_magnitude=0,
    paraphrases=_NAMING,
)  # fmt: skip
FAST = QuickstartPlan(
    train_samples=48, eval_samples=32, teacher_steps=2, student_steps=2, batch_size=16, augmentations=2,
    synthetic_captions=2,
)  # fmt: skip


@dataclass(frozen=True)
class ModelRow:
    """One line of the summary table."""

    name: str
    architecture: str
    runtime: str
    params_m: float
    size_mb: float
    top1: float
    top1_color: float
    latency_ms: float


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart made and measured."""

    output: Path
    bundle: Path
    rows: tuple[ModelRow, ...]
    predictions: tuple[tuple[str, str, str, float], ...]  # file, true shape, predicted, probability
    timings: dict[str, float] = field(default_factory=dict)
    plan: QuickstartPlan = FULL
    cpu_seconds: float = 0.0  # this process's user + system CPU time over the run

    @property
    def wall_seconds(self) -> float:
        return sum(self.timings.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "bundle": str(self.bundle),
            "rows": [asdict(r) for r in self.rows],
            "predictions": [
                {"file": f, "true": t, "predicted": p, "probability": q} for f, t, p, q in self.predictions
            ],
            "timings": self.timings,
            "wall_seconds": round(self.wall_seconds, 1),
            "cpu_seconds": self.cpu_seconds,
            "plan": asdict(self.plan),
        }


# Paraphrases of a shapes item's attributes: the quickstart's stand-in for a CoCa captioner.
_PARAPHRASES = (
    "a {color} {shape}",
    "a {size} {shape} colored {color}",
    "a {shape} {where}",
    "a {color} {shape} on a {background} background",
    "a picture of a {size} {color} {shape}",
)


def write_paraphrases(train_spec: str, path: Path, count: int, templates: tuple[str, ...] = ()) -> Path:
    """Synthetic captions for every shapes item, as the JSONL `edgeclip reinforce --captions-file` reads."""
    from edgeclip.data.shapes import POSITION_PHRASES
    from edgeclip.distill.sources import open_shapes

    templates = templates or _PARAPHRASES
    source = open_shapes(train_spec)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(source)):
            sample = source.dataset[i]
            a = {**sample.attributes, "where": POSITION_PHRASES[sample.attributes["position"]]}
            captions = [p.format(**a) for p in templates[:count]]
            f.write(json.dumps({"uid": source.record(i).uid, "captions": captions}) + "\n")
    return path


def _prepare(output: Path, force: bool) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not force:
            raise UsageError(f"{output} exists: pass --force to replace an earlier quickstart run, or another --output")
        if not (output / MARKER).is_file():
            raise UsageError(f"{output} is not a quickstart folder: refusing to replace it, even with --force")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("made by edgeclip quickstart\n", encoding="utf-8")


def _torch_latency_ms(model, image_size: tuple[int, int], repeats: int = 20) -> float:
    import torch

    x = torch.zeros(1, 3, *image_size)
    model.eval()
    times = []
    with torch.no_grad():
        model.encode_image(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model.encode_image(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _bundle_latency_ms(bundle, image, repeats: int = 20) -> float:
    from edgeclip.runtimes.preprocess import preprocess

    pixels = preprocess([image], bundle.manifest.preprocess)
    name = bundle.manifest.encoders["image"].inputs[0].name
    session = bundle.encoder("image")
    session.run({name: pixels})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run({name: pixels})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _final_color(result) -> float:
    """The colour top-1 a training run measured at its last step (NaN where it measured none)."""
    color = [a for s, n, a in result.extra_evals if n == "color" and s == result.steps]
    return color[-1] if color else float("nan")


def _torch_row(name: str, arch: str, result) -> ModelRow:
    """A row for a trained PyTorch model, with the accuracies its training run measured at its last step."""
    from edgeclip.models.loading import load_model
    from edgeclip.models.preprocess import preprocess_spec_for

    weights = result.model_path
    loaded = load_model(arch, str(weights))
    spec, _ = preprocess_spec_for(arch, str(weights))
    color = _final_color(result)
    params = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    return ModelRow(name, arch, "pytorch fp32", params, weights.stat().st_size / 1e6, result.final_top1,
                    color, _torch_latency_ms(loaded.model, spec.image_size))  # fmt: skip


def quickstart(
    output: str | Path = "quickstart-run",
    *,
    fast: bool = False,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
    plan: QuickstartPlan | None = None,
) -> QuickstartResult:
    """Teacher → reinforce → distill → export → classify on shapes, offline; returns the summary.

    `plan` replaces the default (FULL, or FAST with `fast`): smaller ones serve tests and experiments.
    """
    from edgeclip.distill.config import DistillConfig
    from edgeclip.distill.evaluate import open_eval_set
    from edgeclip.distill.loop import train
    from edgeclip.distill.shards import reinforce
    from edgeclip.export import export_bundle
    from edgeclip.metrics.zeroshot import zero_shot_top1
    from edgeclip.runtimes import ZeroShotClassifier, load_bundle

    say = on_step or (lambda _m: None)
    plan = plan or (FAST if fast else FULL)
    output = Path(output)
    _prepare(output, force)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    cpu_start = time.process_time()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    train_spec = f"shapes:train:{plan.train_samples}"
    eval_spec = f"shapes:eval:{plan.eval_samples}"
    augment = plan.augment()

    captions = write_paraphrases(train_spec, output / "synthetic_captions.jsonl",
                                 max(PARAPHRASES, plan.synthetic_captions), plan.paraphrases)  # fmt: skip
    say(f"[1/6] training the teacher {plan.teacher} on {train_spec} with plain CLIP loss ({plan.teacher_steps} steps)")
    teacher = train(DistillConfig(
        model=plan.teacher, data=train_spec, output=str(output / "teacher"), loss="clip", steps=plan.teacher_steps,
        batch_size=plan.batch_size, lr=plan.teacher_lr, warmup=max(1, plan.teacher_steps // 10), augment=augment,
        captions=str(captions), eval=eval_spec, log_every=50, seed=plan.seed,
    ))  # fmt: skip
    lap("teacher")
    say(f"      teacher zero-shot top-1: shape {teacher.final_top1:.3f}, colour {_final_color(teacher):.3f}")

    say(f"[2/6] reinforcing {train_spec}: K={plan.augmentations} views, S={plan.synthetic_captions} captions")
    reinforced = reinforce(
        train_spec, [f"{plan.teacher}:{teacher.model_path}"], output / "shards", augmentations=plan.augmentations,
        synthetic_captions=plan.synthetic_captions, captions_file=captions, samples_per_shard=1000, augment=augment,
        batch_size=64,
    )  # fmt: skip
    lap("reinforce")
    say(f"      {reinforced.images_per_second:.0f} images/s, {reinforced.bytes_per_sample / 1024:.1f} KiB per sample")

    say(f"[3/6] distilling the student {plan.student} from the stored embeddings ({plan.student_steps} steps)")
    student = train(DistillConfig(
        model=plan.student, data=str(output / "shards"), output=str(output / "student"), loss="reinforced", lam=1.0,
        steps=plan.student_steps, batch_size=plan.batch_size, lr=plan.student_lr,
        warmup=max(1, plan.student_steps // 10), eval=eval_spec, log_every=50, seed=plan.seed,
    ))  # fmt: skip
    lap("distill")
    say(f"      student zero-shot top-1: shape {student.final_top1:.3f}, colour {_final_color(student):.3f}")

    say("[4/6] exporting the student to an ONNX bundle")
    bundle_path = output / "student.edgeclip"
    export_bundle(plan.student, str(student.model_path), bundle_path, target="onnx")
    lap("export")

    say("[5/6] classifying shapes images with the bundle")
    bundle = load_bundle(bundle_path)
    eval_set = open_eval_set(eval_spec)
    classifier = ZeroShotClassifier(bundle, labels=list(eval_set.labels), templates=list(eval_set.templates))
    bundle.save_head(classifier.head)
    logits = classifier.logits(eval_set.images, batch_size=128)
    bundle_top1 = zero_shot_top1(logits, eval_set.targets)
    colors = eval_set.also[0]
    color_logits = ZeroShotClassifier(bundle, labels=list(colors.labels), templates=list(colors.templates)).logits(
        colors.images, batch_size=128
    )
    bundle_color = zero_shot_top1(color_logits, colors.targets)
    samples = output / "samples"
    samples.mkdir(exist_ok=True)
    from edgeclip.data.images import load_image

    files = []
    for i in range(4):
        path = samples / f"{i}-{eval_set.labels[eval_set.targets[i]]}.png"
        load_image(eval_set.images[i]).save(path)  # shapes images: uint8 RGB arrays
        files.append(path)
    predictions = tuple(
        (p.source, eval_set.labels[eval_set.targets[i]], p.ranked[0][0], p.ranked[0][1])
        for i, p in enumerate(classifier.predict_many(files, top_k=1))
    )
    lap("classify")

    say("[6/6] measuring sizes and latency")
    rows = (
        _torch_row("teacher", plan.teacher, teacher),
        _torch_row("student", plan.student, student),
        ModelRow(
            "student bundle", plan.student, "onnxruntime fp32",
            rows_params(bundle_path), sum(f.stat().st_size for f in bundle_path.rglob("*") if f.is_file()) / 1e6,
            bundle_top1, bundle_color, _bundle_latency_ms(bundle, eval_set.images[0]),
        ),
    )  # fmt: skip
    lap("measure")
    result = QuickstartResult(output, bundle_path, rows, predictions, timings, plan,
                              round(time.process_time() - cpu_start, 1))  # fmt: skip
    (output / "summary.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result


def rows_params(bundle_path: Path) -> float:
    """Parameters (millions) in the bundle's encoder files, counted from their ONNX initializers."""
    import numpy as np
    import onnx

    total = 0
    for file in bundle_path.glob("*.onnx"):
        model = onnx.load(str(file), load_external_data=False)
        total += sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return total / 1e6


def format_summary(result: QuickstartResult) -> str:
    """The table the quickstart prints, ending with the figures a newcomer looks for."""
    plan = result.plan
    lines = [
        f"quickstart: {result.output}  (wall time {result.wall_seconds:.0f} s: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items())
        + f"; CPU time {result.cpu_seconds:.0f} s)",
        "",
        f"{'model':<16} {'architecture':<20} {'runtime':<17} {'params':>8} {'size':>9} {'shape':>6} {'colour':>6} "
        f"{'latency':>9}",
    ]
    for r in result.rows:
        lines.append(
            f"{r.name:<16} {r.architecture:<20} {r.runtime:<17} {r.params_m:>7.2f}M {r.size_mb:>7.1f}MB "
            f"{r.top1:>6.3f} {r.top1_color:>6.3f} {r.latency_ms:>7.2f}ms"
        )
    lines.append("")
    lines.append(
        f"shape / colour: zero-shot top-1 on {plan.eval_samples} held-out shapes:eval images, never trained on "
        f"(8 shapes, 'a photo of a {{}}'; 8 colours, 'a photo of a {{}} shape'; chance 0.125); trained on "
        f"{plan.train_samples} shapes:train images, seed {plan.seed}"
    )
    lines.append("latency: median over 20 runs, one image at the model's input size")
    right = sum(truth == predicted for _, truth, predicted, _ in result.predictions)
    lines.append(f"the exported bundle classified {right} of {len(result.predictions)} sample images right:")
    for file, truth, predicted, p in result.predictions:
        mark = "ok " if truth == predicted else "no "
        lines.append(f"  {mark} {Path(file).name:<18} truth {truth:<9} predicted {predicted} ({p:.2f})")
    rows = {r.name: r for r in result.rows}
    lines.append("")
    for name in ("teacher", "student"):
        if name in rows:
            r = rows[name]
            lines.append(f"{name:<8} shape top-1 {r.top1:.3f}  colour top-1 {r.top1_color:.3f}  ({r.architecture})")
    lines.append(f"wall time {result.wall_seconds:.0f} s, CPU time {result.cpu_seconds:.0f} s")
    lines.append(
        f"bundle: {result.bundle}  (classify with it: edgeclip classify {result.bundle} IMAGE --head zero-shot)"
    )
    return "\n".join(lines)
