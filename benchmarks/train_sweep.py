"""Which default-architecture recipe reaches the benchmark's accuracy target on an ImageFolder?

Trains each candidate (architecture, augmentation, epochs) from the same seed with RepInt's own
training loop and prints train/test accuracy and time as JSON lines. Used to choose the
cats-vs-dogs recipe of ``examples/cats_vs_dogs.yaml`` (see docs/benchmarks.md); runs on the CPU or,
much faster, on a GPU.

    python benchmarks/train_sweep.py ROOT [--size 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from repint.data import ImageFolderSource
from repint.model import Classifier
from repint.nets import build_model, resolve_device, train_classifier

CANDIDATES = [
    {"architecture": "vgg-small", "augment": False, "epochs": 30},
    {"architecture": "vgg-small", "augment": True, "epochs": 30},
    {"architecture": "vgg-medium", "augment": True, "epochs": 30},
    {"architecture": "vgg-large", "augment": True, "epochs": 30},
    {"architecture": "vgg-medium", "augment": True, "epochs": 60},
    {"architecture": "vgg-large", "augment": True, "epochs": 60},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="folder with train/ and test/ ImageFolders")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="2 epochs per candidate (a smoke test)")
    args = ap.parse_args()
    train = ImageFolderSource(root=f"{args.root}/train", image_size=args.size)
    test = ImageFolderSource(root=f"{args.root}/test", image_size=args.size, classes=train.class_names)
    xtr, xte = train.load(np.arange(len(train))), test.load(np.arange(len(test)))
    dev = resolve_device("auto")
    for cand in CANDIDATES:
        epochs = 2 if args.quick else cand["epochs"]
        torch.manual_seed(0)
        model = Classifier(build_model(cand["architecture"], 2, args.size), (0.5,) * 3, (0.25,) * 3)
        res = train_classifier(model, xtr, train.labels, epochs=epochs, batch_size=64, lr=2e-3, seed=0,
                               device=str(dev), augment=cand["augment"])
        with torch.no_grad():
            model.to(dev)
            pred = torch.cat([model(torch.from_numpy(xte[i:i + 512]).to(dev)).argmax(1).cpu()
                              for i in range(0, len(xte), 512)]).numpy()
            model.cpu()
        t = time.perf_counter()
        with torch.no_grad():
            model(torch.from_numpy(xtr[:256]))
        print(json.dumps({**cand, "epochs": epochs, "device": str(dev), "train_accuracy": round(res.train_accuracy, 4),
                          "test_accuracy": round(float((pred == test.labels).mean()), 4),
                          "train_seconds": round(res.seconds, 1),
                          "cpu_forward_ms_per_image": round(1000 * (time.perf_counter() - t) / 256, 3)}), flush=True)


if __name__ == "__main__":
    main()
