"""Trunk weights: a local state dict, and one clear error for each way of failing to get them."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models._api as torchvision_weights
from torchvision import models

from skinssl.lightning_modules.nets import build_trunk


def test_local_state_dict_loads_with_or_without_fc(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    trunk = build_trunk("resnet18", str(path))
    torch.testing.assert_close(trunk.conv1.weight, source.conv1.weight)
    assert isinstance(trunk.fc, torch.nn.Identity)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, "backbone weights file not found: .*w.pth; use weights: null, 'imagenet' or a"),
        ("a,b\n1,2\n", "cannot read backbone weights file .*w.pth: not a file torch.save wrote"),
        (torch.zeros(3), r"w.pth: backbone weights must be a state dict, got .*Tensor"),
        ({"stem.weight": torch.zeros(1)}, "does not fit a torchvision resnet18: missing"),
        (
            {"conv1.weight": torch.zeros(1)},
            "does not fit a torchvision resnet18: size mismatch for conv1.weight",
        ),  # fmt: skip
    ],
)
def test_bad_local_weights(tmp_path: Path, content: object, pattern: str) -> None:
    path = tmp_path / "w.pth"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ValueError, match=pattern):
        build_trunk("resnet18", str(path))


def test_an_incomplete_checkpoint_is_named_so(tmp_path: Path) -> None:
    """A checkpoint cut short (disk full, or the process stopped while saving it)."""
    from skinssl.lightning_modules.checkpoints import load_tensors

    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"last.ckpt: the file is incomplete \(the disk was full"):
        load_tensors(path, "checkpoint")


def test_imagenet_weights_offline(monkeypatch) -> None:
    """No network and nothing in the hub cache: say where the file goes, and the options."""

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision_weights, "load_state_dict_from_url", offline)
    pattern = r"weights 'imagenet': .* resnet18 IMAGENET1K_V1 \(URLError.*hub cache .*checkpoints"
    with pytest.raises(ValueError, match=pattern):
        build_trunk("resnet18", "imagenet")
    # weights torchvision does not have for this backbone: named before any download
    with pytest.raises(ValueError, match=r"no IMAGENET1K_V2 for resnet18 \(it has IMAGENET1K_V1\)"):
        build_trunk("resnet18", "imagenet_v2")
