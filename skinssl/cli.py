"""``skinssl fit|validate|test|predict -c CONFIG``: the LightningCLI entry point."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from skinssl.callbacks import (
    ContinuedCurves,
    Explanations,
    GlooExit,
    PredictionWriter,
    Preemption,
    ResumedSchedule,
    SampleViews,
    Speed,
    StepSeed,
    TestReport,
)
from skinssl.callbacks.preemption import last_checkpoint
from skinssl.callbacks.run_dir import log_at, log_dir, tensorboard_loggers
from skinssl.cli_checkpoints import (
    check_ckpt,
    check_new_run,
    configured_checkpoint_dir,
    logged_at,
    resumes,
    run_checkpoint,
    warn_model_from_ckpt,
)
from skinssl.cli_errors import (
    FILE_SYSTEM_ERRORS,
    PEER_GONE,
    PEER_GONE_MESSAGE,
    SIGTERM_STOP,
    ConciseParser,
    own_error,
    weights_mismatch,
)
from skinssl.datamodules.cases import listing
from skinssl.lightning_modules.checkpoints import open_checkpoint, restoring


def cli_value(values: list) -> str:
    """One value as itself, several as a list, written without spaces for a shell."""
    text = ",".join(map(str, values))
    return text if len(values) == 1 else f"[{text}]"


EVALUATION_STEPS = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}

# data settings that change what the model sees at evaluation
PREPROCESSING = ("image_size", "cache_size", "border_crop", "mean", "std")


class SaveStageConfig(SaveConfigCallback):
    """Saves ``config.yaml`` for ``fit`` and ``<stage>_config.yaml`` otherwise, so that testing
    in a run directory does not overwrite the record of how its model was trained. A resumed
    fit saves it once the checkpoint is restored (at the start of training, or at the end of a
    fit with nothing left to train): a resume the checkpoint refuses (other k-means settings,
    another layout mid-epoch) leaves the run's record as it was."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        name = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn enum
        if name != "fit":
            self.config_filename = f"{name}_config.yaml"
        elif self.config.get("ckpt_path") or (
            self.config.get("resume") and last_checkpoint(trainer).is_file()
        ):
            return  # a checkpoint will be restored: saved after it is
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().setup(trainer, pl_module, "fit")  # nothing when setup saved it

    on_fit_end = on_train_start


class SkinSSLCLI(LightningCLI):
    """LightningCLI with skinssl's callbacks always attached, each configurable under its name:
    ``report`` (test report), ``explain`` (attention maps, Grad-CAM), ``predictions`` (the
    predict CSV), ``views`` (sample training views), ``preemption`` (checkpoint, requeue and
    exit on SIGUSR1), ``speed`` (channels-last, torch.compile). Always attached, without
    settings: ``StepSeed`` (dropout drawn from the step, for exact resumes), ``ResumedSchedule``
    (a resumed fit trains at this run's learning rates, with a warning when they are not the
    checkpoint's), ``ContinuedCurves`` (TensorBoard curves of a resumed fit without steps twice)
    and ``GlooExit`` (a clean exit of CPU multi-process runs). ``fit --resume
    true`` continues from the run directory's ``last.ckpt`` when there is one.
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
        # Lightning types limit_*_batches Union[float, int]: jsonargparse then reads "1" as 1.0,
        # the whole epoch. Integers first: "1" is one batch, "1.0" and "0.5" stay fractions.
        for action in parser._actions:
            if action.dest.startswith("trainer.limit_") and action.dest.endswith("_batches"):
                action._typehint = Union[int, float, None]  # noqa: UP007 (typing.Union as Lightning)

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # the main --help lists the subcommands with skinssl's descriptions, not the Trainer's
        action = getattr(self.parser, "_subcommands_action", None)
        for choice in getattr(action, "_choices_actions", []):
            choice.help = DESCRIPTIONS.get(choice.dest, choice.help)

    def _parse_ckpt_path(self) -> None:
        """Check ``ckpt_path`` before Lightning reads the model's class and settings from it."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        path = config.get("ckpt_path") if config else None
        self._ckpt_data: dict[str, Any] = {}
        self._ckpt_position: tuple[int, int] | None = None
        if path in ("best", "last") and subcommand != "fit":  # Lightning's: within a fit only
            path = config["ckpt_path"] = run_checkpoint(config.get("trainer"), path)
            rank_zero_info(f"{subcommand}: --ckpt_path is {path}")
        lightnings = path in ("best", "last", "hpc") or str(path).startswith("registry")
        if path and not (lightnings or "://" in str(path) or Path(path).exists()):
            raise ValueError(f"ckpt_path {path}: no such file")
        if path and Path(path).is_file():  # (a folder: a sharded checkpoint, Lightning's)
            ckpt = check_ckpt(path, subcommand, config.get("model"))
            self._ckpt_data = dict(ckpt.get("datamodule_hyper_parameters", {}))
            self._ckpt_position = (logged_at(ckpt), int(ckpt.get("epoch", 0)))
            warn_model_from_ckpt(ckpt, subcommand, config.get("model"))
        super()._parse_ckpt_path()

    def _warn_preprocessing(self, saved: dict[str, Any], source: str) -> None:
        """Warn when this run prepares images unlike the training run of the checkpoint
        (``saved``: its data settings; ``source``: which checkpoint, in the message)."""
        now = dict(getattr(self.datamodule, "hparams", {}))
        values = {k: (np.atleast_1d(saved[k]).tolist(), np.atleast_1d(now[k]).tolist())
                  for k in PREPROCESSING if saved.get(k) is not None and k in now}  # fmt: skip
        differ = [k for k, (a, b) in values.items() if a != b]
        if differ:
            diffs = "; ".join(f"{k}: trained with {saved[k]!r}, now {now[k]!r}" for k in differ)
            fix = " ".join(f"--data.init_args.{k}={cli_value(values[k][0])}" for k in differ)
            rank_zero_warn(
                f"{self.subcommand}: the data settings differ from those that trained {source} "
                f"({diffs}): its weights see images prepared unlike their training images. To "
                f"match, pass {fix}"
            )

    def _warn_other_run(self) -> None:
        """Warn when ``ckpt_path`` lies in another run's ``checkpoints/`` than the config's run
        directory: the test report and its config would go to (and overwrite) the latter's."""
        path = self.config_init[self.subcommand].get("ckpt_path")
        if not path or not Path(path).is_file() or Path(path).parent.name != "checkpoints":
            return
        source, target = Path(path).resolve().parent.parent, log_dir(self.trainer).resolve()
        if source == target:
            return
        save_dir = getattr(self.trainer.logger, "save_dir", None)
        rank_zero_warn(
            f"{self.subcommand}: --ckpt_path is from run {source}, but this run's directory is "
            f"{target}: its files go there. {other_run_hint(source, target, save_dir)}"
        )

    def _check_evaluable(self) -> None:
        """A clear error when the model has no step for this subcommand (a pretraining stage)."""
        step = EVALUATION_STEPS[self.subcommand]
        if not is_overridden(step, self.model):
            raise ValueError(
                f"{self.subcommand}: {type(self.model).__name__} has no {step} (a pretraining "
                "stage). What it learnt is evaluated downstream: fine-tune a classifier from its "
                "checkpoint (--model.init_args.init_from; configs/sm3/finetune.yaml after SM3's "
                f"stage 2, configs/baselines/finetune.yaml after a baseline), then "
                f"{self.subcommand} that run"
            )

    def before_validate(self) -> None:
        self._check_evaluable()
        self._warn_preprocessing(self._ckpt_data, "the checkpoint")
        self._warn_other_run()
        if not self.config_init[self.subcommand].get("ckpt_path"):
            rank_zero_warn(
                f"{self.subcommand} without --ckpt_path: the weights are the config's model as "
                "built (init_from / weights), not a trained run's. To use a fit's, pass e.g. "
                "--ckpt_path <run directory>/checkpoints/best.ckpt (or last.ckpt)"
            )
        if self._ckpt_position is not None:  # TensorBoard: the results at the checkpoint's step
            log_at(self.trainer, *self._ckpt_position)
        for logger in tensorboard_loggers(self.trainer):
            # no hp_metric placeholder -1, which the HParams tab would show as the run's value
            logger._default_hp_metric = False
            if self.subcommand == "validate":
                # no val/* points: the fit logged this validation, and TensorBoard's default
                # loader drops a curve's later points when a point comes at an earlier step
                logger.log_metrics = lambda metrics, step=None: None  # type: ignore[method-assign]

    before_test = before_predict = before_validate

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # always wanted; ContinuedCurves first, its restart mark before anything is logged
        trainer.callbacks.insert(0, ContinuedCurves())
        trainer.callbacks += [StepSeed(), ResumedSchedule(), GlooExit()]
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, {})
        check_accelerator(config.get("trainer", {}))
        resume = self.subcommand == "fit" and config.get("resume")
        if (
            resume
            and not config.get("ckpt_path")
            and not configured_checkpoint_dir(config.get("trainer"))
        ):
            raise ValueError(
                "--resume true: the config's logger has no version, so each run gets a new "
                "version_N folder, where a resumed run would never find this one's last.ckpt. "
                "Name the run: --trainer.logger.init_args.version=NAME (as the published "
                "configs do)"
            )
        self._restoring = (
            resumes(config) if self.subcommand == "fit" else bool(config.get("ckpt_path"))
        )
        init_args = config.get("model", {}).get("init_args") or {}
        skipped = [k for k in ("init_from", "pretrained", "weights") if init_args.get(k)]
        if self._restoring and skipped:
            source = "the checkpoint this fit resumes" if resume else "ckpt_path"
            rank_zero_info(f"{', '.join(skipped)} not loaded: every weight comes from {source}")

    def instantiate_classes(self) -> None:
        """The classes; a model that a checkpoint restores loads no starting weights (they
        need not be there: e.g. scratch space cleared before a requeue)."""
        with restoring(self._restoring):
            super().instantiate_classes()

    def after_predict(self) -> None:
        writer = next(c for c in self.trainer.callbacks if isinstance(c, PredictionWriter))
        if writer.failed:
            if self.trainer.global_rank != 0:  # rank 0 lists them
                raise SystemExit(1)
            raise SystemExit(
                f"predict: {len(writer.failed)} case(s) failed (rows kept with status in "
                f"{writer.path}):{listing([failure(r) for r in writer.failed], 20)}"
            )

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("resume") and config.get("ckpt_path"):
            rank_zero_info(f"resume: continuing from --ckpt_path {config['ckpt_path']}")
        elif config.get("resume"):
            last = last_checkpoint(self.trainer)
            if last.is_file():
                check_ckpt(str(last), "fit", self.config[self.subcommand].get("model"))
                rank_zero_info(f"resume: continuing from {last}")
                config["ckpt_path"] = str(last)
            else:
                rank_zero_info(f"resume: no {last} yet, so the run starts from the beginning")
        check_new_run(self.trainer, config.get("ckpt_path"))
        hparams = self.model.hparams
        for name in ("init_from", "pretrained"):  # the pretraining checkpoint a fit starts from
            if hparams.get(name) and Path(hparams[name]).is_file():
                ckpt = open_checkpoint(hparams[name], mmap=True)
                saved = dict(ckpt.get("datamodule_hyper_parameters", {}))
                self._warn_preprocessing(saved, f"its {name} checkpoint")
        for logger in tensorboard_loggers(self.trainer) if config.get("ckpt_path") else ():
            logger._default_hp_metric = False  # a resumed fit adds no hp_metric placeholder -1
        next(c for c in self.trainer.callbacks if isinstance(c, Preemption)).listen()


def other_run_hint(source: Path, target: Path, save_dir: str | None) -> str:
    """How to keep a command's files with the run of its checkpoint (``source``) rather than
    in ``target``: run from elsewhere when the config's log directory (``save_dir``) is
    relative and ``target`` is that run's layout under this working directory; else use the
    run's own config."""
    cwd = Path.cwd().resolve()
    relative = save_dir is not None and not Path(save_dir).expanduser().is_absolute()
    tail = target.relative_to(cwd).parts if relative and target.is_relative_to(cwd) else ()
    if tail and source.parts[-len(tail) :] == tail:
        home = Path(*source.parts[: -len(tail)])
        return (
            "The config's log directory is relative to the working directory: run from "
            f"{home} to keep them together"
        )
    return f"Use that run's config.yaml (-c {source / 'config.yaml'}) to keep them together"


def failure(row: dict[str, Any]) -> str:
    """A failed prediction's line: its case (row), its id when the data names cases, why."""
    name = f" (id {row['id']})" if "id" in row else ""
    return f"case {row['case']}{name}: {row['status']}"


def check_accelerator(trainer: Any) -> None:
    """Clear errors for a GPU config (the published recipes) where torch finds no CUDA GPU, and
    for BatchNorm synchronised across CPU processes (torch's SyncBatchNorm is GPU-only);
    ``trainer``: the config's trainer settings (a parsed namespace), not a Trainer."""
    on_cpu = "--trainer.accelerator=cpu --trainer.devices=1 --trainer.strategy=auto "
    on_cpu += "--trainer.precision=32-true --trainer.sync_batchnorm=false"
    accelerator, cuda = str(trainer.get("accelerator")), torch.cuda.is_available()
    gpu = cuda or (accelerator == "gpu" and torch.backends.mps.is_available())  # Apple's GPUs
    if accelerator in ("gpu", "cuda") and not gpu:
        raise ValueError(
            f"trainer.accelerator is {accelerator!r}, but torch finds no CUDA GPU here. To run "
            f"this config on the CPU, add {on_cpu}"
        )
    several = str(trainer.get("devices")) not in ("1", "[0]", "auto", "None")  # auto: 1 CPU
    if trainer.get("sync_batchnorm") and several and (accelerator == "cpu" or not cuda):
        raise ValueError(
            "trainer.sync_batchnorm is true, but torch's SyncBatchNorm runs on GPUs only: "
            "with several CPU processes add --trainer.sync_batchnorm=false"
        )


DESCRIPTIONS = {
    "fit": "Train a model from a config: a pretraining stage or fine-tuning.",
    "validate": "Evaluate a checkpoint (--ckpt_path) on the validation split.",
    "test": "Evaluate a checkpoint (--ckpt_path) on the test split and write the test report.",
    "predict": "Predict the cases of --data.init_args.predict_split with a checkpoint "
    "(--ckpt_path) into a CSV file.",
}


def main(args: list[str] | None = None) -> None:
    """The ``skinssl`` command: run the CLI on ``args`` (default: the command line).

    Bad input that skinssl names (data, config, checkpoint: a ValueError it raises) ends the
    command with that message alone; ``SKINSSL_TRACEBACK=1`` shows the traceback instead.
    SIGTERM outside training (Lightning stops at the next batch; in training ``Preemption``
    handles it) exits with status 143 and how to continue; a process whose peer stopped says
    so in one line, as does a full disk, a read-only folder or a permission denied.
    """
    try:
        build_cli(args)  # returns None: a console script's return value is its exit status
    except SIGTERMException:  # Lightning's, a SystemExit without a status: 0 would say done
        if rank_zero_only.rank == 0:
            print(SIGTERM_STOP, file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    except RuntimeError as error:
        traceback = os.environ.get("SKINSSL_TRACEBACK") == "1"
        message = (
            PEER_GONE_MESSAGE
            if any(text in str(error) for text in PEER_GONE)
            else weights_mismatch(str(error))
        )
        if traceback or message is None:
            raise
        raise SystemExit(f"skinssl: error: {message}") from None
    except OSError as error:
        if error.errno not in FILE_SYSTEM_ERRORS or os.environ.get("SKINSSL_TRACEBACK") == "1":
            raise
        path = f" ({error.filename})" if error.filename else ""
        raise SystemExit(
            f"skinssl: error: {error.strerror}{path}: {FILE_SYSTEM_ERRORS[error.errno]}\n"
            "(SKINSSL_TRACEBACK=1 shows where it was raised)"
        ) from None
    except ValueError as error:
        own = own_error(error)
        if own is None or os.environ.get("SKINSSL_TRACEBACK") == "1":
            raise
        raise SystemExit(
            f"skinssl: error: {own}\n(SKINSSL_TRACEBACK=1 shows where it was raised)"
        ) from None


def no_tips(record: logging.LogRecord) -> bool:
    """A log filter: Lightning's tips to install its cloud products are left out."""
    return not record.getMessage().startswith("💡 Tip:")


def build_cli(args: list[str] | None = None, run: bool = True) -> SkinSSLCLI:
    """The CLI on ``args``, run as a subcommand; ``run=False`` only builds it."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # pretraining modules have no validation step, by design; the data modules all have splits
    warnings.filterwarnings("ignore", message=".*`val_dataloader` but have no `validation_step`")
    # stage 2 and the linear/projector settings keep their frozen parts in eval mode on purpose;
    # the modules say which at the start of the fit
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")
    # validation and test metrics are computed from every rank's gathered outputs, the padded
    # duplicates of DistributedSampler dropped: Lightning's two warnings about them do not apply
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('hp_metric'")
    warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders\.")
    # a fit into a folder with checkpoints is a resume (check_new_run refuses anything else)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Lightning's advertisements in the log ("💡 Tip: ... try installing ...")
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if no_tips not in rank_zero_logger.filters:
        rank_zero_logger.addFilter(no_tips)
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
        parser_class=ConciseParser,
        parser_kwargs={
            "description": "skinssl: self-supervised two-modality (dermoscopic + clinical) "
            "skin-lesion classification, SM3 and its baselines. Run a subcommand with -c CONFIG.",
            **{command: {"description": text} for command, text in DESCRIPTIONS.items()},
        },
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
