"""Loading parts of this framework's checkpoints into other models, with clear mismatch errors."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from skinssl.host import where

_restoring: ContextVar[bool] = ContextVar("skinssl_restoring", default=False)
T = TypeVar("T")


@contextmanager
def restoring(active: bool = True) -> Iterator[None]:
    """Models built inside load no starting weights (``weights``, ``init_from``, ``pretrained``):
    a checkpoint restores every weight afterwards (a resumed fit, an evaluation). Their
    settings stay as given, in their hyper-parameters and the run's config."""
    token = _restoring.set(active)
    try:
        yield
    finally:
        _restoring.reset(token)


def starting_weights(value: T) -> T | None:
    """``value``, a starting-weights setting, or None while :func:`restoring`."""
    return None if _restoring.get() else value


def load_tensors(path: str | Path, what: str, mmap: bool = False) -> Any:
    """``torch.load`` of a file of tensors and plain values (weights_only; ``mmap``: tensors
    stay on disk until read), with one clear error naming ``path`` and ``what`` it is (e.g.
    "checkpoint") for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}{where(path)}")
    zipped = zipfile.is_zipfile(path)  # torch.save's format since 1.6
    with path.open("rb") as f:
        start = f.read(4)
    legacy = start[:1] == b"\x80"  # the pickle stream of older torch.save files
    if not (zipped or legacy):
        cut = start == b"PK\x03\x04"  # a zip's start without its end
        raise ValueError(
            f"cannot read {what} {path}: "
            + (
                "the file is incomplete (the disk was full, or the process stopped while "
                "saving it): delete it, or use an earlier checkpoint"
                if cut
                else "not a file torch.save wrote"
            )
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except Exception as e:  # truncated, or not only tensors and plain values
        text = str(e)
        error = f"{type(e).__name__}: {(text.splitlines() or [''])[0]}"
        if isinstance(e, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
            detail = text.split("WeightsUnpickler error:")[1].split("Check the documentation")[0]
            reason = " ".join(detail.split()).split(". ")[0]
            error = (
                f"PyTorch's safe loader refused it ({reason}); skinssl loads only tensors and "
                "plain values"
            )
        raise ValueError(f"cannot read {what} {path}: {error}") from None


def open_checkpoint(
    path: str | Path, mmap: bool = False, what: str = "checkpoint"
) -> dict[str, Any]:
    """A Lightning checkpoint's contents, loaded with weights_only (``mmap``: tensors stay on
    disk until read), with one clear error for a missing, unreadable or foreign file (naming
    ``what`` it is, e.g. the option that gave it)."""
    ckpt = load_tensors(path, what, mmap)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a Lightning checkpoint of skinssl (no 'state_dict'); a ResNet "
            "state dict goes to the model's `weights` argument"
        )
    return ckpt


def read_checkpoint(
    path: str | Path, what: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, hyper_parameters) of a Lightning checkpoint, loaded with weights_only."""
    ckpt = open_checkpoint(path, what=what)
    return ckpt["state_dict"], dict(ckpt.get("hyper_parameters", {}))


def checkpoint_kind(hparams: Mapping) -> str:
    """The class whose checkpoint this is, from its hyper-parameters (saved by the CLI), or ''."""
    return str(hparams.get("_class_path", "")).rpartition(".")[2]


def check_hparams(hparams: Mapping, expected: Mapping[str, object], path: str | Path) -> None:
    """Error naming every setting in which the checkpoint differs from this model, and the
    arguments that would make this model fit it."""
    differ = [k for k, v in expected.items() if k in hparams and hparams[k] != v]
    if differ:
        diffs = [f"{k}: checkpoint {hparams[k]!r}, this model {expected[k]!r}" for k in differ]
        fix = " ".join(f"--model.init_args.{k}={_cli_value(hparams[k])}" for k in differ)
        raise ValueError(
            f"{path} does not fit this model: " + "; ".join(diffs) + f". To use it, add {fix}"
        )


def _cli_value(value: object) -> str:
    """A setting as a command-line value (booleans as YAML writes them)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_part(
    target: nn.Module,
    state: Mapping[str, torch.Tensor],
    prefix: str,
    path: str | Path,
    optional: tuple[str, ...] = (),
) -> list[str]:
    """Load ``state``'s ``prefix.*`` tensors into ``target``; return the target keys left as is.

    Keys starting with one of ``optional`` may be on one side only (per-head parameters: heads
    that only the pretraining or only this model has); any other absent, unexpected or
    differently shaped tensor is an error that names it.
    """
    part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not part:
        found = sorted({k.split(".")[0] for k in state})
        raise ValueError(f"{path} holds no '{prefix}*' weights; its parts are {found}")
    own = target.state_dict()
    shapes = [
        f"{prefix}{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in part.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in part and not k.startswith(optional)]
    unexpected = [k for k in part if k not in own and not k.startswith(optional)]
    if shapes or missing or unexpected:
        raise ValueError(
            f"{path} does not fit this model ({prefix.rstrip('.')}): "
            f"shape differs {shapes[:5]}, missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    target.load_state_dict({k: v for k, v in part.items() if k in own}, strict=False)
    return [k for k in own if k not in part]


def load_trunks(
    encoder: nn.Module, path: str | Path, backbone: str, share_trunk: bool, what: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint's ``encoder.*`` trunks after checking backbone and trunk sharing.

    A single-modality pretraining checkpoint (``modality: derm|clinic``) holds its one trunk
    under both names and initialises both trunks, whatever ``share_trunk``; a checkpoint
    without ``share_trunk`` (a multi-modal baseline) has two trunks.
    Returns the checkpoint's (state_dict, hyper_parameters) for the caller's other parts;
    ``what`` names the checkpoint in errors (the argument that gave it).
    """
    state, hparams = read_checkpoint(path, what)
    expected: dict[str, object] = {"backbone": backbone}
    if hparams.get("modality") not in ("derm", "clinic"):
        hparams = {"share_trunk": False, **hparams}
        expected["share_trunk"] = share_trunk
    check_hparams(hparams, expected, path)
    load_part(encoder, state, "encoder.", path)
    return state, hparams
