"""The checkpoint a command starts from: which one (``best``, ``last``, a resume), and the
checks that it is the config's model and run."""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from skinssl.callbacks.preemption import checkpoint_dir
from skinssl.callbacks.run_dir import log_dir
from skinssl.lightning_modules.checkpoints import open_checkpoint


def import_class(path: str) -> type | None:
    """The class a ``class_path`` names, or None when it cannot be imported."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def check_ckpt_model(
    ckpt: dict[str, Any], ckpt_path: str, subcommand: str, class_path: str | None
) -> None:
    """A clear error when the checkpoint ``ckpt`` holds another model class than the config's
    (Lightning would silently swap the config's model for the checkpoint's)."""
    saved = ckpt.get("hyper_parameters", {}).get("_class_path")
    if class_path is None or saved is None:
        return
    wanted, found = import_class(class_path), import_class(saved)
    if (wanted is found) if wanted is not None else (class_path == saved):
        return
    name = wanted.__name__ if wanted is not None else class_path
    hint = ""
    if wanted is not None:
        params = inspect.signature(wanted).parameters
        start = next((p for p in ("init_from", "pretrained") if p in params), None)
        if start and subcommand == "fit":
            hint = f"; to start a {name} from it, pass it as --model.init_args.{start}"
        elif start:  # evaluated: a model trained from it, not the untrained model
            hint = (
                f"; to evaluate what it learnt, fit a {name} from it (--model.init_args.{start}) "
                f"and {subcommand} that run's checkpoint"
            )
    raise ValueError(
        f"--ckpt_path {ckpt_path} is a checkpoint of {saved.rpartition('.')[2]}, but the "
        f"config's model is {name}. `{subcommand}` with --ckpt_path continues or evaluates "
        f"the model that the checkpoint holds{hint}"
    )


def check_new_run(trainer: L.Trainer, ckpt_path: str | None) -> None:
    """A clear error when a fit would start over in a run directory that holds another fit's
    checkpoints (or go on there from another run's): it would overwrite them, and TensorBoard
    would mix the runs' curves. Continuing from one of its own checkpoints (``--resume``, a
    ``--ckpt_path`` in that folder, or Lightning's ``last``/``hpc``) is allowed; from an
    earlier one, the curves are drawn again from its step."""
    folder = checkpoint_dir(trainer)
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    own = ckpt_path in ("last", "hpc") or (
        ckpt_path is not None and Path(ckpt_path).resolve().parent == folder.resolve()
    )
    if not found or own:
        return
    run = log_dir(trainer)
    listed = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    raise ValueError(
        f"fit: the run directory {run} already holds a fit ({folder}: {listed}). To continue "
        f"it, add --resume true (it needs last.ckpt there) or --ckpt_path one of those; to start "
        f"it again, delete it first (rm -r {run}); to keep both runs, give this one another "
        "--trainer.logger.init_args.version"
    )


OPTIMIZER_SETTINGS = ("weight_decay", "adam_eps")
"""Model arguments a resumed fit cannot change: the optimizer state it restores keeps the values
they were saved with. (Learning rates and their schedule follow the run's config: see
``ResumedSchedule``.)"""


def check_ckpt(path: str, subcommand: str, model: Any) -> dict[str, Any]:
    """The checks of a checkpoint to start ``subcommand`` from (``model``: the config's
    class_path and init_args); returns the checkpoint (its tensors mapped, not read)."""
    ckpt = open_checkpoint(path, mmap=True)  # tensors stay on disk
    check_ckpt_model(ckpt, path, subcommand, model.get("class_path") if model else None)
    init_args = model.get("init_args") if model else None
    if subcommand == "fit" and init_args is not None:
        warn_resumed_settings(ckpt, path, vars(init_args))
    return ckpt


def configured_checkpoint_dir(trainer: Any) -> Path | None:
    """The checkpoint folder of the run that a config's ``trainer`` section describes, found
    before the trainer is built (``checkpoint_dir`` of the built trainer): the first
    ModelCheckpoint's ``dirpath``, else ``checkpoints`` in the first logger's directory; None
    when the logger has no fixed version (each run gets a new ``version_N``)."""
    trainer = trainer or {}
    for callback in trainer.get("callbacks") or []:
        kind = import_class(getattr(callback, "class_path", ""))
        if isinstance(kind, type) and issubclass(kind, ModelCheckpoint):
            if callback.init_args.get("dirpath"):
                return Path(callback.init_args.dirpath)
            break
    root = trainer.get("default_root_dir") or os.getcwd()
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is False:
        return Path(root) / "checkpoints"
    if logger in (None, True) or logger.init_args.get("version", "") is None:
        return None  # (Lightning's default logger has no version either)
    built = import_class(logger.class_path)(**logger.init_args.as_dict())
    return Path(built.log_dir or built.save_dir or root) / "checkpoints"


def run_checkpoint(trainer: Any, which: str) -> str:
    """``--ckpt_path best|last`` outside a fit: ``best.ckpt`` or ``last.ckpt`` in the checkpoint
    folder of the config's run (for ``best``, else the best model that ``last.ckpt`` records),
    with a clear error when there is none."""
    folder = configured_checkpoint_dir(trainer)
    if folder is None:
        raise ValueError(
            f"--ckpt_path {which}: the config's logger has no version, so each run gets a new "
            "version_N folder and this one is unknown: pass the checkpoint's path"
        )
    path = folder / f"{which}.ckpt"
    if which == "best" and not path.is_file() and (folder / "last.ckpt").is_file():
        states = open_checkpoint(folder / "last.ckpt", mmap=True).get("callbacks", {})
        monitored = next((s for s in states.values() if s.get("monitor")), {})  # Lightning's
        recorded = Path(monitored.get("best_model_path") or path)
        path = recorded if recorded.is_file() else folder / recorded.name  # (a moved run)
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        raise ValueError(
            f"--ckpt_path {which}: no {which} checkpoint in this config's run, {folder} "
            f"({'holds ' + ', '.join(found) if found else 'no checkpoints there'}). Pass the "
            "checkpoint's path, or the config of the run that saved it (its config.yaml)"
        )
    return str(path)


def resumes(config: Any) -> bool:
    """Whether a fit's config continues a checkpoint that is there: a ``ckpt_path`` file (or
    URL), or ``last`` or ``resume`` with a ``last.ckpt`` in its run's checkpoint folder."""
    path = config.get("ckpt_path")
    if path == "last" or (not path and config.get("resume")):
        folder = configured_checkpoint_dir(config.get("trainer"))
        return folder is not None and (folder / "last.ckpt").is_file()
    return bool(path) and path not in ("best", "hpc") and ("://" in path or Path(path).is_file())


def logged_at(ckpt: dict[str, Any]) -> int:
    """The logger's step of a checkpoint's last batch (and of the validation after it): one
    below its optimizer steps, wherever in the epoch it was saved."""
    return max(0, int(ckpt.get("global_step", 0)) - 1)


def warn_resumed_settings(ckpt: dict[str, Any], path: str, init_args: dict[str, Any]) -> None:
    """Warn when a checkpoint to resume predates some of the model's arguments (the run goes
    on with their configured values), or when the configured optimizer settings differ from
    the checkpoint's (the optimizer state it restores keeps its own)."""
    saved = ckpt.get("hyper_parameters") or {}
    if not saved:
        return
    newer = sorted(k for k in init_args if k not in saved)
    changed = [
        k for k in OPTIMIZER_SETTINGS if k in init_args and k in saved and init_args[k] != saved[k]
    ]
    if newer:
        values = ", ".join(f"{k}={init_args[k]!r}" for k in newer)
        rank_zero_warn(
            f"ckpt_path {path} predates the model argument(s) {newer}: the resumed run goes on "
            f"with {values}; the optimizer state it restores keeps its own settings (AdamW's "
            "eps among them)"
        )
    if changed:
        values = ", ".join(f"{k}: {saved[k]!r} -> {init_args[k]!r}" for k in changed)
        rank_zero_warn(
            f"ckpt_path {path}: the optimizer settings differ from the checkpoint's ({values}); "
            "a resumed fit restores its optimizer, which keeps the saved values. "
            "Start a new run from the weights (init_from / pretrained) to change them"
        )


def warn_model_from_ckpt(ckpt: dict[str, Any], subcommand: str, model: Any) -> None:
    """A warning naming the config's model settings that ``--ckpt_path`` replaces: Lightning
    builds the model with the checkpoint's (its starting weights aside, which are not loaded)."""
    init_args = model.get("init_args") if model else None
    saved = ckpt.get("hyper_parameters", {})
    if init_args is None:
        return
    given = init_args.as_dict() if hasattr(init_args, "as_dict") else vars(init_args)
    differ = {
        k: (v, saved[k])
        for k, v in given.items()
        if k in saved
        and k not in ("init_from", "pretrained", "weights")
        and json.dumps(v, default=str) != json.dumps(saved[k], default=str)
    }
    if differ:
        listed = "; ".join(f"{k}: config {a!r}, checkpoint {b!r}" for k, (a, b) in differ.items())
        rank_zero_warn(
            f"{subcommand}: the model is built with the checkpoint's settings, not the "
            f"config's ({listed})"
        )
