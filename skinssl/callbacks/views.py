"""Sample training views of each modality, once per run, as the model receives them."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.image import imsave
from torchvision.utils import make_grid

from skinssl.callbacks.run_dir import log_dir, log_image


class SampleViews(L.Callback):
    """On the first training batch of a run (not after a resume): a grid per modality, one row
    per view, one column per case, in TensorBoard (``views/derm``, ``views/clinic``) and as
    ``figures/views_<modality>.png``. Augmentation mistakes (wrong colours, crops that miss the
    lesion) show here before hours of training.

    Args:
        cases: cases shown (0: none).
    """

    def __init__(self, cases: int = 8) -> None:
        self.cases = cases

    @rank_zero_only
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.cases <= 0 or trainer.global_step > 0 or batch_idx > 0 or trainer.current_epoch:
            return
        normalize = getattr(trainer.datamodule, "normalize", None)
        if normalize is None or not isinstance(batch, dict):
            return
        for modality in ("derm", "clinic"):
            views = batch.get(modality)
            if views is None:
                continue
            views = views if isinstance(views, list) else [views]
            if not views:  # n = 0: no views of this modality
                continue
            rows = torch.cat([normalize.inverse(v[: self.cases].detach()).cpu() for v in views])
            grid = make_grid(rows, nrow=min(self.cases, len(views[0])), padding=2)
            image = grid.permute(1, 2, 0).numpy()
            log_image(trainer, f"views/{modality}", image)
            path = log_dir(trainer) / "figures" / f"views_{modality}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            imsave(path, image)
