"""Trunks shared by every method: torchvision ResNets, one per modality, pooled features."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision import models

from skinssl.lightning_modules.checkpoints import load_tensors, starting_weights

Arch = Literal["resnet18", "resnet34", "resnet50"]
FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
TORCHVISION_WEIGHTS = {"imagenet": "IMAGENET1K_V1", "imagenet_v2": "IMAGENET1K_V2"}


def build_trunk(arch: Arch, weights: str | None = None) -> nn.Module:
    """A ResNet without its classifier (outputs the pooled feature).

    ``weights``: None (random init), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``, as the SM3
    authors used; it must be downloadable or already in the torch hub cache), ``"imagenet_v2"``
    (``IMAGENET1K_V2``, ResNet-50 only), or the path of a local file holding a
    ResNet state dict (torchvision's format, with or without ``fc``; a ``state_dict`` or
    ``model`` entry is unwrapped).
    """
    if arch not in FEATURE_DIM:
        raise ValueError(f"unknown backbone {arch!r}; valid: {', '.join(FEATURE_DIM)}")
    if weights in TORCHVISION_WEIGHTS:
        name = TORCHVISION_WEIGHTS[weights]
        offered = [w.name for w in models.get_model_weights(arch)]
        if name not in offered:
            raise ValueError(
                f"weights {weights!r}: torchvision has no {name} for {arch} (it has "
                f"{', '.join(offered)}); use weights: imagenet, or backbone: resnet50"
            )
        try:
            net = getattr(models, arch)(weights=name)
        except (OSError, RuntimeError) as e:  # offline (URLError), or a corrupt download
            raise ValueError(
                f"weights {weights!r}: torchvision could not load {arch} {name} "
                f"({type(e).__name__}: {e}); it downloads them once into the torch hub cache "
                f"({torch.hub.get_dir()}/checkpoints). Without a network, copy the file there, "
                "or use weights: null or the path of a local state dict"
            ) from None
    else:
        net = getattr(models, arch)(weights=None)
        if weights is not None:
            _load_local(net, Path(weights), arch)
    net.fc = nn.Identity()
    return net


def _load_local(net: nn.Module, path: Path, arch: str) -> None:
    if not path.is_file():
        raise ValueError(
            f"backbone weights file not found: {path}; use weights: null, 'imagenet' or a path"
        )
    state = load_tensors(path, "backbone weights file")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: backbone weights must be a state dict, got {type(state)}")
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        detail = " ".join(str(e).split("\n\t")[1:2]) or str(e)
        raise ValueError(f"{path} does not fit a torchvision {arch}: {detail}") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit a torchvision {arch}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


class PairEncoder(nn.Module):
    """Two trunks (dermoscopic, clinical) whose pooled features are concatenated.

    ``share_trunk`` uses one trunk for both modalities (the default, as in SM3, is two).
    """

    def __init__(
        self, arch: Arch = "resnet50", weights: str | None = None, share_trunk: bool = False
    ) -> None:
        super().__init__()
        self.feature_dim = FEATURE_DIM[arch]
        weights = starting_weights(weights)
        self.derm = build_trunk(arch, weights)
        self.clinic = self.derm if share_trunk else build_trunk(arch, weights)

    @property
    def out_dim(self) -> int:
        return 2 * self.feature_dim

    def forward(self, derm: torch.Tensor, clinic: torch.Tensor) -> torch.Tensor:
        for name, x in (("derm", derm), ("clinic", clinic)):
            if not isinstance(x, torch.Tensor):
                raise ValueError(
                    f"one {name} view per case expected, got a list of {len(x)}; set "
                    f"data.init_args.{name}_views.n: 1"
                )
        return torch.cat([self.derm(derm), self.clinic(clinic)], dim=1)


STAGE1_VIEWS = '{"n":2,"crop_scale":[0.5,1.0],"p_color_jitter":0.8,"p_grayscale":0.2,"p_blur":0.5}'
"""SM3's stage-1 views (``Views.simclr()``: tested) as a command-line value, for messages:
models do not import the data package."""


def two_views(views: Any, modality: str, owner: str) -> list[torch.Tensor]:
    """A batch's two views of ``modality``; a clear error naming ``owner`` (the module)
    and the setting to change when the data makes another number."""
    if not isinstance(views, list) or len(views) != 2:
        got = len(views) if isinstance(views, list) else 1
        raise ValueError(
            f"{owner} needs 2 views of the {modality} image per case, got {got}; give "
            f"data.init_args.{modality}_views two views, e.g. SM3's stage-1 views: "
            f"--data.init_args.{modality}_views='{STAGE1_VIEWS}' (a partial setting such as "
            f"{modality}_views.n: 2 keeps the other fields' defaults: the fine-tuning views)"
        )
    return views


def projector(
    in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, layers: int = 3
) -> nn.Sequential:
    """SimCLR-style MLP: (Linear-BN-ReLU) x (layers-1), then Linear-BN without affine.

    With the defaults and a ResNet-50 this is SM3's 2048 -> 2048 -> 2048 -> 128 projector.
    """
    if layers < 1:
        raise ValueError(f"projector layers must be >= 1, got {layers}")
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU()]
        dim = hidden_dim
    blocks += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
    return nn.Sequential(*blocks)
