"""Small helpers for tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


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
        dist.destroy_process_group()


def run_gloo(fn, world: int, out_dir: Path) -> list:
    """``fn(rank)`` in ``world`` spawned processes of one gloo group; their results in rank order.

    ``fn`` must be a module-level function; its result must be savable with ``torch.save``.
    """
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_gloo_entry, args=(fn, world, str(out_dir)), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]
