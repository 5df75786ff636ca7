"""The shipped configs through the CLI: --print_config, fast_dev_run, and the quick-start chain."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import warnings
from fractions import Fraction
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from torch._utils import ExceptionWrapper

import skinssl.cli as cli_module
import skinssl.cli_checkpoints as cli_checkpoints
from skinssl.cli import SkinSSLCLI, build_cli, main
from skinssl.cli_checkpoints import run_checkpoint, warn_resumed_settings
from skinssl.cli_errors import own_error
from skinssl.datamodules.cases import DataError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))
TINY_SYNTHETIC = [
    "--data.init_args.num_cases=60",
    "--data.init_args.synthetic_size=64",
    "--data.init_args.image_size=32",
    "--data.init_args.cache_size=36",
    "--data.init_args.batch_size=8",
    "--data.init_args.num_workers=0",
    "--trainer.enable_progress_bar=false",
]
BEST = "runs/quickstart/finetune/checkpoints/best.ckpt"  # the quick start's fine-tuned model
ON_CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
    "--trainer.sync_batchnorm=false",
    "--trainer.enable_progress_bar=false",
]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_print_config(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        build_cli(["fit", "-c", str(REPO / config), "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: skinssl." in out and "seed_everything" in out


@pytest.mark.parametrize("value, parsed", [("1", 1), ("3", 3), ("1.0", 1.0), ("0.25", 0.25)])
def test_batch_limits_read_integers_as_batches(value: str, parsed: float) -> None:
    """Lightning's Union[float, int] would make "1" the whole epoch (1.0)."""
    args = ["-c", str(REPO / "configs/quickstart/stage1.yaml")]
    cli = build_cli([*args, f"--trainer.limit_train_batches={value}"], run=False)
    got = cli.config.trainer.limit_train_batches
    assert got == parsed and type(got) is type(parsed)


def run(stage: str, config: str, *extra: str) -> SkinSSLCLI:
    return build_cli([stage, "-c", str(REPO / config), *extra])


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick-start chain on a tiny synthetic set, in its own working directory."""
    cwd = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
        short += ["--trainer.log_every_n_steps=1"]
        for stage in ("stage1", "stage2", "finetune"):
            config = f"configs/quickstart/{stage}.yaml"
            run("fit", config, *TINY_SYNTHETIC, "--trainer.fast_dev_run=true")
            run("fit", config, *TINY_SYNTHETIC, *short)
        run(
            "fit",
            "configs/quickstart/supervised.yaml",
            *TINY_SYNTHETIC,
            "--trainer.fast_dev_run=true",
        )
        run(
            "test",
            "configs/quickstart/finetune.yaml",
            *TINY_SYNTHETIC,
            f"--ckpt_path={BEST}",
        )
    return cwd


def tensorboard_tags(run_dir: Path) -> dict[str, set[str]]:
    """Scalar and image tags of a run directory's event files, read by TensorBoard itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    return {"scalars": set(tags["scalars"]), "images": set(tags["images"])}


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    """The steps of a scalar over a run directory's event files, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [e.step for e in EventAccumulator(str(run_dir)).Reload().Scalars(tag)]


def last_scalar(run_dir: Path, tag: str) -> float:
    """The last value of a scalar over a run directory's event files, as TensorBoard reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir)).Reload().Scalars(tag)[-1].value


def test_quickstart_chain_writes_the_report(quickstart_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = quickstart_run / "runs" / "quickstart"
    for stage in ("stage1", "stage2", "finetune"):
        assert (runs / stage / "checkpoints" / "last.ckpt").is_file()
    run_dir = runs / "finetune"
    # testing in the run directory keeps the fit's config next to its own
    assert (run_dir / "config.yaml").is_file() and (run_dir / "test_config.yaml").is_file()
    rows = (run_dir / "per_class.csv").read_text().splitlines()
    assert rows[0] == "head,class,auc,sensitivity,specificity,precision,f1,support"
    assert len(rows) == 1 + 24  # every class of the 8 heads
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["heads"]) == ["DIAG", "PN", "BWV", "VS", "PIG", "STR", "DaG", "RS"]
    assert metrics["bootstrap"]["resamples"] == 1000
    summary = metrics["summary"]
    for name in ("auc_all_classes", "auc_criteria_classes", "auc_key_classes", "auc_diag_macro"):
        lo, hi = summary[name]["ci"]
        assert lo <= summary[name]["value"] <= hi
    assert {"expected_score", "hard_score", "mel_probability"} <= set(metrics["melanoma"])
    report_md = (run_dir / "report.md").read_text()
    assert "## Melanoma detection" in report_md
    assert f"Weights: checkpoint {BEST}." in report_md  # which weights were tested
    # hparams.yaml records the data settings as used, as the checkpoint does
    saved = torch.load(quickstart_run / BEST, weights_only=True)["datamodule_hyper_parameters"]
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert isinstance(saved["border_crop"], int) and hparams["border_crop"] == saved["border_crop"]
    views = json.loads(json.dumps(saved["derm_views"]))  # (tuples as the lists YAML has)
    assert hparams["derm_views"] == views and views["n"] == 1
    for name in (
        "roc_DIAG",
        "confusion_RS",
        "attention",
        "attention_by_diagnosis",
        "gradcam_DIAG_MEL",
    ):
        assert f"![{name}](figures/{name}.png)" in report_md
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    for h in metrics["heads"]:
        assert {f"roc_{h}.png", f"confusion_{h}.png"} <= figures
    assert {"attention.png", "attention_by_diagnosis.png", "gradcam_DIAG_MEL.png"} <= figures
    assert {"views_derm.png", "views_clinic.png"} <= figures

    tags = tensorboard_tags(run_dir)
    # the HParams tab shows the last hp_metric: the fit's validation number, not test's -1
    assert 0 <= last_scalar(run_dir, "hp_metric") <= 1
    assert {"train/loss", "val/auc_mean", "val/DIAG/auc", "hp_metric", "test/auc_mean"} <= tags[
        "scalars"
    ]
    assert any(t.startswith("lr-AdamW") for t in tags["scalars"])
    assert {"train/loss_DIAG", "train/loss_RS"} <= tags["scalars"]  # each head's term
    # the test numbers and figures sit at the tested checkpoint's step of the fit's curves
    # (the fit's validation of the tested checkpoint's epoch: here its only one)
    (step,) = scalar_steps(run_dir, "val/auc_mean")
    assert step > 0 and scalar_steps(run_dir, "test/auc_mean") == [step]
    images = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert [e.step for e in images.Images("test/roc/DIAG")] == [step]
    assert {"views/derm", "views/clinic", "test/roc/DIAG", "test/confusion/RS"} <= tags["images"]
    assert {"test/attention", "test/attention_by_diagnosis", "test/gradcam/DIAG_MEL"} <= tags[
        "images"
    ]
    stage1 = tensorboard_tags(runs / "stage1")["scalars"]
    assert {"train/loss_intra_derm", "train/loss_intra_clinic", "train/loss_cross"} <= stage1
    assert any(t.startswith("kmeans/") for t in tensorboard_tags(runs / "stage2")["scalars"])


def test_evaluations_log_at_the_checkpoints_step_and_epoch() -> None:
    """What Lightning reads the logged step and epoch from, outside a fit."""
    from skinssl.callbacks.run_dir import log_at, logged_step

    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    log_at(trainer, 12, 3)
    assert (logged_step(trainer), trainer.current_epoch) == (12, 3)


def test_ckpt_path_must_hold_the_configs_model(quickstart_run: Path, monkeypatch) -> None:
    """Lightning would swap the config's model for the checkpoint's: a clear error instead,
    and for files that are no Lightning checkpoint."""
    monkeypatch.chdir(quickstart_run)
    config, ckpt = (
        "configs/quickstart/finetune.yaml",
        "runs/quickstart/stage1/checkpoints/last.ckpt",
    )
    with pytest.raises(ValueError, match="checkpoint of SM3Contrastive, but the config's model is "
                       "MultiLabelClassifier.*; to evaluate what it learnt, fit a "
                       "MultiLabelClassifier from it \\(--model.init_args.init_from\\) and test "
                       "that run's checkpoint"):  # fmt: skip
        run("test", config, f"--ckpt_path={ckpt}")
    plain, junk = quickstart_run / "resnet.pt", quickstart_run / "junk.ckpt"
    unsafe = quickstart_run / "unsafe.ckpt"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    junk.write_text("not a checkpoint\n")
    torch.save({"state_dict": {}, "note": Fraction(1, 3)}, unsafe)  # an object, not a value
    with pytest.raises(ValueError, match="not a Lightning checkpoint.*`weights` argument"):
        run("test", config, f"--ckpt_path={plain}")
    with pytest.raises(ValueError, match="cannot read checkpoint .*junk.ckpt: not a file torch"):
        run("test", config, f"--ckpt_path={junk}")
    with pytest.raises(ValueError, match="cannot read checkpoint .*unsafe.ckpt: PyTorch's safe"):
        run("test", config, f"--ckpt_path={unsafe}")
    with pytest.raises(ValueError, match="ckpt_path .*missing.ckpt: no such file"):
        run("test", config, f"--ckpt_path={quickstart_run / 'missing.ckpt'}")


def test_ckpt_path_best_and_last_are_the_config_runs_files(
    quickstart_run: Path, monkeypatch, tmp_path: Path
) -> None:
    """Outside a fit, Lightning knows ``best``/``last`` only within the fit that saved them."""
    monkeypatch.chdir(quickstart_run)
    other = [*TINY_SYNTHETIC, "--trainer.limit_val_batches=1"]
    folder = quickstart_run / "runs" / "quickstart" / "finetune" / "checkpoints"
    for which in ("best", "last"):
        cli = run("validate", "configs/quickstart/finetune.yaml", f"--ckpt_path={which}", *other)
        path = Path(cli.config_init["validate"]["ckpt_path"])
        assert path.resolve() == folder / f"{which}.ckpt"
        step = torch.load(path, weights_only=True)["global_step"] - 1  # of its last batch
        assert cli.trainer.fit_loop.epoch_loop._batches_that_stepped == step  # its numbers' step
    # validate adds no val/* points to the fit's curve (the fit's one validation stays alone)
    assert len(scalar_steps(folder.parent, "val/auc_mean")) == 1
    with pytest.raises(ValueError, match=r"--ckpt_path best: no best checkpoint in this config's "
                       r"run, runs/quickstart/stage1/checkpoints \(holds last.ckpt\)"):  # fmt: skip
        run("test", "configs/quickstart/stage1.yaml", "--ckpt_path=best")
    # a best model saved under another name: the one that last.ckpt records
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes())
    trainer = Namespace(default_root_dir=str(tmp_path), logger=False, callbacks=[])
    assert Path(run_checkpoint(trainer, "best")).resolve() == folder / "best.ckpt"
    with pytest.raises(ValueError, match=r"no last checkpoint .* \(no checkpoints there\)"):
        run_checkpoint(Namespace(default_root_dir=str(quickstart_run), logger=False), "last")
    with pytest.raises(ValueError, match="logger has no version, so each run gets a new"):
        run("test", "configs/quickstart/finetune.yaml", "--ckpt_path=best",
            "--trainer.logger.init_args.version=null")  # fmt: skip


def test_model_settings_that_ckpt_path_replaces_are_named(
    quickstart_run: Path, monkeypatch
) -> None:
    """Lightning builds the model of --ckpt_path with the checkpoint's settings: a setting given
    otherwise is named, not silently dropped."""
    monkeypatch.chdir(quickstart_run)
    ckpt = "--ckpt_path=runs/quickstart/finetune/checkpoints/best.ckpt"
    other = "--model.init_args.dropout=0.3"
    named = r"validate: the model is built with the checkpoint's settings, not the config's "
    with pytest.warns(UserWarning, match=named + r"\(dropout: config 0.3, checkpoint 0.0\)"):
        cli = run("validate", "configs/quickstart/finetune.yaml", *TINY_SYNTHETIC, ckpt, other)
    assert cli.model.hparams.dropout == 0.0


def test_fine_tuning_tokens_from_stage1_warns(quickstart_run: Path, monkeypatch) -> None:
    monkeypatch.chdir(quickstart_run)
    stage1 = "runs/quickstart/stage1/checkpoints/last.ckpt"
    with pytest.warns(UserWarning, match=r"\(SM3Contrastive\) has no label-relation module: "):
        config = str(REPO / "configs/quickstart/finetune.yaml")
        build_cli(["-c", config, f"--model.init_args.init_from={stage1}", *TINY_SYNTHETIC], False)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_a_pretraining_stage_says_to_fine_tune(
    subcommand: str, quickstart_run: Path, monkeypatch
) -> None:
    """... even when the stage-1 checkpoint it was trained from is gone: not loaded."""
    monkeypatch.chdir(quickstart_run)
    ckpt = "--ckpt_path=runs/quickstart/stage2/checkpoints/last.ckpt"
    step = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}
    stage1 = Path("runs/quickstart/stage1/checkpoints/last.ckpt")
    stage1.rename(stage1.with_suffix(".away"))
    try:
        with pytest.raises(ValueError, match=rf"{subcommand}: SM3PseudoLabels has no "
                           rf"{step[subcommand]} \(a pretraining stage\).*init_from"):  # fmt: skip
            run(subcommand, "configs/quickstart/stage2.yaml", ckpt, *TINY_SYNTHETIC)
    finally:
        stage1.with_suffix(".away").rename(stage1)


def test_a_resume_does_not_need_the_checkpoint_it_started_from(
    quickstart_run: Path, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A requeued fine-tune resumes from last.ckpt when its init_from file (and a weights file
    that init_from overrides) are gone (scratch space cleared): their weights are all in
    last.ckpt. The run's config and hyper-parameters still name them."""
    monkeypatch.chdir(tmp_path)
    start = tmp_path / "stage2.ckpt"
    stage2 = quickstart_run / "runs/quickstart/stage2/checkpoints/last.ckpt"
    start.write_bytes(stage2.read_bytes())
    args = [*TINY_SYNTHETIC, f"--model.init_args.init_from={start}", "--resume=true",
            "--model.init_args.weights=/gone/resnet18.pth",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]  # fmt: skip
    run("fit", "configs/quickstart/finetune.yaml", *args, "--trainer.max_epochs=1")
    start.unlink()
    with caplog.at_level("INFO"):
        run("fit", "configs/quickstart/finetune.yaml", *args, "--trainer.max_epochs=2")
    want = "init_from, weights not loaded: every weight comes from the checkpoint this fit resumes"
    assert want in caplog.text
    run_dir = tmp_path / "runs/quickstart/finetune"
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and last["hyper_parameters"]["init_from"] == str(start)
    assert f"init_from: {start}" in (run_dir / "config.yaml").read_text()
    # a fit with nothing to resume still needs it: a new run, or --ckpt_path last without one
    fresh = [a for a in args if a != "--resume=true"]
    for extra in ("--trainer.logger.init_args.version=again", "--ckpt_path=last"):
        other = "--trainer.logger.init_args.version=other" if "last" in extra else ""
        with pytest.raises(ValueError, match="init_from checkpoint not found"):
            run("fit", "configs/quickstart/finetune.yaml", *fresh, extra, *filter(None, [other]))


def test_the_command_prints_bad_input_as_its_message(monkeypatch, capsys) -> None:
    """jsonargparse would wrap the model's error in a report of every type it tried."""
    args = ["fit", "-c", str(REPO / "configs/quickstart/finetune.yaml")]
    with pytest.raises(SystemExit) as done:
        main([*args, "--model.init_args.heads=[PN,XYZ]"])
    assert str(done.value.code).startswith("skinssl: error: unknown head 'XYZ'; valid heads: DIAG")
    assert "Union" not in str(done.value.code)
    monkeypatch.setenv("SKINSSL_TRACEBACK", "1")
    with pytest.raises(ValueError, match="Union"):
        main([*args, "--model.init_args.heads=[PN,XYZ]"])


def test_parse_errors_and_help_are_short_and_skinssls(monkeypatch, capsys) -> None:
    config = str(REPO / "configs/quickstart/stage1.yaml")
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", config, "--data.init_args.cache_siz=3"])
    assert done.value.code == 2
    error = capsys.readouterr().err
    assert (
        "data: SyntheticDerm7ptDataModule takes no argument 'cache_siz'; did you mean "
        "'cache_size'?\n"
        in error
        and "usage:" not in error
        and "Union" not in error
    )
    assert "fit --help" in error  # where the options are
    with pytest.raises(SystemExit):
        main(["fit", "-c", config, "--model.init_args.zzz=3"])
    assert "model: SM3Contrastive takes no argument 'zzz'; its arguments: adam_eps, backbone" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "skinssl: self-supervised two-modality" in listing
    assert "write the test report" in listing and "Perform one evaluation" not in listing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as done:  # the published recipes on a machine without GPU
        main(["fit", "-c", str(REPO / "configs/sm3/stage1.yaml"), "--model.init_args.weights=null"])
    assert str(done.value.code).startswith(
        "skinssl: error: trainer.accelerator is 'gpu', but torch finds no CUDA GPU here. To run "
        "this config on the CPU, add --trainer.accelerator=cpu --trainer.devices=1"
    )
    with pytest.raises(SystemExit) as done:  # 2 CPU processes, BatchNorm synchronised
        main(["fit", "-c", str(REPO / "configs/sm3/stage1.yaml"), "--trainer.accelerator=cpu"])
    assert "trainer.sync_batchnorm is true, but torch's SyncBatchNorm runs on GPUs" in str(
        done.value.code
    )


def test_lightning_warnings_that_do_not_apply_are_filtered(capsys) -> None:
    """Metrics gathered from every rank, padded duplicates dropped, frozen parts in eval mode."""
    ignored = [
        "It is recommended to use `self.log('val/auc_mean', ..., sync_dist=True)` when logging "
        "on epoch level in distributed setting to accumulate the metric across devices.",
        "It is recommended to use `self.log('hp_metric', ..., sync_dist=True)` when logging ...",
        "Using `DistributedSampler` with the dataloaders. During `trainer.test()`, it is "
        "recommended to use `Trainer(devices=1, num_nodes=1)` to ensure each sample/batch gets "
        "evaluated exactly once.",
        "Found 137 module(s) in eval mode at the start of training. This may lead to ...",
    ]
    kept = "It is recommended to use `self.log('train/loss', ..., sync_dist=True)` when ..."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main(["--help"])  # the CLI installs its filters
        for message in [*ignored, kept]:
            warnings.warn(message, UserWarning, stacklevel=1)
    assert not [w for w in caught if str(w.message).startswith(("Found 137", "Using `Dist"))]
    assert [str(w.message) for w in caught if str(w.message).startswith("It is")] == [kept]
    # and Lightning's tips to install its cloud products are left out of the log
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip, info = (log.makeRecord(log.name, logging.INFO, "x.py", 1, text, (), None)
                 for text in ("💡 Tip: try installing ...", "GPU available: False"))  # fmt: skip
    assert not log.filter(tip) and log.filter(info)


def test_resuming_with_other_settings_warns(monkeypatch) -> None:
    """A checkpoint older than an argument, or optimizer settings unlike the checkpoint's: the
    restored optimizer keeps its own, which the records would otherwise hide."""
    warned: list[str] = []
    monkeypatch.setattr(cli_checkpoints, "rank_zero_warn", warned.append)
    old = {"hyper_parameters": {"lr": 1e-4, "weight_decay": 0.05, "heads": ["PN"]}}
    warn_resumed_settings(old, "old.ckpt", {"lr": 1e-4, "weight_decay": 0.05, "adam_eps": 1e-8})
    assert len(warned) == 1
    assert (
        "old.ckpt predates the model argument(s) ['adam_eps']: the resumed run goes on"
        in (warned[0])
    )
    assert "with adam_eps=1e-08; the optimizer state it restores keeps its own" in warned[0]
    warned.clear()
    warn_resumed_settings(old, "old.ckpt", {"lr": 1e-2, "weight_decay": 0.1, "heads": ["BWV"]})
    assert len(warned) == 1  # heads is not an optimizer setting; lr follows the config
    assert (
        "old.ckpt: the optimizer settings differ from the checkpoint's (weight_decay: 0.05 -> 0.1)"
        in (warned[0])
    )
    warned.clear()
    warn_resumed_settings(old, "old.ckpt", {"lr": 1e-4, "weight_decay": 0.05})
    assert warned == []  # nothing newer, nothing changed


def test_a_batch_of_one_in_training_names_the_settings_to_change() -> None:
    with pytest.raises(ValueError) as error:
        torch.nn.BatchNorm1d(3).train()(torch.randn(1, 3))
    assert "--data.init_args.drop_last=true" in str(own_error(error.value))


def test_a_loader_workers_data_error_is_reported_as_its_message() -> None:
    """torch raises a worker's error again with the worker's traceback in its message."""
    try:
        raise DataError("x.jpg: cannot decode this image\nsecond line")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as raised:
        wrapped.reraise()
    assert "Original Traceback" in str(raised.value)
    own = own_error(raised.value)
    assert isinstance(own, DataError)
    assert str(own) == "x.jpg: cannot decode this image\nsecond line"


def test_testing_another_runs_checkpoint_warns(quickstart_run: Path, monkeypatch) -> None:
    monkeypatch.chdir(quickstart_run)
    other = [*TINY_SYNTHETIC, "--trainer.limit_val_batches=1"]
    ckpt = f"--ckpt_path={BEST}"
    config = "configs/quickstart/finetune.yaml"
    elsewhere = "--trainer.logger.init_args.version=elsewhere"
    with pytest.warns(UserWarning, match=r"is from run .*quickstart/finetune, but this run's "
                      r"directory is .*quickstart/elsewhere.*finetune/config.yaml"):  # fmt: skip
        run("validate", config, ckpt, elsewhere, *other)
    away = quickstart_run / "away"  # the run's own config, from another working directory
    away.mkdir(exist_ok=True)
    monkeypatch.chdir(away)
    home = re.escape(str(quickstart_run.resolve()))
    want = r"this run's directory is .*away/runs/quickstart/finetune: .*relative to the "
    with pytest.warns(UserWarning, match=want + f"working directory: run from {home} to"):
        run("validate", str(quickstart_run / "runs/quickstart/finetune/config.yaml"),
            f"--ckpt_path={quickstart_run / BEST}", *other)  # fmt: skip
    monkeypatch.chdir(quickstart_run)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is from run|.*without --ckpt_path")
        run("validate", config, ckpt, *other)
    with pytest.warns(UserWarning, match="validate without --ckpt_path: the weights are the "):
        run("validate", config, *other)  # the heads as built: not the fit's


def test_the_other_run_hint_says_where_to_run_from_only_for_a_relative_log_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "home" / "runs" / "exp" / "v1"
    (tmp_path / "away").mkdir()
    monkeypatch.chdir(tmp_path / "away")
    target = (tmp_path / "away" / "runs" / "exp" / "v1").resolve()
    run_from = f"relative to the working directory: run from {tmp_path / 'home'} to keep"
    assert run_from in cli_module.other_run_hint(source, target, "runs")
    own_config = f"(-c {source / 'config.yaml'})"  # an absolute save_dir: the layout is chance
    assert own_config in cli_module.other_run_hint(source, target, str(tmp_path / "away/runs"))
    assert own_config in cli_module.other_run_hint(source, tmp_path / "away/x/v1", "runs")


def test_data_settings_unlike_the_checkpoints_warn(quickstart_run: Path, monkeypatch) -> None:
    monkeypatch.chdir(quickstart_run)
    other = [a for a in TINY_SYNTHETIC if "size=" not in a]
    other += ["--data.init_args.synthetic_size=64", "--data.init_args.image_size=40"]
    other += ["--data.init_args.cache_size=44", "--trainer.limit_val_batches=1"]
    ckpt = f"--ckpt_path={BEST}"
    with pytest.warns(
        UserWarning,
        match=r"image_size: trained with 32, now 40; cache_size: "
        r"trained with 36, now 44\).*image_size=32 --data.init_args.cache_size=36",
    ):
        run("validate", "configs/quickstart/finetune.yaml", ckpt, *other)
    crop = ["--data.init_args.border_crop=0", "--trainer.fast_dev_run=true"]
    unlike = r"fit: the data settings differ from those that trained its init_from checkpoint"
    with pytest.warns(UserWarning, match=unlike + r" \(border_crop: trained with 3, now 0\)"):
        run("fit", "configs/quickstart/finetune.yaml", *TINY_SYNTHETIC, *crop)
    few = ["--data.init_args.label_fraction=0.3", "--data.init_args.keep_unlabelled=true"]
    with pytest.warns(UserWarning, match="17 of the 25 training cases have no label for any "):
        run("fit", "configs/quickstart/finetune.yaml", *TINY_SYNTHETIC, *few, crop[1])


def test_predict_with_a_run_config_and_checkpoint(quickstart_run: Path, monkeypatch) -> None:
    """New pairs from a CSV, with the fine-tuning run's config and checkpoint; one image missing."""
    monkeypatch.chdir(quickstart_run)
    images = sorted((quickstart_run / "data" / "synthetic" / "images").rglob("*.jpg"))[:4]
    csv_path = quickstart_run / "new_pairs.csv"
    lines = ["derm,clinic", f"{images[0]},{images[1]}", f"{images[2]},missing/clinic.jpg"]
    csv_path.write_text("\n".join([*lines, f"{images[3]},{images[0]}"]) + "\n")
    out = quickstart_run / "predictions.csv"
    with pytest.raises(SystemExit) as failed, pytest.warns(UserWarning, match="border_crop: "
                                                           "trained with 3, now 0"):  # fmt: skip
        run(
            "predict",
            "configs/quickstart/finetune.yaml",
            f"--ckpt_path={BEST}",
            "--data=skinssl.datamodules.PairedCSVDataModule",
            f"--data.csv_path={csv_path}",
            "--data.predict_split=all",
            "--data.num_workers=0",
            f"--predictions.output={out}",
            "--trainer.enable_progress_bar=false",
        )
    assert "1 case(s) failed" in str(failed.value.code) and "missing/clinic.jpg" in str(
        failed.value.code
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["status"] for r in rows][::2] == ["ok", "ok"]
    assert "image file not found" in rows[1]["status"] and "missing/clinic.jpg" in rows[1]["status"]
    assert rows[1]["p_DIAG_MEL"] == ""
    for r in (rows[0], rows[2]):
        assert sum(float(r[f"p_PN_{c}"]) for c in ("ABS", "TYP", "ATP")) == pytest.approx(
            1, abs=1e-4
        )
        assert r["melanoma_checklist"] == str(int(int(r["seven_point_score"]) >= 3))
    # the run's own data, under a relative root: the rows name images by absolute paths too
    ours = quickstart_run / "valid_predictions.csv"
    run_dir = quickstart_run / "runs" / "quickstart" / "finetune"
    before = {f: f.stat().st_mtime_ns for f in run_dir.glob("*") if f.is_file()}
    run("predict", "configs/quickstart/finetune.yaml", f"--ckpt_path={BEST}", *TINY_SYNTHETIC,
        "--data.init_args.predict_split=valid", f"--predictions.output={ours}")  # fmt: skip
    after = {f: f.stat().st_mtime_ns for f in run_dir.glob("*") if f.is_file()}
    changed = [f for f in after if before.get(f) != after[f]]
    assert {f.name for f in changed if "tfevents" not in f.name} == {"predict_config.yaml"}
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for events in (f for f in changed if "tfevents" in f.name):  # (Lightning opens a writer)
        assert not any(e.HasField("summary") for e in EventFileLoader(str(events)).Load())
    rows = list(csv.DictReader(ours.open()))
    assert rows and all(Path(r["derm"]).is_file() and Path(r["derm"]).is_absolute() for r in rows)


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("configs/supervised.yaml", []),
        ("configs/sm3/stage1.yaml", []),
        ("configs/sm3/stage2.yaml", ["--model.init_args.pretrained={stage1}"]),
        (  # the quick-start stage 2 standardises its input; the published recipe does not
            "configs/sm3/finetune.yaml",
            ["--model.init_args.init_from={stage2}", "--model.init_args.input_norm=true"],
        ),
    ],
)
def test_published_configs_fast_dev_run(
    config: str,
    extra: list[str],
    quickstart_run: Path,
    derm7pt_release: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The published recipes on the real metadata (placeholder images), shrunk to run on CPU."""
    ckpts = quickstart_run / "runs" / "quickstart"
    paths = {
        "stage1": ckpts / "stage1" / "checkpoints" / "last.ckpt",
        "stage2": ckpts / "stage2" / "checkpoints" / "last.ckpt",
    }
    monkeypatch.chdir(tmp_path)
    shrink = [
        f"--data.init_args.root={derm7pt_release}",
        "--data.init_args.image_size=32",
        "--data.init_args.cache_size=36",
        "--data.init_args.batch_size=4",
        # stage 2's fill pass: 413 cases in training batches of 4, the last one of 1 merged
        "--data.init_args.num_workers=0",
        "--model.init_args.backbone=resnet18",
        "--trainer.fast_dev_run=true",
    ]
    if "stage2" not in config and "finetune" not in config:
        shrink.append("--model.init_args.weights=null")  # no download in tests
    cli = run("fit", config, *ON_CPU, *shrink, *(e.format(**paths) for e in extra))
    assert cli.trainer.global_step == 1
    source = {"stage2": paths["stage1"], "finetune": paths["stage2"]}
    kind = next((k for k in source if k in config), None)
    if kind:  # trunks frozen in both: still the pretrained checkpoint's after the step, but
        # stage 2's first fill (as the authors') moves their BatchNorm statistics
        saved = torch.load(source[kind], weights_only=True)["state_dict"]
        statistics = ("running_mean", "running_var", "num_batches_tracked")
        for k, v in cli.model.encoder.state_dict().items():
            moved = kind == "stage2" and k.endswith(statistics)
            assert torch.equal(v, saved[f"encoder.{k}"]) != moved, k


def test_fit_resume_continues_from_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarting the same command with --resume true continues the run instead of restarting;
    the checkpoint it finds gets the checks of --ckpt_path."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY_SYNTHETIC, "--trainer.limit_train_batches=2", "--resume=true"]
    last = tmp_path / "runs" / "quickstart" / "stage1" / "checkpoints" / "last.ckpt"
    with caplog.at_level("INFO"):
        run("fit", "configs/quickstart/stage1.yaml", *args, "--trainer.max_epochs=1")
    assert "resume: no " in caplog.text and "yet, so the run starts from the beginning" in (
        caplog.text
    )
    # a logger without a version: a new version_N folder for each run, never resumed
    with pytest.raises(ValueError, match="--resume true: the config's logger has no version"):
        run("fit", "configs/quickstart/stage1.yaml", *args,
            "--trainer.logger.init_args.version=null")  # fmt: skip
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 2
    with caplog.at_level("INFO"):
        run("fit", "configs/quickstart/stage1.yaml", *args, "--trainer.max_epochs=2")
    assert f"resume: continuing from {Path('runs/quickstart/stage1/checkpoints/last.ckpt')}" in (
        caplog.text
    )
    ckpt = torch.load(last, weights_only=True)
    # one more epoch on top of the first run's
    assert (ckpt["epoch"], ckpt["global_step"]) == (first["epoch"] + 1, 4)
    # without --resume, the same command would start over on top of the run: refused
    again = [a for a in args if a != "--resume=true"] + ["--trainer.max_epochs=3"]
    with pytest.raises(ValueError, match=r"already holds a fit \(.*last\.ckpt\)\. To continue"):
        run("fit", "configs/quickstart/stage1.yaml", *again)
    assert torch.load(last, weights_only=True)["global_step"] == 4
    run("fit", "configs/quickstart/stage1.yaml", *again, f"--ckpt_path={last}")  # Lightning's way
    assert torch.load(last, weights_only=True)["global_step"] == 6
    run("fit", "configs/quickstart/stage1.yaml", *again[:-1], "--trainer.max_epochs=4",
        "--ckpt_path=last")  # fmt: skip
    assert torch.load(last, weights_only=True)["global_step"] == 8
    # going on there from another run's checkpoint, or resuming without last.ckpt: refused
    other = tmp_path / "other.ckpt"
    other.write_bytes(last.read_bytes())
    last.rename(last.with_name("stage1.ckpt"))
    for extra in (f"--ckpt_path={other}", "--resume=true"):
        with pytest.raises(ValueError, match=r"already holds a fit \(.*stage1.ckpt\)"):
            run("fit", "configs/quickstart/stage1.yaml", *again, extra)
    last.with_name("stage1.ckpt").rename(last)
    stage2_in_stage1s_run = [f"--model.init_args.pretrained={last}", "--trainer.max_epochs=1"]
    stage2_in_stage1s_run.append("--trainer.logger.init_args.version=stage1")
    with pytest.raises(ValueError, match="is a checkpoint of SM3Contrastive"):
        run("fit", "configs/quickstart/stage2.yaml", *args, *stage2_in_stage1s_run)


@pytest.mark.parametrize(
    "config", [c for c in CONFIGS if "ModelCheckpoint" in (REPO / c).read_text()]
)
def test_every_config_keeps_last_ckpt_after_every_epoch(config: Path) -> None:
    """Lightning 2.6 writes save_last only at epochs that also save a top-k checkpoint; the
    configs keep last.ckpt with a checkpoint of its own, and a monitored best.ckpt first
    (Lightning's ``trainer.checkpoint_callback``, whose folder the run's checkpoints share)."""
    callbacks = yaml.safe_load((REPO / config).read_text())["trainer"]["callbacks"]
    kinds = [(c["class_path"], c.get("init_args", {})) for c in callbacks]
    saves = [args for path, args in kinds if path.endswith("ModelCheckpoint")]
    assert not any(s.get("save_last") for s in saves)
    assert {"filename": "last", "enable_version_counter": False} in saves
    assert [i for i, s in enumerate(saves) if "monitor" in s] in ([], [0])


def test_last_ckpt_is_the_last_epoch_when_best_is_not(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # the first epoch's validation stays the best
    first = lambda self, trainer, current=None: trainer.current_epoch == 0  # noqa: E731
    monkeypatch.setattr(ModelCheckpoint, "check_monitor_top_k", first)
    args = [*TINY_SYNTHETIC, "--trainer.max_epochs=3", "--trainer.limit_train_batches=1"]
    run("fit", "configs/quickstart/supervised.yaml", *args, "--trainer.limit_val_batches=1")
    folder = tmp_path / "runs" / "quickstart" / "supervised" / "checkpoints"
    assert torch.load(folder / "best.ckpt", weights_only=True)["global_step"] == 1
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_refused_resume_keeps_the_runs_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A resume the checkpoint refuses while being restored does not rewrite config.yaml."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY_SYNTHETIC, "--model.init_args.pretrained=null", "--trainer.max_epochs=1"]
    args += ["--trainer.limit_train_batches=1", "--resume=true"]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        run("fit", "configs/quickstart/stage2.yaml", *args)
    # frozen trunks in eval mode are by design: said once, without Lightning's warning
    assert "trunks frozen: in eval mode in training steps" in caplog.text
    assert not [w for w in caught if "in eval mode at the start" in str(w.message)]
    config = tmp_path / "runs" / "quickstart" / "stage2" / "config.yaml"
    saved = config.read_text()
    other = tmp_path / "niter5.yaml"
    other.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: skinssl.callbacks.KMeansPseudoLabels\n"
        "      init_args: {niter: 5}\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {filename: last, enable_version_counter: false}\n"
    )
    with pytest.raises(ValueError, match="niter: checkpoint 10, this run 5"):
        run("fit", "configs/quickstart/stage2.yaml", "-c", str(other), *args)
    assert config.read_text() == saved
    run("fit", "configs/quickstart/stage2.yaml", *args, "--trainer.max_epochs=2")
    assert "max_epochs: 2" in config.read_text()  # an accepted resume records its config
    run(
        "fit",
        "configs/quickstart/stage2.yaml",
        *args,
        "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=3",
    )
    assert "log_every_n_steps: 3" in config.read_text()  # so does one with nothing to train


def test_same_seed_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One seed fixes data order, augmentations in every worker and initialisation."""
    weights = []
    for run_dir, seed in (("a", 0), ("b", 0), ("c", 1)):
        monkeypatch.chdir(tmp_path)
        (tmp_path / run_dir).mkdir()
        monkeypatch.chdir(tmp_path / run_dir)
        run(
            "fit",
            "configs/quickstart/stage1.yaml",
            *TINY_SYNTHETIC,
            "--data.init_args.num_workers=2",
            "--data.init_args.root=../synthetic",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.deterministic=true",
            f"--seed_everything={seed}",
        )
        last = Path("runs/quickstart/stage1/checkpoints/last.ckpt")
        weights.append(torch.load(last, weights_only=True)["state_dict"])
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert same and not other


@pytest.mark.parametrize(
    "stage, extra, signal_name",
    [
        ("stage1", [], "SIGUSR1"),
        ("stage1", [], "SIGTERM"),  # scancel, the time limit: the same, without a requeue
        # dropout in the relation module; validation every epoch
        ("finetune", ["--model.init_args.init_from=null"], "SIGUSR1"),
        # k-means pseudo-labels kept mid-epoch, trained prototypes, dropout
        ("stage2", ["--model.init_args.pretrained=null", "--data.init_args.drop_last=true"],
         "SIGUSR1"),
    ],
)  # fmt: skip
def test_signal_mid_epoch_then_same_command_gives_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, extra: list[str],
    signal_name: str,
) -> None:  # fmt: skip
    """A signal mid-epoch: checkpoint and exit; the same command with --resume true then ends
    with the weights of an uninterrupted run (deterministic CPU; 0 vs 2 loader workers)."""
    args = [
        *TINY_SYNTHETIC,
        "--data.init_args.root=../synthetic",
        "--trainer.max_epochs=2",  # 3 batches per epoch
        "--trainer.deterministic=true",
        "--resume=true",
        *extra,
    ]
    config = f"configs/quickstart/{stage}.yaml"
    last = Path(f"runs/quickstart/{stage}/checkpoints/last.ckpt")
    (tmp_path / "whole").mkdir()
    monkeypatch.chdir(tmp_path / "whole")
    run("fit", config, *args)
    whole = torch.load(last, weights_only=True)
    assert whole["global_step"] == 6

    (tmp_path / "cut").mkdir()
    monkeypatch.chdir(tmp_path / "cut")
    cut = [*args, "--data.init_args.num_workers=2"]
    signal_at = ["--trainer.callbacks+=helpers.SignalAt", "--trainer.callbacks.step=4",
                 f"--trainer.callbacks.signal_name={signal_name}"]  # fmt: skip
    with pytest.raises(SystemExit, match=f"stopped by {signal_name} at step 5"):  # ends the batch
        run("fit", config, *cut, *signal_at, "--trainer.log_every_n_steps=1")
    stopped = torch.load(last, weights_only=True)
    assert (stopped["epoch"], stopped["global_step"]) == (1, 5)  # mid-epoch: 2 of 3 batches
    run("fit", config, *cut, "--trainer.log_every_n_steps=1")  # the same command, restarted
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 6
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    # TensorBoard has every step once, the one trained just before the signal too
    assert scalar_steps(Path(f"runs/quickstart/{stage}"), "train/loss") == list(range(6))


def test_a_resume_after_a_kill_continues_the_tensorboard_curves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fit stopped without a checkpoint at the stop (Ctrl-C here; kill -9, a crash) logged
    steps after its last checkpoint: the resumed fit's curves go on from the checkpoint's step
    with those dropped (no step twice or backwards), and no second hp_metric -1."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY_SYNTHETIC, "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1"]
    config = str(REPO / "configs/quickstart/stage1.yaml")
    kill = ["--trainer.callbacks+=helpers.SignalAt", "--trainer.callbacks.step=5",
            "--trainer.callbacks.signal_name=SIGINT"]  # fmt: skip
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning: "Detected KeyboardInterrupt", exit 1
            main(["fit", "-c", config, *args, *kill])
    finally:
        signal.signal(signal.SIGINT, ctrl_c)  # (Lightning ignores Ctrl-C after one)
    run_dir = Path("runs/quickstart/stage1")
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    assert scalar_steps(run_dir, "train/loss")[-1] == 4  # logged after the checkpoint
    main(["fit", "-c", config, *args, "--resume=true"])
    assert scalar_steps(run_dir, "train/loss") == list(range(6))
    assert scalar_steps(run_dir, "hp_metric") == [0]
    # logged at the resumed epoch's start, before its first batch
    assert scalar_steps(run_dir, "lr-AdamW") == [0, 3]


def test_a_full_disk_or_read_only_folder_is_one_line(monkeypatch) -> None:
    """The machine's file-system errors, e.g. while Lightning or TensorBoard writes the run."""
    import errno

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", "runs/stage1/events.out")

    monkeypatch.setattr(cli_module, "build_cli", failing)
    with pytest.raises(SystemExit, match=r"^skinssl: error: Read-only file system \(runs/stage1/"
                       r"events.out\): write the runs to a writable folder"):  # fmt: skip
        main(["fit"])
    monkeypatch.setattr(cli_module, "build_cli", lambda *a: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError, match="x"):  # anything else: as raised
        main(["fit"])


def test_weights_that_do_not_fit_are_one_line(monkeypatch) -> None:
    """A resume with other model settings (a --resume takes the config's model as given)."""

    def failing(*args: object, **kwargs: object) -> None:
        torch.nn.Linear(2, 3).load_state_dict({"weight": torch.zeros(4, 2), "bias": torch.zeros(4)})

    monkeypatch.setattr(cli_module, "build_cli", failing)
    want = r"^skinssl: error: the checkpoint's weights do not fit the config's model \(Linear: "
    want += r"size mismatch for weight: .*\(and 1 more\)\): continue or evaluate it with the model"
    with pytest.raises(SystemExit, match=want):
        main(["fit"])


def test_sigterm_outside_training_exits_143_with_how_to_go_on(monkeypatch, capsys) -> None:
    """Lightning's SIGTERM exit is a SystemExit without a status: 0, as if the command had
    finished; in training, Preemption handles SIGTERM (a checkpoint, then exit status 1)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def stopped(*args: object, **kwargs: object) -> None:
        raise SIGTERMException

    monkeypatch.setattr(cli_module, "build_cli", stopped)
    with pytest.raises(SystemExit) as done:
        main(["test"])
    assert done.value.code == 143
    assert "stopped by SIGTERM outside training, where nothing is saved" in capsys.readouterr().err


def test_a_signal_during_set_up_is_honoured_when_training_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR1 before the first batch (the data being read) waits for the first safe batch end
    instead of ending the process."""
    from skinssl.datamodules import SyntheticDerm7ptDataModule

    monkeypatch.chdir(tmp_path)
    setup = SyntheticDerm7ptDataModule.setup

    def signalled_setup(self, stage: str) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        setup(self, stage)

    monkeypatch.setattr(SyntheticDerm7ptDataModule, "setup", signalled_setup)
    before = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # unheard, the signal does nothing
    try:
        with pytest.raises(SystemExit, match="stopped by SIGUSR1 at step 1"):
            run("fit", "configs/quickstart/stage1.yaml", *TINY_SYNTHETIC, "--trainer.max_epochs=2")
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_process_whose_peer_stopped_says_so(monkeypatch) -> None:
    def peer_gone(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    monkeypatch.setattr(cli_module, "build_cli", peer_gone)
    with pytest.raises(SystemExit, match="^skinssl: error: another process of this run stopped"):
        main(["fit"])
    monkeypatch.setenv("SKINSSL_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(["fit"])


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_two_process_fit_resumes_on_one(
    augment_on: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage 1 under Lightning's DDP (2 gloo processes), then the same run continued on one
    process from its checkpoint: the sampler shards, the checkpoint does not depend on devices.
    Views made in the loader workers or, as the published stage 1, on each rank's device."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY_SYNTHETIC, "--data.init_args.batch_size=4", "--trainer.limit_train_batches=2"]
    args += ["--resume=true", f"--data.init_args.augment_on={augment_on}"]
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn"]
    last = tmp_path / "runs" / "quickstart" / "stage1" / "checkpoints" / "last.ckpt"
    run("fit", "configs/quickstart/stage1.yaml", *args, *ddp, "--trainer.max_epochs=1")
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 2
    # the loader's state says where the next batch comes from: the start of epoch 1
    assert first["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 0, "replicas": 2, "batch_size": 4}
    ]
    run("fit", "configs/quickstart/stage1.yaml", *args, "--trainer.max_epochs=2")
    assert torch.load(last, weights_only=True)["global_step"] == 4


def test_stage1_with_views_made_on_the_device(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run(
        "fit", "configs/quickstart/stage1.yaml", *TINY_SYNTHETIC,
        "--data.init_args.augment_on=device", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.log_every_n_steps=1",
    )  # fmt: skip
    ckpt = torch.load("runs/quickstart/stage1/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert (tmp_path / "runs/quickstart/stage1/figures/views_derm.png").is_file()
