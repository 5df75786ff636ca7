"""What is reported of a k-means clustering: its time on the device, its results on their way
to the host, and the statistics and logs made from them (the callback makes them after the next
training step is queued, so that on a GPU they are made while it runs)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor

from skinssl.callbacks.run_dir import tensorboard_loggers
from skinssl.evaluation.agreement import contingency, normalized_mutual_info, table_ari, table_nmi
from skinssl.labels import HEAD_NAMES, UNKNOWN


def clustering_metrics(
    assignments: np.ndarray, previous: np.ndarray | None, true: np.ndarray | None, k: int
) -> dict[str, float]:
    """Cluster sizes, agreement with the previous clustering and with the true labels if known."""
    sizes = np.bincount(assignments, minlength=k)
    out = {"size_min": float(sizes.min()), "size_max": float(sizes.max())}
    if previous is not None:
        both = previous >= 0
        if both.any():
            table = contingency(previous[both], assignments[both])  # once for both scores
            out["nmi_prev"], out["ari_prev"] = table_nmi(table), table_ari(table)
    if true is not None:
        known = true != UNKNOWN
        if known.any():
            out["nmi_true"] = normalized_mutual_info(true[known], assignments[known])
    return out


class Clock:
    """Times work queued on ``device`` from :meth:`start` to :meth:`stop`: on a GPU by CUDA
    events around its kernels (read once they have run), elsewhere by the wall clock."""

    def __init__(self, device: torch.device) -> None:
        self._device, self._seconds = device, 0.0
        self._events = None
        if device.type == "cuda":
            self._events = [torch.cuda.Event(enable_timing=True, blocking=True) for _ in "ab"]

    def start(self) -> None:
        if self._events is not None:
            self._events[0].record(torch.cuda.current_stream(self._device))
        self._seconds = time.perf_counter()

    def stop(self) -> None:
        if self._events is not None:
            self._events[1].record(torch.cuda.current_stream(self._device))
        self._seconds = time.perf_counter() - self._seconds

    def seconds(self) -> float:
        """The time between start and stop; on a GPU, waits for the work to be done."""
        if self._events is None:
            return self._seconds
        self._events[1].synchronize()
        return self._events[0].elapsed_time(self._events[1]) / 1e3


class HostCopies:
    """Copies of tensors on the host, made without waiting; :meth:`get` waits for the copies
    only (not for whatever was queued on the device after them)."""

    def __init__(self, **tensors: Tensor | None) -> None:
        self._copies = {
            name: None if t is None else t.to("cpu", non_blocking=t.is_cuda)
            for name, t in tensors.items()
        }
        self._done = None
        on_gpu = [t.device for t in tensors.values() if t is not None and t.is_cuda]
        if on_gpu:
            self._done = torch.cuda.Event(blocking=True)
            self._done.record(torch.cuda.current_stream(on_gpu[0]))

    def get(self) -> dict[str, Tensor | None]:
        if self._done is not None:
            self._done.synchronize()
        return self._copies


@dataclass
class Report:
    """What a clustering's statistics and logs are made from: the training rows, the host's
    measurements, the k-means' time and its results on their way to the host."""

    step: int
    rows: np.ndarray
    metrics: dict[str, float]
    clock: Clock
    results: HostCopies


def write_report(trainer: L.Trainer, report: Report, sizes: dict[str, int]) -> None:
    """A clustering's statistics (per head of ``sizes``: K) as scalars to every logger, and its
    cluster sizes as histograms to TensorBoard."""
    results = report.results.get()
    metrics = {**report.metrics, "kmeans/seconds": report.clock.seconds()}
    start = time.perf_counter()
    true = np.asarray(trainer.datamodule.cases.labels)
    assignments = results["assignments"].numpy()
    previous = results["previous"]
    objectives = results["objectives"].tolist()
    for j, (head, k) in enumerate(sizes.items()):
        head_true = true[report.rows, HEAD_NAMES.index(head)] if head in HEAD_NAMES else None
        prev = None if previous is None else previous[j].numpy()
        stats = clustering_metrics(assignments[j], prev, head_true, k)
        stats["objective"] = objectives[j]
        metrics.update({f"kmeans/{head}/{name}": v for name, v in stats.items()})
    metrics["kmeans/statistics_seconds"] = time.perf_counter() - start
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=report.step)
    for logger in tensorboard_loggers(trainer):
        for j, (head, k) in enumerate(sizes.items()):
            logger.experiment.add_histogram(
                f"kmeans/{head}/cluster_sizes",
                assignments[j],
                global_step=report.step,
                bins=np.arange(k + 1) - 0.5,
            )
