"""The figures issue 3 asks for: MobileCLIP2-S0 and MobileCLIP-S1 (random weights) exported to CoreML (a script).

    .venv/bin/python -m benchmarks.coreml_export_report --work /tmp/coreml_report [--json report.json]
        [--models MobileCLIP2-S0,MobileCLIP-S1] [--variants fp32,fp16,int8,palettize4]

Each variant is a full `export_bundle(..., target="coreml")` (the same call `edgeclip export -t coreml` makes),
timed, then checked from the saved packages with the functions tests/test_coreml.py asserts with:
the spec's input/output names, shapes and types; the precision of every stored weight; for compressed
variants, every compressed weight that maps one-to-one onto a PyTorch parameter decompressed by coremltools
and compared with it (int8: within half a step of its row's symmetric scale; palettes: the nearest entry);
and the package size against the fp32 export of the same model. Predictions are not run: that needs macOS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

VARIANTS = {
    "fp32": {"precision": "fp32"},
    "fp16": {"precision": "fp16"},
    "int8": {"precision": "fp16", "target_options": {"compress": "int8"}},
    "palettize4": {"precision": "fp16", "target_options": {"compress": "palettize4"}},
    "palettize6": {"precision": "fp16", "target_options": {"compress": "palettize6"}},
    "palettize8": {"precision": "fp16", "target_options": {"compress": "palettize8"}},
}


def spec_checks(bundle: Path, weights: dict, variant: str) -> dict:
    """Everything Linux can check in a CoreML bundle; raises AssertionError on the first failure."""
    from edgeclip.runtimes import load_bundle
    from tests.test_coreml import check_decompressed, dtype_name, large_weights, mil_ops, mlmodel

    manifest = load_bundle(bundle, verify=True).manifest
    precision = VARIANTS[variant]["precision"]
    assert manifest.precision == precision and manifest.target == "coreml"
    out = {}
    for role, enc in manifest.encoders.items():
        spec = mlmodel(bundle, role).get_spec()
        (inp,), (res,) = spec.description.input, spec.description.output
        array = inp.type.multiArrayType
        assert inp.name == enc.inputs[0].name and list(array.shape)[1:] == list(enc.inputs[0].shape[1:])
        assert array.dataType == (array.FLOAT32 if role == "image" else array.INT32)
        assert res.name == "embeddings" and res.type.multiArrayType.dataType == res.type.multiArrayType.FLOAT32
        ops = mil_ops(bundle, role)
        stored = {dtype_name(op.outputs[0]) for op in ops if op.op_type == "const" and op.name.startswith("p_")}
        assert {d for d in stored if d.startswith("fp")} == {precision}, (role, stored)
        row = {"input": f"{inp.name} {list(enc.inputs[0].shape)} {enc.inputs[0].dtype}"}
        if variant not in ("fp32", "fp16"):
            checked = check_decompressed(bundle, role, weights[role], variant)
            row["weights_checked"] = f"{checked / large_weights(weights[role]):.0%}"
        out[role] = row
    return out


def run(models: list[str], variants: list[str], work: Path) -> list[dict]:
    from timm.utils.model import reparameterize_model

    from edgeclip.export import export_bundle
    from edgeclip.models.loading import load_model
    from edgeclip.runtimes.bundle import size_path
    from tests.test_coreml import torch_weights

    rows = []
    for model in models:
        deploy = reparameterize_model(load_model(model, random_init=True).model.eval(), inplace=False)
        weights = torch_weights(deploy)
        fp32_bytes = None
        for variant in variants:
            out = work / f"{model}.{variant}.edgeclip"
            start = time.perf_counter()
            result = export_bundle(
                model, output=out, target="coreml", random_init=True, force=True, **VARIANTS[variant]
            )
            seconds = time.perf_counter() - start
            sizes = {role: size_path(out / enc.file) for role, enc in result.manifest.encoders.items()}
            total = sum(sizes.values())
            fp32_bytes = total if variant == "fp32" else fp32_bytes
            row = {
                "model": model,
                "variant": variant,
                "image_MB": round(sizes["image"] / 1e6, 2),
                "text_MB": round(sizes["text"] / 1e6, 2),
                "vs_fp32": round(fp32_bytes / total, 2) if fp32_bytes else None,
                "convert_s": result.timings["convert"],
                "export_s": round(seconds, 1),
            }
            try:
                row["checks"] = spec_checks(out, weights, variant)
                row["checks_pass"] = True
            except AssertionError as e:
                row["checks"], row["checks_pass"] = f"FAILED: {e}", False
            rows.append(row)
            print(json.dumps(row), flush=True)
            if variant != "fp32":
                shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / f"{model}.fp32.edgeclip", ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| model | variant | image MB | text MB | smaller than fp32 | convert s | export s | spec checks |"
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        checks = "pass" if r["checks_pass"] else r["checks"]
        if r["checks_pass"] and "weights_checked" in r["checks"]["image"]:
            checks += (
                f" (decompressed weights vs PyTorch: image {r['checks']['image']['weights_checked']}, "
                f"text {r['checks']['text']['weights_checked']} of the compressible values)"
            )
        ratio = f"{r['vs_fp32']}x" if r["vs_fp32"] else "-"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['image_MB']} | {r['text_MB']} | {ratio} | "
            f"{r['convert_s']} | {r['export_s']} | {checks} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, export every model x variant, print the table (and write JSON when asked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Scratch folder for the bundles.")
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    parser.add_argument("--models", default="MobileCLIP2-S0,MobileCLIP-S1")
    parser.add_argument("--variants", default="fp32,fp16,int8,palettize4")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if variants[0] != "fp32":
        parser.error("--variants must start with fp32: the size ratios are against it")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = run(args.models.split(","), variants, args.work)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    sys.exit(0 if all(r["checks_pass"] for r in rows) else 1)


if __name__ == "__main__":
    main()
