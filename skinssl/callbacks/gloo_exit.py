"""A clean process exit after a CPU (gloo) multi-process run.

torch's gloo worker threads release their last collective a moment after the caller's
``wait()`` returns, and that release takes the GIL. A rank with nothing left to do can reach
interpreter shutdown first; the thread is then killed while unwinding and the process aborts
with ``terminate called without an active exception`` (SIGABRT) after a successful run
(pytorch/pytorch#190489). Releasing the GIL briefly at the end of the run lets the threads
finish first.
"""

from __future__ import annotations

import time

import lightning as L
import torch.distributed as dist


def let_gloo_workers_finish(seconds: float = 0.2) -> None:
    """Inside a gloo process group, sleep ``seconds`` (GIL released) so that its worker threads
    release their last collective; call it after a process's last collective."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        time.sleep(seconds)


class GlooExit(L.Callback):
    """At the end of a run in a gloo process group, :func:`let_gloo_workers_finish`."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        let_gloo_workers_finish(self.seconds)
