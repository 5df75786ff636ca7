"""The training steps, the device views and the authors' k-means read no values back from the
device (no host-device synchronisation).

Each step runs on fake tensors (shapes only, no data): any operation whose result depends on
tensor values on the host (``.item()``, ``bool(t)``, mask indexing, ``nonzero``,
``bincount``) raises there, as it would make a GPU step wait. A tensor literal
(``torch.tensor`` of host numbers) raises too: on a GPU it is a blocking copy to the device.
(``bench/step.py --sync-check`` on a GPU counts the synchronisations of real steps.) Not
covered: Barlow Twins (its cross-modal term selects the valid rows).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from lightning import LightningModule
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from skinssl.clustering import dot_kmeans_heads
from skinssl.datamodules.device_views import device_views
from skinssl.datamodules.views import Views
from skinssl.labels import CRITERIA
from skinssl.lightning_modules import MultiLabelClassifier, SM3Contrastive, SM3PseudoLabels
from skinssl.lightning_modules.baselines import BYOL, DeepClusterV2, MoCo, SimCLR, SimSiam, SwAV

SMALL = {"backbone": "resnet18", "weights": None}


class NoLiterals(TorchDispatchMode):
    """Raises on a tensor made from host numbers (``torch.tensor([...])``) inside the block."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.ops.aten.lift_fresh.default:
            raise AssertionError("a tensor literal: on a GPU, a blocking copy to the device")
        return func(*args, **(kwargs or {}))


def batch(views: int) -> dict[str, Any]:
    def image() -> torch.Tensor | list[torch.Tensor]:
        made = [torch.randn(4, 3, 32, 32) for _ in range(views)]
        return made[0] if views == 1 else made

    return {
        "derm": image(),
        "clinic": image(),
        "pair_valid": torch.tensor([True, False, True, True]),
        "index": torch.arange(4),
        "labels": torch.zeros(4, 8, dtype=torch.long),
    }


def stage2() -> SM3PseudoLabels:
    module = SM3PseudoLabels(embed_dim=16, relation_ffn=8, **SMALL)
    module.set_clusters({}, torch.zeros(4, len(CRITERIA), dtype=torch.long))
    return module


def deepcluster() -> DeepClusterV2:
    module = DeepClusterV2(modality="derm", proj_hidden=16, proj_dim=8, num_clusters=3, **SMALL)
    module.set_clusters({"derm": torch.randn(3, 8)}, torch.zeros(4, 1, dtype=torch.long))
    return module


def momentum(cls: type, **kwargs: Any) -> LightningModule:
    module = cls(proj_hidden=16, proj_dim=8, **SMALL, **kwargs)
    module.current_momentum = lambda: 0.99  # the schedule reads the trainer's step (host)
    return module


MODULES = {
    "sm3 stage 1": (lambda: SM3Contrastive(proj_hidden=16, proj_dim=8, **SMALL), 2),
    "sm3 stage 2": (stage2, 1),
    "classifier": (lambda: MultiLabelClassifier(head_input="tokens", embed_dim=16, **SMALL), 1),
    "simclr": (lambda: SimCLR(proj_hidden=16, proj_dim=8, **SMALL), 2),
    "simsiam": (lambda: SimSiam(proj_hidden=16, proj_dim=8, pred_hidden=8, **SMALL), 2),
    "swav": (lambda: SwAV(proj_hidden=16, proj_dim=8, num_prototypes=8, **SMALL), 2),
    "deepcluster-v2": (deepcluster, 2),
    "byol": (lambda: momentum(BYOL), 2),
    "moco": (lambda: momentum(MoCo), 2),
    "moco shuffled batchnorm": (lambda: momentum(MoCo, shuffle_groups=2), 2),
}


@pytest.mark.parametrize("name", MODULES)
def test_training_step_and_backward(name: str) -> None:
    make, views = MODULES[name]
    module: LightningModule = make()
    inputs = batch(views)
    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True), NoLiterals():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached
        out = module.training_step(inputs, 0)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
    assert loss.dim() == 0
    assert any(p.grad is not None for p in module.parameters())  # the step trains something


def test_device_views() -> None:
    images = torch.zeros(4, 3, 40, 50, dtype=torch.uint8)
    sizes = torch.tensor([[40, 50], [30, 50], [40, 20], [40, 50]])
    with FakeTensorMode(allow_non_fake_inputs=True), NoLiterals():
        for views in (Views.simclr(), Views.cluster(), Views()):
            out = device_views(images, sizes, views, 32, torch.Generator().manual_seed(0))
            assert out.shape == (4, 3, 32, 32)


def test_authors_kmeans() -> None:
    """Every head's k-means, from the features on the device to the results there."""
    features = [torch.randn(50, 8), torch.randn(50, 6)]
    with FakeTensorMode(allow_non_fake_inputs=True), NoLiterals():
        (c1, a1, o1), (c2, a2, o2) = dot_kmeans_heads(features, [3, 2], niter=3)
        assert c1.shape == (3, 8) and c2.shape == (2, 6) and a1.shape == a2.shape == (50,)
        assert o1.shape == o2.shape == ()


def test_the_check_catches_a_sync() -> None:
    with FakeTensorMode(), pytest.raises(Exception, match="nonzero|local_scalar"):
        x = torch.randn(4)
        x[x > 0].sum()
    with FakeTensorMode(), pytest.raises(Exception, match="bincount|dynamic|data-dependent"):
        torch.bincount(torch.zeros(4, dtype=torch.long), minlength=3)
    with FakeTensorMode(), NoLiterals(), pytest.raises(AssertionError, match="literal"):
        torch.randn(3) * torch.tensor([0.0, 1.0, 0.0])
