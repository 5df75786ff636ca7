"""Grad-CAM (Selvaraju et al. 2017) on the last stage of each trunk of a two-modality model."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Logits = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def gradcam(
    model: Logits,
    stages: tuple[nn.Module, nn.Module],
    derm: torch.Tensor,
    clinic: torch.Tensor,
    head_name: str,
    class_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(derm maps, clinic maps, class probabilities): maps [B, H, W] in [0, 1] at input size.

    ``model`` maps normalised (derm, clinic) batches to logits per head; ``stages`` are the
    modules whose outputs are explained (the last stage of the dermoscopic and clinical trunks;
    the same module twice for a shared trunk: its first call is the dermoscopic one). Works with
    frozen trunks and inside an inference-mode context.
    """
    activations: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        activations.append(output)

    hooks = [s.register_forward_hook(keep) for s in dict.fromkeys(stages)]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            derm = derm.clone().requires_grad_(True)  # gradients reach frozen trunks' stages
            clinic = clinic.clone().requires_grad_(True)
            logits = model(derm, clinic)[head_name].float()
            grads = torch.autograd.grad(logits[:, class_index].sum(), activations[:2])
            maps = [
                _cam(a.detach(), g, derm.shape[-2:])
                for a, g in zip(activations[:2], grads, strict=True)
            ]
            probs = logits.detach().softmax(dim=1)[:, class_index]
    finally:
        for h in hooks:
            h.remove()
    return maps[0], maps[1], probs


def _cam(activation: torch.Tensor, grad: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """ReLU of the gradient-weighted channel sum, upsampled and scaled to [0, 1] per case."""
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)
    return cam / peak[:, None, None]
