"""Small helpers for tests."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch

from skinssl.callbacks.gloo_exit import let_gloo_workers_finish
from skinssl.datamodules import SyntheticDerm7ptDataModule, Views


def write_jpeg(path: Path, rng: np.random.Generator, shape: tuple[int, int] = (60, 80)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rng.integers(0, 255, size=(*shape, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    path.write_bytes(buf.tobytes())


def _gloo_entry(rank: int, fn, world: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/pg_init", rank=rank, world_size=world
    )
    try:
        torch.save(fn(rank), Path(out_dir) / f"rank{rank}.pt")
    finally:
        let_gloo_workers_finish()  # see skinssl/callbacks/gloo_exit.py
        dist.destroy_process_group()


def group_means(x: torch.Tensor) -> torch.Tensor:
    """Each row and its (BatchNorm) batch's mean side by side: a stand-in network that shows
    which rows were normalised together."""
    return torch.cat([x, x.mean(0, keepdim=True).expand_as(x)], dim=1)


def run_gloo(fn, world: int, out_dir: Path) -> list:
    """``fn(rank)`` in ``world`` spawned processes of one gloo group; their results in rank order.

    ``fn`` must be a module-level function; its result must be savable with ``torch.save``.
    """
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_gloo_entry, args=(fn, world, str(out_dir)), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


class SignalAt(L.Callback):
    """Sends this process ``signal_name`` before training step ``step``: a stand-in for
    SLURM's warning before the time limit, or a ``kill`` (usable from the CLI as
    ``helpers.SignalAt``)."""

    def __init__(self, step: int, signal_name: str = "SIGUSR1") -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def tiny_synthetic(folder: Path, views: Views) -> SyntheticDerm7ptDataModule:
    """A tiny synthetic Derm7pt-shaped set (40 cases, 64 px, 32-px views), made once per folder."""
    return SyntheticDerm7ptDataModule(
        root=str(folder),
        num_cases=40,
        synthetic_size=64,
        image_size=32,
        cache_size=36,
        batch_size=8,
        num_workers=0,
        derm_views=views,
    )
