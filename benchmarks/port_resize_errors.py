"""How far common resizers land from a bundle's golden resize: the figures behind check-port's resize tolerance.

For each golden image of a bundle, the mean |port - golden| (0..255 levels) of: Pillow with the manifest's filter
(what a faithful port computes), bilinear sampling without antialiasing (many hand-written and GPU resizers),
Pillow's Lanczos and Pillow's other antialiased filter. Same size arithmetic and centre crop for all, so only the
filter differs. A script, not a test (docs/ports.md).

    python -m benchmarks.port_resize_errors BUNDLE [BUNDLE ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.golden import load_golden


def naive_bilinear(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear sampling at pixel centres, no antialiasing."""
    a = rgb.astype(np.float64)
    h, w = a.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


def pillow(filter: Image.Resampling) -> Callable[[np.ndarray, int, int], np.ndarray]:
    return lambda rgb, h, w: np.asarray(Image.fromarray(rgb).resize((w, h), filter))


FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resizers(interpolation: str) -> dict[str, Callable[[np.ndarray, int, int], np.ndarray]]:
    """The faithful resize (the manifest's filter, antialiased as Pillow does) and three ways ports go wrong."""
    other = "bilinear" if interpolation == "bicubic" else "bicubic"
    return {
        f"pillow {interpolation} (faithful)": pillow(FILTERS[interpolation]),
        "bilinear, no antialiasing": naive_bilinear,
        "pillow lanczos": pillow(Image.Resampling.LANCZOS),
        f"pillow {other} (antialiased)": pillow(FILTERS[other]),
    }


def crop_resize(rgb: np.ndarray, size: int, resize: Callable[[np.ndarray, int, int], np.ndarray]) -> np.ndarray:
    """Short side to `size` (long side truncated, as torchvision does), then a centre crop."""
    h, w = rgb.shape[:2]
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    out = resize(rgb, new_h, new_w)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return out[top : top + size, left : left + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.bundles:
        bundle = load_bundle(path)
        golden = load_golden(bundle.path, bundle.manifest)
        if golden is None:
            print(f"{path}: no golden files")
            continue
        size = bundle.manifest.preprocess.image_size[0]
        want = golden.array("resize").astype(np.float64)
        interpolation = bundle.manifest.preprocess.interpolation
        print(
            f"{bundle.manifest.source.architecture} ({size}x{size} {interpolation}), "
            f"golden {golden.size_bytes() / 1e6:.2f} MB"
        )
        for name, resize in resizers(interpolation).items():
            errors = [
                np.abs(crop_resize(golden.array(f"decode.{i}"), size, resize).astype(np.float64) - want[i]).mean()
                for i in range(len(golden.images))
            ]
            print(f"  {name:<30} " + "  ".join(f"{e:6.2f}" for e in errors))
        print("  images: " + "; ".join(item["source"] for item in golden.images))


if __name__ == "__main__":
    main()
