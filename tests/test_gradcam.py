"""Grad-CAM finds the evidence, on frozen trunks and inside inference mode."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from skinssl.evaluation import CaseOutputs
from skinssl.evaluation.gradcam import gradcam


class SpotModel(nn.Module):
    """Class 1's logit is the mean activation of a ReLU conv stage; class 0's is its negative."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4))
        with torch.no_grad():
            self.stage[0].weight.fill_(0.1)
            self.stage[0].bias.fill_(-0.5)
        self.requires_grad_(False)  # frozen, as the trunks in the linear setting

    def forward(self, derm: torch.Tensor, clinic: torch.Tensor) -> dict[str, torch.Tensor]:
        score = self.stage(derm).mean(dim=(1, 2, 3)) + self.stage(clinic).mean(dim=(1, 2, 3))
        return {"DIAG": torch.stack([-score, score], dim=1)}


def images() -> tuple[torch.Tensor, torch.Tensor]:
    derm = torch.zeros(2, 3, 32, 32)
    derm[0, :, 4:12, 20:28] = 1  # a bright spot, top right
    derm[1, :, 20:28, 4:12] = 1  # bottom left
    clinic = torch.zeros(2, 3, 32, 32)
    clinic[:, :, 12:20, 12:20] = 1  # centre
    return derm, clinic


def test_gradcam_peaks_on_the_evidence_of_each_modality() -> None:
    model = SpotModel()
    derm, clinic = images()
    with torch.inference_mode():
        d, c, p = gradcam(model, (model.stage, model.stage), derm, clinic, "DIAG", 1)
    assert d.shape == c.shape == (2, 32, 32) and d.min() >= 0 and d.max() <= 1
    assert d[0, 4:12, 20:28].mean() > 0.5 > d[0, 20:28, 4:12].mean()
    assert d[1, 20:28, 4:12].mean() > 0.5 > d[1, 4:12, 20:28].mean()
    assert c[:, 12:20, 12:20].mean() > 0.5 > c[:, :8, :8].mean()
    assert torch.allclose(p, model(derm, clinic)["DIAG"].softmax(1)[:, 1])
    # the class whose logit falls with the evidence has no positive evidence: a flat zero map
    d0, _, _ = gradcam(model, (model.stage, model.stage), derm, clinic, "DIAG", 0)
    assert d0.max() == 0
    assert not any(hook for hook in model.stage._forward_hooks.values())  # hooks removed


def test_no_gradcam_head_in_the_model_warns() -> None:
    from test_metrics import fake_outputs

    from skinssl.callbacks import Explanations

    full = fake_outputs(6)
    no_diag = CaseOutputs(full.index, {h: p for h, p in full.probs.items() if h != "DIAG"},
                          full.labels)  # fmt: skip
    model = SimpleNamespace(test_outputs=no_diag)
    with pytest.warns(UserWarning, match="no Grad-CAM figure: the model has no DIAG head"):
        Explanations(attention=False).on_test_end(None, model)
