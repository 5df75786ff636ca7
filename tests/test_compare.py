"""bench/compare.py without running anything: method names, resume bookkeeping, the table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "compare.py"
spec = importlib.util.spec_from_file_location("compare", PATH)
compare = importlib.util.module_from_spec(spec)
sys.modules["compare"] = compare  # dataclasses look their module up
spec.loader.exec_module(compare)


def cell(auc: float, mel: float) -> dict:
    return {
        "auc_per_head": {h: auc for h in compare.HEADS},
        "auc_classes_mean": auc,
        "auc_mean": auc,
        "accuracy_mean": 0.5,
        "mel_sensitivity": mel,
        "mel_specificity": None,
        "fit_seconds": 10.0,
        "pretrain_seconds": 20.0,
    }


def test_table_reports_mean_and_std_over_seeds() -> None:
    cells = {"byol:derm|linear|1|s0": cell(0.6, 0.2), "byol:derm|linear|1|s1": cell(0.8, 0.4)}
    table = compare.markdown(cells, ["byol:derm", "sm3"], ["linear"], [1.0], [0, 1])
    rows = table.splitlines()
    assert len(rows) == 3  # header, rule, the one method with results
    assert rows[2].startswith("| byol:derm | linear | 100 % | 2 | 70.0 ± 14.1 |")
    assert "| 30.0 ± 14.1 | – | 20 ± 0 | 10 ± 0 |" in rows[2]


def test_finished_cells_are_not_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = {"pretrain": {}, "cells": {"simclr|linear|1|s0": cell(0.7, 0.5)}}
    (tmp_path / "results.json").write_text(json.dumps(done))
    bench = compare.Bench(compare.parse(["--out", str(tmp_path), "--methods", "simclr"]))

    def no_run(*args: object) -> float:
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(bench, "skinssl", no_run)
    bench.cell("simclr", "linear", 1.0, 0)


@pytest.mark.parametrize("method", ["dino", "sm3:derm", "simclr:dermoscopic"])
def test_unknown_methods_are_refused(method: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        compare.parse(["--methods", method])
    assert "valid: sm3, supervised, imagenet" in capsys.readouterr().err
