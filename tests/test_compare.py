"""bench/compare.py without running anything: method names, resume bookkeeping, the table."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from test_cli import ON_CPU, REPO

from skinssl.cli import build_cli
from skinssl.datamodules import Views

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
    assert bench.results["cells"] == done["cells"]  # kept as it was, not run again
    # cells of another budget are not reused as if they were this run's
    done["meta"] = {"budget": {**vars(bench.budget), "epochs": 1}, "data": bench.source()}
    (tmp_path / "results.json").write_text(json.dumps(done))
    with pytest.raises(SystemExit, match="holds runs with another budget"):
        compare.Bench(compare.parse(["--out", str(tmp_path), "--methods", "simclr"]))
    done["meta"] = {"budget": vars(bench.budget), "data": bench.source()}  # nor of other data
    (tmp_path / "results.json").write_text(json.dumps(done))
    with pytest.raises(SystemExit, match="another data .*'num_cases': 300"):
        compare.Bench(compare.parse(["--out", str(tmp_path), "--num-cases", "60"]))


def test_a_failed_run_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's own error line is shown with the command, not only in its log."""
    bench = compare.Bench(compare.parse(["--out", str(tmp_path), "--methods", "simclr"]))

    def failing(command: list[str], stdout, **kwargs: object) -> object:
        stdout.write("Lightning noise\nskinssl: error: set --data.init_args.drop_last=true\n")
        return type("Done", (), {"returncode": 1})()

    monkeypatch.setattr(compare.subprocess, "run", failing)
    with pytest.raises(SystemExit, match=r"failed \(1\): .*\nskinssl: error: set --data.init_args"
                       r".drop_last=true\nlog: "):  # fmt: skip
        bench.skinssl("fit", "configs/baselines/simclr.yaml")


def test_projector_cells_only_for_sm3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads on the trunks (the baselines) make `projector` the same run as `linear`."""
    argv = ["--out", str(tmp_path), "--methods", "sm3", "byol", "--settings", "linear",
            "projector", "--fractions", "1.0"]  # fmt: skip
    bench = compare.Bench(compare.parse(argv))
    ran = []
    monkeypatch.setattr(bench, "cell", lambda method, setting, *a: ran.append((method, setting)))
    bench.run()
    assert ran == [("sm3", "linear"), ("sm3", "projector"), ("byol", "linear")]


@pytest.mark.parametrize("method", ["dino", "sm3:derm", "simclr:dermoscopic"])
def test_unknown_methods_are_refused(method: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        compare.parse(["--methods", method])
    assert "valid: sm3, supervised, imagenet" in capsys.readouterr().err


def test_summarise_reads_the_test_report(tmp_path: Path) -> None:
    """The table's numbers come from the ``metrics.json`` that ``skinssl test`` writes."""
    from test_metrics import fake_outputs

    from skinssl.evaluation.report import build_report, markdown, write_report

    report = build_report(fake_outputs(80, seed=9), resamples=0)
    write_report(report, tmp_path, markdown(report))
    got = compare.summarise(json.loads((tmp_path / "metrics.json").read_text()))
    assert got["auc_classes_mean"] == pytest.approx(report["summary"]["auc_all_classes"]["value"])
    assert got["auc_mean"] == pytest.approx(report["means"]["heads"]["auc_macro"])
    assert got["accuracy_mean"] == pytest.approx(report["means"]["heads"]["accuracy"])
    mel = report["heads"]["DIAG"]["classes"][2]
    assert (got["mel_sensitivity"], got["mel_specificity"]) == (
        pytest.approx(mel["sensitivity"]), pytest.approx(mel["specificity"]),
    )  # fmt: skip
    assert set(got["auc_per_head"]) == set(compare.HEADS)
    # a model without the diagnosis head: no melanoma numbers, the rest as before
    no_diagnosis = copy.deepcopy(json.loads((tmp_path / "metrics.json").read_text()))
    del no_diagnosis["heads"]["DIAG"]
    got = compare.summarise(no_diagnosis)
    assert got["mel_sensitivity"] is None and got["mel_specificity"] is None
    assert set(got["auc_per_head"]) == set(compare.HEADS) - {"DIAG"}


def test_the_methods_are_the_baseline_configs() -> None:
    configs = {p.stem for p in (REPO / "configs" / "baselines").glob("*.yaml")}
    references = {"finetune", "supervised_scratch", "supervised_imagenet"}
    assert set(compare.SSL_METHODS) == configs - references
    shipped = {"simclr", "byol", "moco", "simsiam", "barlow_twins", "swav", "deepcluster_v2"}
    assert shipped <= configs
    assert set(compare.CPU_HEADS) <= {"sm3", *compare.SSL_METHODS}  # the others keep theirs


@pytest.mark.parametrize("modality", ["derm", "clinic"])
def test_single_modality_runs_make_no_unused_views(modality: str, tmp_path: Path) -> None:
    config = REPO / "configs" / "baselines" / "simclr.yaml"
    args = compare.single_modality_views(config, modality)
    cli = build_cli(
        ["-c", str(config), *ON_CPU, "--model.init_args.weights=null", *args], run=False
    )
    views = {"derm": cli.datamodule.derm_views, "clinic": cli.datamodule.clinic_views}
    unused = "clinic" if modality == "derm" else "derm"
    assert views[unused].n == 0
    assert views[modality] == Views.simclr()  # the config's stage-1 views


def test_fits_inside_a_slurm_allocation_launch_their_own_processes(monkeypatch) -> None:
    """Run as one SLURM task, the bench's fits must not take SLURM's task count (1) as their
    processes: Lightning then launches the config's devices itself."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert compare.cli_env() == dict(os.environ)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "python")
    assert SLURMEnvironment.detect()  # as the CLI would see it without the bench's change
    monkeypatch.setattr(os, "environ", compare.cli_env())
    assert not SLURMEnvironment.detect()
