"""Explanations after ``test``: the label-relation attention between heads, and Grad-CAM.

Attention: the label x label map of SM3's relation module averaged over the test cases, overall
and per true diagnosis, the figure the paper uses to show how the criteria relate to each other
and to the diagnosis. Grad-CAM: for a chosen head and class, where each trunk looks, on both
images of a few test cases. PNGs in ``<run dir>/figures``, images in TensorBoard. Runs before
the test report, which links its figures.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from skinssl.callbacks.run_dir import publish
from skinssl.evaluation import CaseOutputs
from skinssl.evaluation.figures import attention_figure, gradcam_figure
from skinssl.evaluation.gradcam import gradcam
from skinssl.labels import head


def attention_groups(outputs: CaseOutputs) -> dict[str, tuple[np.ndarray, int]]:
    """Mean attention map over all cases and over the cases of each known true diagnosis."""
    assert outputs.attention is not None
    groups = {"all cases": (outputs.attention.mean(axis=0), len(outputs))}
    diag = outputs.target("DIAG")
    for c, name in enumerate(head("DIAG").classes):
        members = diag == c
        if members.any():
            groups[f"true {name}"] = (outputs.attention[members].mean(axis=0), int(members.sum()))
    return groups


class Explanations(L.Callback):
    """Attention heatmaps and Grad-CAM overlays after ``test`` (rank 0).

    Args:
        attention: draw the label-relation attention maps (models with a relation module).
        gradcam_cases: test cases to explain with Grad-CAM (0: none). The cases of the chosen
            class (by true label) with the highest predicted probability of it; the most probable
            cases overall when no test case is labelled with it.
        gradcam_head: head whose logit is explained.
        gradcam_class: class of ``gradcam_head`` whose logit is explained.
    """

    def __init__(
        self,
        attention: bool = True,
        gradcam_cases: int = 4,
        gradcam_head: str = "DIAG",
        gradcam_class: str = "MEL",
    ) -> None:
        classes = head(gradcam_head).classes
        if gradcam_class not in classes:
            raise ValueError(
                f"explain: class {gradcam_class!r} is not in head {gradcam_head}; "
                f"valid: {', '.join(classes)}"
            )
        if gradcam_cases < 0:
            raise ValueError(f"explain: gradcam_cases must be >= 0, got {gradcam_cases}")
        self.attention = attention
        self.gradcam_cases = gradcam_cases
        self.gradcam_head = gradcam_head
        self.class_index = classes.index(gradcam_class)
        self.figures: list[Path] = []
        """The PNG files of the last test run (the test report links them)."""

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.figures = []

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        outputs: CaseOutputs | None = getattr(pl_module, "test_outputs", None)
        if outputs is None or not len(outputs):
            return
        if self.attention and outputs.attention is not None:
            names = list(outputs.heads)
            groups = attention_groups(outputs)
            overall = {"all cases": groups["all cases"]}
            title = "Label-relation attention, mean over the test cases"
            fig = attention_figure(overall, names, title)
            self.figures.append(publish(trainer, fig, "attention", "test/attention"))
            title = "Label-relation attention by true diagnosis"
            fig = attention_figure(groups, names, title)
            tag = "attention_by_diagnosis"
            self.figures.append(publish(trainer, fig, tag, f"test/{tag}"))
        if self.gradcam_cases and self.gradcam_head in outputs.heads:
            self._gradcam(trainer, pl_module, outputs)
        elif self.gradcam_cases:
            rank_zero_warn(
                f"explain: no Grad-CAM figure: the model has no {self.gradcam_head} head "
                f"(its heads: {', '.join(outputs.heads)}); set --explain.gradcam_head and "
                "--explain.gradcam_class, or --explain.gradcam_cases 0"
            )

    def _chosen(self, outputs: CaseOutputs) -> np.ndarray:
        """Positions (in ``outputs``) of the cases to explain."""
        p = outputs.probs[self.gradcam_head][:, self.class_index]
        of_class = np.flatnonzero(outputs.target(self.gradcam_head) == self.class_index)
        pool = of_class if len(of_class) else np.arange(len(p))
        return pool[np.argsort(-p[pool], kind="stable")[: self.gradcam_cases]]

    def _gradcam(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: CaseOutputs
    ) -> None:
        datamodule = trainer.datamodule
        dataset = datamodule.dataset("test", train=False)
        position = {int(r): i for i, r in enumerate(dataset.rows)}
        chosen = self._chosen(outputs)
        cases = dataset.__getitems__([position[int(outputs.index[k])] for k in chosen])
        derm, clinic = cases["derm"], cases["clinic"]
        device = pl_module.device
        normalize = datamodule.normalize
        encoder = pl_module.encoder
        stages = (encoder.derm.layer4, encoder.clinic.layer4)
        was_training = pl_module.training
        pl_module.eval()
        derm_cam, clinic_cam, probs = gradcam(
            pl_module, stages, normalize(derm.to(device)), normalize(clinic.to(device)),
            self.gradcam_head, self.class_index,
        )  # fmt: skip
        pl_module.train(was_training)
        classes = head(self.gradcam_head).classes
        name = classes[self.class_index]
        panels = []
        for i, k in enumerate(chosen):
            truth = outputs.target(self.gradcam_head)[k]
            true_name = classes[truth] if truth >= 0 else "unknown"
            flat = [
                m for m, cam in (("derm", derm_cam[i]), ("clinic", clinic_cam[i])) if cam.max() == 0
            ]
            note = f"\nflat map ({', '.join(flat)}): no positive evidence" if flat else ""
            panels.append(
                {
                    "derm": derm[i].permute(1, 2, 0).numpy(),
                    "clinic": clinic[i].permute(1, 2, 0).numpy(),
                    "derm_cam": derm_cam[i].cpu().numpy(),
                    "clinic_cam": clinic_cam[i].cpu().numpy(),
                    "title": f"case {int(outputs.index[k])}\ntrue {true_name}\n"
                    f"p({name}) = {float(probs[i]):.2f}{note}",
                }
            )
        fig = gradcam_figure(panels, self.gradcam_head, name)
        tag = f"{self.gradcam_head}_{name}"
        self.figures.append(publish(trainer, fig, f"gradcam_{tag}", f"test/gradcam/{tag}"))
