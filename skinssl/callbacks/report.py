"""Writes the per-class test table (CSV and Markdown) into the run's log directory and prints it.

Works with any module that sets ``test_results`` (a dict with a ``per_class`` list of rows and a
``heads`` dict of per-head results) in ``on_test_epoch_end``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

COLUMNS = ("head", "class", "auc", "sensitivity", "specificity", "precision", "support")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{100 * v:.1f}"
    return str(v)


def markdown_table(results: dict) -> str:
    """Per-class rows, then a per-head summary, as Markdown (metrics in percent)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in results["per_class"]]
    lines += [
        "",
        "| head | accuracy | balanced accuracy | macro AUC | cases |",
        "|---|---|---|---|---|",
    ]
    for h, r in results["heads"].items():
        values = (r["accuracy"], r["balanced_accuracy"], r["auc_macro"], r["n"])
        lines.append(f"| {h} | " + " | ".join(_fmt(v) for v in values) + " |")
    lines.append(f"| mean | {_fmt(results['accuracy_mean'])} | | {_fmt(results['auc_mean'])} | |")
    return "\n".join(lines) + "\n"


def _nan_to_none(value: object) -> object:
    """NaN (a metric undefined on this data) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def log_dir(trainer: L.Trainer) -> Path:
    """The run's log directory (the logger's, else the trainer's root)."""
    path = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
    return Path(path)


class TestReport(L.Callback):
    """After ``test``: ``per_class.csv``, ``per_class.md`` and ``test_metrics.json``, printed.

    Args:
        print_table: also print the Markdown table to stdout.
    """

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "test_results", None)
        if not results:
            return
        out = log_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "per_class.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(results["per_class"])
        table = markdown_table(results)
        (out / "per_class.md").write_text(table)
        (out / "test_metrics.json").write_text(json.dumps(_nan_to_none(results), indent=2))
        if self.print_table:
            print(f"\nTest results ({out}):\n\n{table}")
