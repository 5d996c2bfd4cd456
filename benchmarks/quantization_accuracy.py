"""Accuracy of fp16 and int8 ONNX bundles on a shapes-trained CLIP, and calibration set build time (a script).

Trains a small CLIP whose image tower is MobileCLIP2's FastViT-MCi0 (the conv + attention encoder the edgeclip
int8 recipe was tuned on) at 64x64 with a 3-layer text tower, on the built-in shapes dataset with plain CLIP
loss (edgeclip.distill.loop), then exports it to ONNX fp32, fp16 and int8 (the edgeclip recipe, calibrated on
256 shapes *train* images) and reports, on the shapes *eval* split (never used for training or calibration):
zero-shot top-1 on shape (prompt "a photo of a {shape}") and on colour ("a photo of a {colour} shape"; the shape
label is the hard one: students trained here on this budget stay near chance on it, colour they learn), and
mean / 1st-percentile cosine of image and text embeddings against the fp32 bundle. Also times building a
256-image calibration set at MobileCLIP2-S0's 256x256.

    python -m benchmarks.quantization_accuracy [--steps 600] [--eval 800] [--rows fp32,fp16,int8] [--json F]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ARCH = "EdgeCLIP-MCi0-Shapes"
CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {
        "timm_model_name": "fastvit_mci0",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": None,
        "timm_drop": 0.0,
        "timm_drop_path": 0.0,
        "image_size": 64,
    },
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
    "custom_text": True,
}


def register_architecture() -> None:
    """Make the script's small MCi0 CLIP known to open_clip (in this process only)."""
    import open_clip

    from edgeclip.models.loading import register_edgeclip_configs

    register_edgeclip_configs()
    folder = Path(tempfile.mkdtemp(prefix="edgeclip-arch-"))
    (folder / f"{ARCH}.json").write_text(json.dumps(CONFIG))
    open_clip.add_model_config(folder)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a.astype(np.float64) * b).sum(-1)


def calibration_build_time(tmp: Path) -> dict[str, float]:
    """Seconds to build a 256-image calibration set at 256x256 (MobileCLIP2-S0's spec) from 320 PNG files."""
    from edgeclip.calibration import build_calibration_set
    from edgeclip.data.shapes import ShapesDataset, write_image_folder
    from edgeclip.runtimes.preprocess import PreprocessSpec

    folder = tmp / "calib320"
    if not folder.exists():
        write_image_folder(ShapesDataset("train", size=320, seed=11), folder, 320)
    spec = PreprocessSpec((256, 256), "shortest", "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    out = {}
    for strategy in ("random", "diverse"):
        start = time.perf_counter()
        calib, _ = build_calibration_set(folder, spec, count=256, strategy=strategy)
        calib.save(tmp / f"calib-{strategy}.npz")
        out[strategy] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgeclip-quant-acc")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-calibration-timing", action="store_true")
    parser.add_argument(
        "--rows", default="fp32,fp16,int8,int8-static-text,int8-dynamic", help="bundles to compare (fp32 always)"
    )
    args = parser.parse_args()
    args.rows = {"fp32", *args.rows.split(",")}
    warnings.filterwarnings("ignore")

    from edgeclip.data.shapes import CLASS_PROMPT, SHAPES, ShapesDataset, write_image_folder
    from edgeclip.distill import DistillConfig, train
    from edgeclip.export import export_bundle
    from edgeclip.runtimes import load_bundle
    from edgeclip.runtimes.preprocess import preprocess

    register_architecture()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {
        "architecture": ARCH,
        "config": CONFIG,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
    }

    if not args.skip_calibration_timing:
        results["calibration_build_seconds_256"] = calibration_build_time(args.out)
        print("calibration set build, 256 images at 256x256:", results["calibration_build_seconds_256"], flush=True)

    model_dir = args.out / "model"
    weights = model_dir / "model.safetensors"
    if not weights.exists():
        shutil.rmtree(model_dir, ignore_errors=True)
        start = time.perf_counter()
        trained = train(DistillConfig(
            model=ARCH, data="shapes:train:4000", output=str(model_dir), loss="clip", steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, warmup=max(1, args.steps // 10), eval=f"shapes:eval:{args.eval}",
            log_every=100,
        ))  # fmt: skip
        weights = Path(trained.model_path)
        print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f}s: torch top-1 {trained.final_top1:.3f}")
        results["torch_top1"] = trained.final_top1

    calib_folder = args.out / "calib-train"
    if not calib_folder.exists():
        write_image_folder(ShapesDataset("train", size=64, seed=7), calib_folder, 320)
    bundles = {}
    for name, precision, options in (
        ("fp32", "fp32", {}),
        ("fp16", "fp16", {}),
        ("int8", "int8", {"calibration": [calib_folder]}),
        ("int8-static-text", "int8", {"calibration": [calib_folder], "text_int8": "static"}),
        ("int8-dynamic", "int8", {"dynamic": True}),
    ):
        if name not in args.rows:
            continue
        path = args.out / f"{name}.edgeclip"
        result = export_bundle(ARCH, str(weights), path, precision=precision, target_options=options, force=True)
        bundles[name] = load_bundle(path)
        if result.manifest.calibration:
            results[f"{name}_gate"] = result.manifest.calibration.get("gate")

    eval_set = ShapesDataset("eval", size=64, length=args.eval, seed=0)
    images = [eval_set[i].image for i in range(len(eval_set))]
    labels = np.array([eval_set[i].label for i in range(len(eval_set))])
    color_labels = np.array([eval_set[i].color_label for i in range(len(eval_set))])
    color_prompts = [f"a photo of a {c} shape" for c in eval_set.colors]
    captions = [eval_set[i].caption for i in range(min(200, len(eval_set)))]
    prompts = [CLASS_PROMPT.format(s) for s in SHAPES]
    spec = bundles["fp32"].manifest.preprocess
    pixels = preprocess(images, spec)
    emb = {}
    for name, bundle in bundles.items():
        img = np.concatenate(
            [bundle.encoder("image").run({"pixels": pixels[i : i + 64]})[0] for i in range(0, len(pixels), 64)]
        )
        cls = bundle.encode_text(prompts)
        txt = bundle.encode_text(captions)
        emb[name] = (img, cls, txt, bundle.encode_text(color_prompts))
    rows = []
    for name, (img, cls, txt, col) in emb.items():
        ref_img, _ref_cls, ref_txt, _ref_col = emb["fp32"]
        top1 = float(((img @ cls.T).argmax(-1) == labels).mean())
        color_top1 = float(((img @ col.T).argmax(-1) == color_labels).mean())
        ci, ct = cosine(ref_img, img), cosine(ref_txt, txt)
        rows.append(
            {
                "bundle": name,
                "top1": top1,
                "color_top1": color_top1,
                "image_mean_cos": float(ci.mean()),
                "image_p1_cos": float(np.percentile(ci, 1)),
                "text_mean_cos": float(ct.mean()),
                "text_p1_cos": float(np.percentile(ct, 1)),
            }
        )
    results["rows"] = rows
    print(f"\nshapes eval split ({len(images)} images, zero-shot over {len(SHAPES)} shapes), cosine vs the fp32 bundle")
    print(f"{'bundle':<18}{'shape':>8}{'colour':>8}{'img mean':>10}{'img p1':>9}{'txt mean':>10}{'txt p1':>9}")
    for r in rows:
        print(
            f"{r['bundle']:<18}{r['top1'] * 100:7.2f}%{r['color_top1'] * 100:7.2f}%"
            f"{r['image_mean_cos']:10.5f}{r['image_p1_cos']:9.5f}{r['text_mean_cos']:10.5f}{r['text_p1_cos']:9.5f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
