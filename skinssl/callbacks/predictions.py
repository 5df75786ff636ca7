"""``skinssl predict``: a CSV of predictions for new image pairs, failures listed, not dropped."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from skinssl.callbacks.run_dir import log_dir
from skinssl.distributed import gather_objects
from skinssl.evaluation.checklist import MELANOMA, expected_score, hard_score, has_criteria
from skinssl.labels import head


def _gather(rows: list[dict]) -> list[dict]:
    """Every rank's rows, one per case (a distributed sampler repeats some), by case."""
    rows = gather_objects(rows)
    return sorted({r["case"]: r for r in reversed(rows)}.values(), key=lambda r: r["case"])


class PredictionWriter(L.Callback):
    """Writes one CSV row per case after ``predict``.

    Columns: ``case`` (row in the input table), ``id`` (the case's name, when the data has an
    id column), ``derm``, ``clinic``, ``status`` (``ok`` or the error, e.g. a missing or
    unreadable image), the probability of every class of every head (``p_<head>_<class>``),
    the predicted class per head (``pred_<head>``), and with all seven
    criteria heads ``seven_point_score`` (of the predicted criteria), ``seven_point_expected``
    (from their probabilities) and ``melanoma_checklist`` (1 when the score reaches
    ``melanoma_threshold``). Failed cases keep their row with empty predictions; ``failed``
    lists them and the ``skinssl`` command then exits with a non-zero status.

    Args:
        output: CSV path (default: ``predictions.csv`` in the run's log directory).
        melanoma_threshold: 7-point score from which the checklist flags melanoma (3, or 1 for
            the more sensitive rule).
    """

    def __init__(self, output: str | None = None, melanoma_threshold: int = 3) -> None:
        self.output = output
        self.melanoma_threshold = melanoma_threshold
        self.failed: list[dict] = []
        self.path: Path | None = None
        self._rows: list[dict] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self.failed = [], []

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        cases = trainer.datamodule.cases
        probs = {h: outputs[h].float().cpu().numpy() for h in pl_module.heads}
        errors = batch.get("error", [""] * len(outputs["index"]))
        columns = self._prediction_columns(probs)
        for i, case in enumerate(outputs["index"].tolist()):
            row = {"case": case, **({"id": cases.ids[case]} if cases.ids else {})}
            row |= {m: os.path.abspath(getattr(cases, m)[case]) for m in ("derm", "clinic")}
            row["status"] = f"error: {errors[i]}" if errors[i] else "ok"
            if not errors[i]:
                row.update({k: v[i] for k, v in columns.items()})
            self._rows.append(row)

    def _prediction_columns(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Column name -> [B] values of a batch."""
        columns: dict[str, np.ndarray] = {}
        for h, p in probs.items():
            classes = head(h).classes
            columns.update({f"p_{h}_{c}": np.round(p[:, k], 6) for k, c in enumerate(classes)})
            columns[f"pred_{h}"] = np.asarray(classes)[p.argmax(axis=1)]
        if "DIAG" in probs:
            columns["melanoma_diagnosis"] = (probs["DIAG"].argmax(axis=1) == MELANOMA).astype(int)
        if has_criteria(list(probs)):
            score = hard_score(probs)
            columns["seven_point_score"] = score
            columns["seven_point_expected"] = np.round(expected_score(probs), 4)
            columns["melanoma_checklist"] = (score >= self.melanoma_threshold).astype(int)
        return columns

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = _gather(self._rows)
        self.failed = [r for r in rows if r["status"] != "ok"]
        self.path = Path(self.output) if self.output else log_dir(trainer) / "predictions.csv"
        if trainer.global_rank != 0:
            return
        fields = list(dict.fromkeys(k for r in rows for k in r))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        rank_zero_info(
            f"predictions: {len(rows) - len(self.failed)} of {len(rows)} cases -> {self.path}"
        )
