"""The process group, when there is one: rank and size, and gathering rows from every rank."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_rows(t: Tensor) -> Tensor:
    """Rows of ``t`` from every rank, concatenated in rank order (sizes may differ; no
    gradient)."""
    if world()[1] == 1:
        return t
    return torch.cat(gather_all_tensors(t.contiguous()))


def gather_objects(rows: list[Any]) -> list[Any]:
    """Every rank's ``rows`` (picklable), concatenated in rank order."""
    size = world()[1]
    if size == 1:
        return rows
    parts: list[list[Any]] = [[] for _ in range(size)]
    torch.distributed.all_gather_object(parts, rows)
    return [r for part in parts for r in part]
