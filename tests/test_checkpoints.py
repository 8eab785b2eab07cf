"""Checkpoints as people save them (nested, DataParallel/compile/Lightning prefixes), torchvision's
pretrained weights from a pre-placed torch hub cache, single-channel models, `layer: auto` and
`repint layers` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from repint.checkpoints import CheckpointFormat, load_checkpoint, pretrained_weights
from repint.nets import VGGNet


def _net(seed: int = 0) -> VGGNet:
    torch.manual_seed(seed)
    return VGGNet(num_classes=3, widths=(4,), image_size=8, hidden=(8, 4))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("nested", [None, "state_dict", "model", "model_state_dict", "net", "weights"])
@pytest.mark.parametrize("prefixes", [(), ("module.",), ("_orig_mod.",), ("model.",), ("_orig_mod.", "module.")])
def test_checkpoint_formats_people_save(tmp_path, nested, prefixes):
    src = _net(1)
    state = src.state_dict()
    for p in reversed(prefixes):  # the outermost wrapper's prefix comes first in the key
        state = {p + k: v for k, v in state.items()}
    obj = {nested: state, "best_prec1": 91.2, "epoch": 30} if nested else state
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    dst = _net(2)
    fmt = load_checkpoint(dst, path)
    assert _same(src, dst)
    assert fmt == CheckpointFormat(nested, tuple(prefixes))
    assert fmt.plain == (nested is None and not prefixes)


def test_averaged_models_old_batch_norm_files_and_lightning_net_prefixes(tmp_path):
    src = _net(1)
    ema = {"module." + k: v for k, v in src.state_dict().items()} | {"n_averaged": torch.tensor(7)}
    torch.save({"model_ema": 1, "state_dict": ema}, tmp_path / "ema.pt")  # torch.optim.swa_utils.AveragedModel
    dst = _net(2)
    fmt = load_checkpoint(dst, tmp_path / "ema.pt")
    assert fmt == CheckpointFormat("state_dict", ("module.",), ("n_averaged",)) and _same(src, dst)
    assert fmt.describe() == ("the state dict under 'state_dict' with the key prefix 'module.' removed and the "
                              "wrapper's 'n_averaged' left out")
    old = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}  # before 0.4.1
    torch.save({"net." + k: v for k, v in old.items()}, tmp_path / "old.pt")  # a Lightning module's self.net
    dst = _net(3)
    assert load_checkpoint(dst, tmp_path / "old.pt") == CheckpointFormat(None, ("net.",))
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in old.items())


def test_a_prefix_is_stripped_only_when_it_makes_every_key_match(tmp_path):
    class Wrapper(nn.Module):  # the architecture's own keys start with "model."
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(2, 2)

    src = Wrapper()
    torch.save({"state_dict": src.state_dict()}, tmp_path / "a.pt")
    dst = Wrapper()
    assert load_checkpoint(dst, tmp_path / "a.pt") == CheckpointFormat("state_dict", ())
    assert _same(src, dst)


def test_two_different_matching_state_dicts_are_ambiguous(tmp_path):
    torch.save({"model": _net(1).state_dict(), "state_dict": _net(2).state_dict()}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match=r"is ambiguous: the state dict under 'state_dict' and the state dict "
                                         r"under 'model' all match"):
        load_checkpoint(_net(), tmp_path / "two.pt")
    same = _net(1).state_dict()  # the same weights twice (EMA copies saved equal, say): fine
    torch.save({"model": same, "state_dict": same}, tmp_path / "same.pt")
    load_checkpoint(_net(), tmp_path / "same.pt")


def test_nothing_matches_lists_what_was_tried(tmp_path):
    state = {"module.backbone." + k: v for k, v in _net().state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "c.pt")
    with pytest.raises(ValueError) as err:
        load_checkpoint(_net(), tmp_path / "c.pt")
    msg = str(err.value)
    assert "does not match the architecture: missing keys ['classifier.1.bias'" in msg
    assert "Tried the state dict under 'state_dict'; also the state dict under 'state_dict' with the key prefix " \
           "'module.' removed." in msg


# ----------------------------------------------------------------------------- torchvision's weights
def test_pretrained_weights_load_from_a_pre_placed_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = pretrained_weights("resnet18", "DEFAULT")
    assert str(weights) == "ResNet18_Weights.IMAGENET1K_V1"
    assert pretrained_weights("resnet18", "IMAGENET1K_V1") is weights
    assert pretrained_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1") is weights
    torch.manual_seed(3)
    placed = torchvision.models.resnet18(num_classes=1000)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(placed.state_dict(), cache / Path(weights.url).name)  # the file name torch hub expects
    from repint.nets import load_network

    net, loading = load_network({"architecture": "resnet18", "num_classes": 1000, "image_size": 64,
                                 "mean": [0.5] * 3, "weights": "DEFAULT"})
    assert _same(net, placed)
    assert loading == {"weights": "ResNet18_Weights.IMAGENET1K_V1", "weights_file": "resnet18-f37072fd.pth"}

    from repint.config import Config
    from repint.flows.spec import build_spec

    cfg = Config.model_validate({"data": {"kind": "digits", "limit": 60, "image_size": 64},
                                 "model": {"architecture": "resnet18", "weights": "DEFAULT", "layer": "layer4.0"}})
    spec = build_spec(cfg, tmp_path / "out")
    assert spec.model["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and spec.model["num_classes"] == 1000
    assert spec.model["checkpoint"] is None and len(spec.model["checkpoint_sha256"]) == 16
    assert spec.model["mean"] == pytest.approx([0.485, 0.456, 0.406])  # the weights' statistics by default
    cfg.data.mean = (0.5,)
    assert build_spec(cfg, tmp_path / "out").model["mean"] == [0.5] * 3  # unless the config sets them


def test_pretrained_weights_without_network_or_cache_say_how_to_pre_download(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: the download fails at once, offline
    # urlopen caches its opener (and the proxies it read) for the process: give it back afterwards, or every
    # later urlopen in this test session (the servers' health checks) would go through the closed port
    monkeypatch.setattr(urllib.request, "_opener", None)
    from repint.nets import load_network

    with pytest.raises(ValueError) as err:
        load_network({"architecture": "resnet18", "num_classes": 1000, "image_size": 64, "mean": [0.5] * 3,
                      "weights": "DEFAULT"})
    msg = str(err.value)
    assert "resnet18-f37072fd.pth is not in the torch hub cache" in msg and "\n" not in msg
    assert "torchvision.models.get_weight('ResNet18_Weights.IMAGENET1K_V1').get_state_dict()" in msg
    with pytest.raises(ValueError, match="not a weight of resnet18: use DEFAULT or one of IMAGENET1K_V1"):
        pretrained_weights("resnet18", "IMAGENET9K")
    with pytest.raises(ValueError, match="not a torchvision architecture with pretrained weights"):
        pretrained_weights("vgg-small", "DEFAULT")


# ------------------------------------------------------- a single-channel model, a wrapped checkpoint, auto
def _grey_model_module(tmp_path: Path) -> str:
    """A user's MNIST-style module (1 input channel, functional ReLUs), importable as greynet:net."""
    (tmp_path / "greynet.py").write_text(
        "import torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes):\n"
        "        super().__init__()\n"
        "        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)\n"
        "        self.fc1, self.fc2 = nn.Linear(16 * 8 * 8, 32), nn.Linear(32, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        x = F.max_pool2d(F.relu(self.conv1(x)), 2)\n"
        "        x = F.max_pool2d(F.relu(self.conv2(x)), 2)\n"
        "        return self.fc2(F.relu(self.fc1(x.flatten(1))))\n\n\n"
        "def net(num_classes=10):\n    return Net(num_classes)\n")
    return "greynet:net"


def test_single_channel_model_wrapped_checkpoint_and_auto_layer_from_the_config(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = _grey_model_module(tmp_path)
    import greynet

    from repint.config import load_config
    from repint.data import DigitsSource
    from repint.flows.spec import build_spec
    from repint.model import Classifier
    from repint.nets import train_classifier

    grey = DigitsSource(split="reference", limit=300, channels=1)
    assert grey.load(np.arange(2)).shape == (2, 1, 32, 32)
    torch.manual_seed(0)
    net = greynet.net(10)
    train_classifier(Classifier(net, (0.5,), (0.25,)), grey.load(np.arange(len(grey))), grey.labels, epochs=2)
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}, "best_prec1": 0.5},
               tmp_path / "dp.pth")  # saved from nn.DataParallel, as people do
    (tmp_path / "grey.yaml").write_text(
        f"data: {{kind: digits, limit: 300, mean: [0.5], std: [0.25]}}\n"
        f"model: {{architecture: '{arch}', checkpoint: dp.pth, layer: auto}}\n")
    spec = build_spec(load_config(tmp_path / "grey.yaml"), tmp_path / "out")
    assert spec.reference.get("channels") == 1 and spec.model["mean"] == [0.5]  # inferred from conv1
    assert spec.model["layer"] == "relu_1" and spec.model["layer_choice"] == "auto"  # conv2's F.relu, before the pool
    assert spec.model["checkpoint_format"]["description"] == \
        "the state dict under 'state_dict' with the key prefix 'module.' removed"

    out = subprocess.run([sys.executable, "-m", "repint.app.cli", "layers", str(tmp_path / "grey.yaml"), "--json"],
                         capture_output=True, text=True, env={**__import__("os").environ,
                                                              "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["recommended"] == "relu_1" and report["images"] == 8
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv2"]["shape"] == [16, 16, 16] and rows["fc1"]["affine"] is False
    assert rows["fc2"]["affine"] is True or rows["relu_2"]["affine"] is True


def test_channel_and_normalisation_mismatches_are_one_line_errors(tmp_path):
    from repint.config import Config, ConfigError, load_config
    from repint.data import ArraySource
    from repint.flows.spec import normalisation
    from repint.nets import build_model

    cfg = Config.model_validate({"data": {"mean": [0.5, 0.4, 0.3]}})
    assert normalisation(cfg, 3) == ([0.5, 0.4, 0.3], [0.25, 0.25, 0.25])
    with pytest.raises(ValueError, match="data.mean has 3 values but the model takes 1-channel images"):
        normalisation(cfg, 1)
    assert normalisation(Config(), 1) == ([0.5], [0.25])  # three equal values serve one channel
    assert normalisation(Config.model_validate({"data": {"mean": [0.1]}}), 3)[0] == [0.1, 0.1, 0.1]
    (tmp_path / "c.yaml").write_text("data: {mean: [0.5, 0.5]}\n")
    with pytest.raises(ConfigError, match=r"data\.mean: Value error, give 1 value \(every channel\) or 3"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="torchvision's resnet18 takes 3-channel images, not 1"):
        build_model("resnet18", 2, 32, in_channels=1)
    np.savez(tmp_path / "rgb.npz", images=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="images have 3 channels but the model takes 1"):
        ArraySource(path=str(tmp_path / "rgb.npz"), channels=1)
    grey = ArraySource(path=str(tmp_path / "rgb.npz").replace("rgb", "rgb"), channels=3)
    assert grey.load(np.arange(2)).shape == (2, 3, 8, 8) and "channels" not in grey.spec()


def test_training_checkpoints_with_args_and_numpy_metrics_load(tmp_path):
    import argparse

    src = _net(1)
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=0.1, arch="vgg"), "epoch": 3,
                "best_acc": np.float64(0.91), "classes": np.array([0, 1, 2])}, tmp_path / "ref.pth")
    dst = _net(2)
    assert load_checkpoint(dst, tmp_path / "ref.pth") == CheckpointFormat("model", ())
    assert _same(src, dst)


def test_densenet_pretrained_files_keep_torchvisions_old_key_names(tmp_path, monkeypatch):
    import re

    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = pretrained_weights("densenet121", "DEFAULT")
    torch.manual_seed(0)
    placed = torchvision.models.densenet121(num_classes=1000)
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
           for k, v in placed.state_dict().items()  # the published file's layout: norm.1, conv.2, ...
           if not k.endswith("num_batches_tracked")}  # saved before batch-norm counted its batches
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(old, cache / Path(weights.url).name)
    from repint.nets import load_network

    net, loading = load_network({"architecture": "densenet121", "num_classes": 1000, "image_size": 64,
                                 "mean": [0.5] * 3, "weights": "DEFAULT"})
    assert _same(net, placed) and loading["weights_file"] == Path(weights.url).name


def test_repint_layers_infers_a_user_models_input_channels(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = _grey_model_module(tmp_path)
    from repint.app.cli import main

    assert main(["layers", "--model", arch, "--image-size", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recommended"] == "relu_1"
    assert {r["name"]: r for r in report["layers"]}["conv1"]["shape"] == [8, 32, 32]
