"""Write the images of a store's split as PNG files in class folders, e.g. the embedded digits' unseen
images after `repint demo`, to try `repint explain` on a folder:

    python examples/export_images.py runs/demo/store.zarr runs/digits-unseen          # --split reference

Grey images are written as 16-bit PNGs (steps of 1/65535, which RepInt decodes back to the same floats to
within 1e-5), colour images as 8-bit RGB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from repint.data import source_from_spec
from repint.storage import FeatureStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("out")
    p.add_argument("--split", default="unseen", choices=("reference", "unseen"))
    args = p.parse_args()
    attrs = FeatureStore(args.store, mode="r").attrs
    src = source_from_spec(dict(attrs[f"data_{args.split}"]))
    names = src.class_names
    out = Path(args.out)
    for i in range(0, len(src), 256):
        idx = np.arange(i, min(i + 256, len(src)))
        for j, image in zip(idx, src.load(idx), strict=True):
            label = int(src.labels[j]) if len(src.labels) else -1
            folder = out / (names[label] if 0 <= label < len(names) else "unlabelled")
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{Path(src.ids[j]).stem.replace('/', '_')}-{j:05d}.png"
            if image.shape[0] == 1 or np.allclose(image, image[:1]):
                Image.fromarray(np.round(image[0] * 65535).astype(np.uint16)).save(folder / name)
            else:
                Image.fromarray(np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / name)
    print(f"{len(src)} {args.split} images written to {out}")


if __name__ == "__main__":
    main()
