"""``skinssl predict``: a CSV of predictions for new image pairs, failures listed, not dropped."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from skinssl.callbacks.run_dir import log_dir
from skinssl.distributed import gather_objects
from skinssl.evaluation.checklist import MELANOMA, expected_score, hard_score, has_criteria
from skinssl.labels import CRITERIA, head

MAX_SCORE = sum(max(head(c).score) for c in CRITERIA)
"""The 7-point score's maximum (10: three major criteria of 2 points, four minor ones of 1)."""


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
        if not 0 <= melanoma_threshold <= MAX_SCORE:
            raise ValueError(
                f"predictions.melanoma_threshold {melanoma_threshold}: the 7-point score runs "
                f"from 0 to {MAX_SCORE}; the checklist's rules flag melanoma from 3 (or 1)"
            )
        self.output = output
        self.melanoma_threshold = melanoma_threshold
        self.failed: list[dict] = []
        self.path: Path | None = None
        self._rows: list[dict] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before any case is predicted: where the CSV goes, and that it can go there."""
        if stage != "predict":
            return
        out = Path(self.output).expanduser() if self.output else None
        self.path = out or log_dir(trainer) / "predictions.csv"
        check_output(self.path, getattr(trainer.datamodule, "csv_path", None))

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
        assert self.path is not None
        if trainer.global_rank != 0:
            return
        # the same columns whichever cases failed (all of them: every prediction column empty)
        empty = {h: np.zeros((0, head(h).num_classes)) for h in pl_module.heads}
        fields = list(dict.fromkeys([k for r in rows for k in r] + [
            "status", *self._prediction_columns(empty)
        ]))  # fmt: skip
        replaced = self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        rank_zero_info(
            f"predictions: {len(rows) - len(self.failed)} of {len(rows)} cases -> {self.path}"
            + (" (replacing the file there)" if replaced else "")
        )
        planned = _planned(trainer)
        if planned is not None and len(rows) < planned:
            rank_zero_warn(
                f"{self.path} has {len(rows)} of the {planned} cases to predict: "
                f"trainer.limit_predict_batches ({trainer.limit_predict_batches}) stopped early"
            )


def _planned(trainer: L.Trainer) -> int | None:
    """How many cases the data module's predict split holds (None: not a skinssl one)."""
    dm = trainer.datamodule
    if not hasattr(dm, "split_rows") or not hasattr(dm, "predict_split"):
        return None
    return len(dm.split_rows(dm.predict_split))


def check_output(path: Path, source: str | None) -> None:
    """A clear error, before predicting, for an output path that cannot take the CSV or is
    the input table ``source``."""
    where = f"--predictions.output {path}"
    if source is not None and path.resolve() == Path(source).expanduser().resolve():
        raise ValueError(
            f"{where} is the input table (data.init_args.csv_path): the predictions would "
            "replace it; give another file"
        )
    if path.is_dir():
        raise ValueError(f"{where} is a folder; give a file name, e.g. {path / 'predictions.csv'}")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise ValueError(f"{where}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"{where}: no permission to write in {existing}")
