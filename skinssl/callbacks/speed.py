"""Faster training steps without changing what is computed: channels-last and torch.compile."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn


def _channels_last(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def trunks(module: nn.Module) -> list[nn.Module]:
    """The convolutional trunks of a skinssl module (one when the trunk is shared)."""
    encoder = getattr(module, "encoder", None)
    if encoder is None:
        return []
    return list(dict.fromkeys(m for m in (encoder.derm, encoder.clinic)))


def speed_up(
    module: nn.Module, channels_last: bool, compile: bool, backend: str = "inductor"
) -> list[nn.Module]:
    """Apply the options to ``module``'s trunks in place; return the trunks changed.

    ``channels_last``: weights and inputs in NHWC (tensor-core convolutions under mixed
    precision). ``compile``: ``nn.Module.compile`` on each trunk, in place, so parameter names
    and checkpoints are unchanged.
    """
    changed = trunks(module)
    for trunk in changed:
        if channels_last:
            trunk.to(memory_format=torch.channels_last)
            trunk.register_forward_pre_hook(_channels_last)
        if compile:
            trunk.compile(backend=backend)
    return changed


class Speed(L.Callback):
    """Step-speed options for the trunks, set in the config (CLI group ``speed``).

    Args:
        channels_last: channels-last weights and inputs (use with a GPU and mixed precision).
        compile: ``torch.compile`` each trunk (the first steps are slower while it compiles).
        compile_backend: torch.compile backend (``inductor``; ``eager`` only checks tracing).
    """

    def __init__(
        self, channels_last: bool = False, compile: bool = False, compile_backend: str = "inductor"
    ) -> None:
        self.channels_last = channels_last
        self.compile = compile
        self.compile_backend = compile_backend
        self._done = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._done or not (self.channels_last or self.compile):
            return
        changed = speed_up(pl_module, self.channels_last, self.compile, self.compile_backend)
        self._done = True
        if changed:
            rank_zero_info(
                f"speed: {len(changed)} trunk(s), channels_last={self.channels_last}, "
                f"compile={self.compile} ({self.compile_backend})"
            )
