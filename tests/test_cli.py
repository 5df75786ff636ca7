"""The shipped configs through the CLI: --print_config, fast_dev_run, and the quick-start chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from skinssl.cli import main

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
        main(["fit", "-c", str(REPO / config), "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: skinssl." in out and "seed_everything" in out


def run(stage: str, config: str, *extra: str) -> None:
    main([stage, "-c", str(REPO / config), *extra])


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick-start chain on a tiny synthetic set, in its own working directory."""
    cwd = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
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
            "--ckpt_path=runs/quickstart/finetune/checkpoints/best.ckpt",
        )
    return cwd


def test_quickstart_chain_writes_test_table(quickstart_run: Path, capsys) -> None:
    runs = quickstart_run / "runs" / "quickstart"
    for stage in ("stage1", "stage2", "finetune"):
        assert (runs / stage / "checkpoints" / "last.ckpt").is_file()
    # testing in the run directory keeps the fit's config next to its own
    assert (runs / "finetune" / "config.yaml").is_file()
    assert (runs / "finetune" / "test_config.yaml").is_file()
    tables = list((runs / "finetune").rglob("per_class.csv"))
    assert len(tables) == 1
    rows = tables[0].read_text().splitlines()
    assert rows[0] == "head,class,auc,sensitivity,specificity,precision,support"
    assert len(rows) == 1 + 24  # every class of the 8 heads
    metrics = json.loads((tables[0].parent / "test_metrics.json").read_text())
    assert set(metrics["heads"]) == {"DIAG", "PN", "BWV", "VS", "PIG", "STR", "DaG", "RS"}


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
        "--data.init_args.num_workers=0",
        "--model.init_args.backbone=resnet18",
        "--trainer.fast_dev_run=true",
    ]
    if "stage2" not in config and "finetune" not in config:
        shrink.append("--model.init_args.weights=null")  # no download in tests
    run("fit", config, *ON_CPU, *shrink, *(e.format(**paths) for e in extra))


def test_fit_resume_continues_from_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarting the same command with --resume true continues the run instead of restarting."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY_SYNTHETIC, "--trainer.limit_train_batches=2", "--resume=true"]
    last = tmp_path / "runs" / "quickstart" / "stage1" / "checkpoints" / "last.ckpt"
    run("fit", "configs/quickstart/stage1.yaml", *args, "--trainer.max_epochs=1")
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
