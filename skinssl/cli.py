"""``skinssl fit|validate|test|predict -c CONFIG``: the LightningCLI entry point."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from skinssl.callbacks import (
    Explanations,
    GlooExit,
    PredictionWriter,
    Preemption,
    SampleViews,
    Speed,
    StepSeed,
    TestReport,
)
from skinssl.callbacks.preemption import checkpoint_dir


class SaveStageConfig(SaveConfigCallback):
    """Saves ``config.yaml`` for ``fit`` and ``<stage>_config.yaml`` otherwise, so that testing
    in a run directory does not overwrite the record of how its model was trained."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        name = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn enum
        if name != "fit":
            self.config_filename = f"{name}_config.yaml"
        super().setup(trainer, pl_module, stage)


class SkinSSLCLI(LightningCLI):
    """LightningCLI with skinssl's callbacks always attached, each configurable under its name:
    ``report`` (test report), ``explain`` (attention maps, Grad-CAM), ``predictions`` (the
    predict CSV), ``views`` (sample training views), ``preemption`` (checkpoint, requeue and
    exit on SIGUSR1), ``speed`` (channels-last, torch.compile). Always attached, without
    settings: ``StepSeed`` (dropout drawn from the step, for exact resumes) and ``GlooExit`` (a
    clean exit of CPU multi-process runs). ``fit --resume true`` continues from the run
    directory's ``last.ckpt`` when there is one.
    ``validate``/``test``/``predict`` with a ``ckpt_path`` take every weight from it, so
    ``init_from`` and ``weights`` are not read."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Explanations, "explain")  # before the report: it links
        parser.add_lightning_class_args(TestReport, "report")  # the explanation figures
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(SampleViews, "views")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(Speed, "speed")
        parser.add_argument(
            "--resume",
            type=bool,
            default=False,
            help="fit: continue from checkpoints/last.ckpt of this run's directory if it exists, "
            "so that restarting the same command resumes it",
        )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks += [StepSeed(), GlooExit()]  # not settings: always wanted
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, {})
        if self.subcommand == "fit" or not config.get("ckpt_path"):
            return
        init_args = config.get("model", {}).get("init_args") or {}
        for key in ("init_from", "weights"):
            if init_args.get(key):
                rank_zero_info(f"{key}={init_args[key]!r} not loaded: weights come from ckpt_path")
                init_args[key] = None

    def after_predict(self) -> None:
        writer = next(c for c in self.trainer.callbacks if isinstance(c, PredictionWriter))
        if writer.failed:
            listed = "\n  ".join(f"case {r['case']}: {r['status']}" for r in writer.failed)
            raise SystemExit(
                f"predict: {len(writer.failed)} case(s) failed (rows kept with status in "
                f"{writer.path}):\n  {listed}"
            )

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if not config.get("resume") or config.get("ckpt_path"):
            return
        last = checkpoint_dir(self.trainer) / "last.ckpt"
        if last.is_file():
            rank_zero_info(f"resume: continuing from {last}")
            config["ckpt_path"] = str(last)


def main(args: list[str] | None = None) -> None:
    """The ``skinssl`` command: run the CLI on ``args`` (default: the command line)."""
    build_cli(args)  # returns None: a console script's return value becomes its exit status


def build_cli(args: list[str] | None = None, run: bool = True) -> SkinSSLCLI:
    """The CLI on ``args``, run as a subcommand; ``run=False`` only builds it."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    torch.set_float32_matmul_precision("high")
    return SkinSSLCLI(
        args=args,
        run=run,
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=SaveStageConfig,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
