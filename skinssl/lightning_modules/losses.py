"""Losses as small pure functions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F

from skinssl.distributed import world
from skinssl.labels import UNKNOWN


def mean_known_ce(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    temperature: float,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(mean, each) of CE(logits / T, target) over (logits, target) pairs (targets -1 = unknown).

    Each pair's CE is the mean over its known targets of the whole batch, all ranks' together
    (as :func:`global_mean`: DDP's gradient averaging gives the whole batch's gradient, and
    every rank reports the whole-batch values). A pair without a known target on any rank has
    CE 0 and is left out of the mean, yet its logits stay in the graph (DDP expects every
    parameter to receive a gradient). No host-device sync.
    """
    totals, counts = [], []
    for logits, target in pairs:
        ce = F.cross_entropy(
            logits.float() / temperature, target, ignore_index=UNKNOWN, reduction="sum"
        )
        totals.append(ce)
        counts.append((target != UNKNOWN).sum().float())
    each, count = whole_batch_means(torch.stack(totals), torch.stack(counts), across_ranks=True)
    has = (count > 0).float()
    return (each * has).sum() / has.sum().clamp(min=1), list(each.unbind())


def whole_batch_means(
    totals: torch.Tensor, counts: torch.Tensor, across_ranks: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, counts) of the whole batch: each entry's total over its count, all ranks' summed
    (each rank passes its own totals and counts).

    The means are scaled so that DDP's gradient averaging over ranks gives the gradient of the
    whole batch's means, even when ranks hold different counts, and their values are the whole
    batch's on every rank. Without a process group (or ``across_ranks`` False), local.
    """
    size = world()[1] if across_ranks else 1
    if size == 1:
        return totals / counts.clamp(min=1.0), counts
    counts = counts.detach().clone()
    torch.distributed.all_reduce(counts)
    means = totals * size / counts.clamp(min=1.0)
    value = means.detach().clone()
    torch.distributed.all_reduce(value)
    return means + (value / size - means.detach()), counts


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated (gradients flow back to each owner) and this rank's offset.

    Every rank must pass the same number of rows.
    """
    rank, size = world()
    if size == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), rank * x.shape[0]


Fn = TypeVar("Fn", bound=Callable[..., torch.Tensor])


def float32(fn: Fn) -> Fn:
    """Run ``fn`` with autocast off and its floating-point tensor arguments in float32."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
        def cast(x: object) -> object:
            return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type
        with torch.autocast(device, enabled=False):
            return fn(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


@float32  # similarities in float32
def nt_xent(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = 0.1,
    valid: torch.Tensor | None = None,
    gather: bool = False,
) -> torch.Tensor:
    """SimCLR's NT-Xent between paired rows of ``a`` and ``b`` ([N, D] each).

    Each of the 2N rows is an anchor whose positive is its partner; every other row (of all
    ranks when ``gather``) is a negative. ``valid`` [N] (bool) drops pairs as anchors, e.g.
    cross-modal pairs whose clinical image is a stand-in; they stay as negatives. The result
    equals the mean over all ranks' valid anchors, as one process with the whole batch.
    """
    return _nt_xent(F.normalize(a, dim=1), F.normalize(b, dim=1), temperature, valid, gather)


def _nt_xent(
    a: torch.Tensor, b: torch.Tensor, temperature: float, valid: torch.Tensor | None, gather: bool
) -> torch.Tensor:
    n = a.shape[0]
    if gather:
        all_a, offset = gather_with_grad(a)
        all_b, _ = gather_with_grad(b)
    else:
        all_a, all_b, offset = a, b, 0
    total = all_a.shape[0]
    logits = torch.cat([a, b]) @ torch.cat([all_a, all_b]).T / temperature
    rows = torch.arange(2 * n, device=a.device)
    own = torch.arange(n, device=a.device) + offset
    self_cols = torch.cat([own, own + total])
    pos_cols = torch.cat([own + total, own])
    # torch.full fills on the device; torch.tensor(value, device=...) would copy and wait
    minus_inf = torch.full((), float("-inf"), device=a.device, dtype=logits.dtype)
    logits = logits.index_put((rows, self_cols), minus_inf)
    per_anchor = F.cross_entropy(logits, pos_cols, reduction="none")
    weight = None if valid is None else valid.float().repeat(2)
    return global_mean(per_anchor, weight, across_ranks=gather)


def global_mean(
    values: torch.Tensor, weight: torch.Tensor | None = None, across_ranks: bool = True
) -> torch.Tensor:
    """Weighted mean of per-sample ``values`` over all ranks' samples (0 if no weight).

    Each rank passes its own samples. The result is scaled so that DDP's gradient averaging
    over ranks gives the gradient of the whole-batch mean, even when ranks hold different
    numbers of valid samples; every rank reports the whole-batch value. Without a process
    group (or with ``across_ranks`` False) it is the local weighted mean.
    """
    if weight is None:
        weight = torch.ones_like(values)
    total, count = (values * weight).sum(), weight.sum()
    return whole_batch_means(total[None], count[None], across_ranks)[0][0]


def alignment(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance between normalised positive pairs (Wang & Isola, 2020); with
    ``weight`` [N] a weighted mean (NaN if every weight is 0)."""
    d = (F.normalize(a.float(), dim=1) - F.normalize(b.float(), dim=1)).pow(2).sum(1)
    if weight is None:
        return d.mean()
    w = weight.float()
    return (d * w).sum() / w.sum()


def uniformity(x: torch.Tensor, t: float = 2.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """log E exp(-t ||x_i - x_j||^2) over distinct normalised rows (Wang & Isola, 2020); with
    ``weight`` [N] each pair counts ``w_i * w_j`` (NaN without two weighted rows)."""
    x = F.normalize(x.float(), dim=1)
    if weight is None:
        return torch.pdist(x).pow(2).mul(-t).exp().mean().log()
    w = weight.float()
    pairs = torch.triu(w[:, None] * w[None, :], diagonal=1)
    sq = (2 - 2 * x @ x.T).clamp(min=0)  # unit rows
    return ((pairs * sq.mul(-t).exp()).sum() / pairs.sum()).log()
