"""The k-means of pseudo-labels, on arrays and tensors, without Lightning.

``kmeans``: FAISS spherical k-means (CPU, or one GPU with a FAISS GPU build).
``dot_kmeans_heads``: the authors' k-means (their ``cluster_memory``) of several heads at once
in torch, on the features' device, nothing read back; ``GraphedSteps`` replays its iterations
from a CUDA graph. ``feature_problems`` / ``checked_features`` say why features cannot be clustered.
:class:`skinssl.callbacks.KMeansPseudoLabels` runs them during training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

Steps = Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor]]


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run FAISS with ``n`` OpenMP threads, then restore the previous setting."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def shape_problem(shape: tuple[int, ...], k: int) -> str:
    """Why features of ``shape`` cannot be clustered into ``k`` clusters ('' if they can)."""
    if len(shape) != 2:
        return f"features must be a 2-D [samples, dim] array, got shape {shape}"
    if shape[0] < k:
        return f"k-means with K = {k} clusters needs at least {k} samples, got {shape[0]}"
    return ""


def non_finite_problem(bad: int, shape: tuple[int, ...]) -> str:
    """The message for ``bad`` NaN/inf values in features of ``shape`` ('' for none)."""
    if not bad:
        return ""
    return f"{bad} non-finite (NaN/inf) values in the {shape[0]} x {shape[1]} features"


def feature_problems(features: list[Tensor], ks: list[int]) -> list[str]:
    """Why each of ``features`` (one [n, D] tensor per head) cannot be clustered into its
    ``ks`` clusters, '' where it can (:func:`shape_problem`, NaN/inf values). All heads are
    checked with one read-back from the device (a finite sum: every value is finite); values
    are counted only where a sum is not."""
    problems = [shape_problem(tuple(x.shape), k) for x, k in zip(features, ks, strict=True)]
    shaped = [i for i, p in enumerate(problems) if not p]
    if shaped:
        finite = torch.stack([features[i].float().sum() for i in shaped]).isfinite().tolist()
        for i, ok in zip(shaped, finite, strict=True):
            bad = 0 if ok else int((~features[i].isfinite()).sum())
            problems[i] = non_finite_problem(bad, tuple(features[i].shape))
    return problems


def checked_features(features: np.ndarray, k: int) -> np.ndarray:
    """``features`` as a contiguous float32 [n, d] array; a clear error if it cannot be
    clustered into ``k`` clusters (as :func:`feature_problems`, in numpy: torch's thread pool
    would compete with FAISS's, which runs next)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    problem = shape_problem(x.shape, k)
    if not problem:
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(x.sum())  # a finite sum: every value is finite (a fast check)
        problem = non_finite_problem(0 if finite else int((~np.isfinite(x)).sum()), x.shape)
    if problem:
        raise ValueError(problem)
    return x


def kmeans(
    features: np.ndarray,
    k: int,
    niter: int = 10,
    nredo: int = 1,
    seed: int = 0,
    device: int | None = None,
    resources: Any = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Spherical k-means of the L2-normalised rows of ``features`` with FAISS.

    Every sample is used (no subsampling). ``seed`` is any int (FAISS takes it modulo 2**31,
    as a C int; a run's seed has up to 32 bits). ``device`` is a CUDA ordinal to run on one
    GPU with ``resources`` (a ``faiss.StandardGpuResources``, created if None), or None for the
    CPU.
    Returns the L2-normalised centroids [k, d], each sample's nearest centroid (inner product)
    [n] and the objective: the mean cosine similarity of the samples to their centroid.
    """
    x = checked_features(features, k)
    n, d = x.shape
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        nredo=nredo,
        seed=seed % 2**31,
        spherical=True,
        min_points_per_centroid=1,
        max_points_per_centroid=-(-n // k),  # k * this >= n: FAISS never subsamples
    )
    if device is not None:
        config = faiss.GpuIndexFlatConfig()
        config.device = device
        config.useFloat16 = False
        if resources is None:
            resources = faiss.StandardGpuResources()
        km.index = faiss.GpuIndexFlatIP(resources, d, config)
    km.train(x)
    similarity, assignments = km.assign(x)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    return centroids, assignments.astype(np.int64), float(similarity.mean())


def dot_kmeans(
    features: np.ndarray, k: int, niter: int = 10, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray, float]:
    """The authors' k-means (their ``cluster_memory``) of one head's :func:`checked_features` on
    ``device``; returns what :func:`kmeans` returns."""
    x = torch.from_numpy(checked_features(features, k)).to(device)
    centroids, assignments, objective = dot_kmeans_heads([x], [k], niter, seed)[0]
    return centroids.cpu().numpy(), assignments.cpu().numpy(), float(objective)


def dot_kmeans_heads(
    features: list[Tensor],
    ks: list[int],
    niter: int = 10,
    seed: int = 0,
    batch_bytes: int = 2**28,
    steps: Steps | None = None,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The authors' k-means (their ``cluster_memory``) of several heads at once, in torch on the
    features' device.

    Head ``h`` clusters ``features[h]``, a float32 [n, D_h] tensor without problems (see
    :func:`feature_problems`; the same n and device for all), into ``ks[h]`` clusters. Each
    head starts from K random samples as they are, drawn in turn from one generator seeded
    ``seed``; each iteration assigns every sample to the centroid of largest dot product, sets
    each centroid to the mean of its (unnormalised) members, keeps an empty cluster's previous
    centroid and L2-normalises the centroids; a final assignment step gives the labels. Heads
    run in batches of up to ``batch_bytes`` of features (zero-padded to the largest D and K),
    so that at Derm7pt size a GPU runs one set of kernels per iteration, not one per head.
    ``steps`` runs the iterations: :func:`dot_kmeans_steps` (the default) or a
    :class:`GraphedSteps`.

    Returns per head its L2-normalised centroids [K, D_h], assignments [n] (int64) and
    objective (a 0-d tensor: the mean cosine similarity of the samples to their centroid), on
    the device. Nothing is read back: on a GPU the work is queued and this returns at once.
    """
    if niter < 1:
        raise ValueError(f"niter = {niter}: the authors' k-means needs at least 1 iteration")
    n = len(features[0])
    if any(len(x) != n for x in features):
        raise ValueError(f"every head needs the same samples; got {[len(x) for x in features]}")
    gen = torch.Generator().manual_seed(seed)
    starts = [torch.randperm(n, generator=gen)[:k] for k in ks]
    per_batch = max(1, batch_bytes // (4 * n * max(x.shape[1] for x in features)))
    found = []
    for i in range(0, len(ks), per_batch):
        part = slice(i, i + per_batch)
        found += dot_kmeans_batch(
            features[part], ks[part], starts[part], niter, steps or dot_kmeans_steps
        )
    return found


def dot_kmeans_batch(
    features: list[Tensor], ks: list[int], starts: list[Tensor], niter: int, steps: Steps
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """:func:`dot_kmeans_heads` of some heads as one batch, head ``h`` starting from the
    samples ``starts[h]`` (a CPU index)."""
    dim, device = max(x.shape[1] for x in features), features[0].device
    x = torch.stack([F.pad(f, (0, dim - f.shape[1])) if f.shape[1] < dim else f for f in features])
    rows = pad_sequence(starts, batch_first=True).to(device, non_blocking=True)  # [H, max K]
    valid = pad_sequence([torch.ones(k, dtype=torch.bool) for k in ks], batch_first=True)
    with full_float32():
        centroids, assignments, cosine = steps(x, rows, valid.to(device, non_blocking=True), niter)
    return [
        (centroids[h, :k, : f.shape[1]], assignments[h], cosine[h])
        for h, (f, k) in enumerate(zip(features, ks, strict=True))
    ]


def dot_kmeans_steps(
    x: Tensor, rows: Tensor, valid: Tensor, niter: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The iterations of :func:`dot_kmeans_heads`: samples ``x`` [H, n, D], starting from the
    samples ``rows`` [H, K] of which ``valid`` [H, K] are used; returns (centroids [H, K, D],
    labels [H, n], objectives [H]).

    Everything stays on the device and nothing is read back (a ``bincount`` would wait for
    the device to size its output): on a GPU the kernels are queued, and they could be
    captured in a CUDA graph. Sums and counts come from one ``index_add_``, whose additions on
    a GPU run in a varying order unless deterministic algorithms are on
    (``trainer.deterministic: true``), as for the training step's own kernels. A centroid is
    its members' sum normalised: the same direction as their mean."""
    heads, most = valid.shape
    centroids = x.gather(1, rows[..., None].expand(-1, -1, x.shape[2]))  # padding: never used
    flat = torch.cat([x, torch.ones_like(x[..., :1])], 2).flatten(0, 1)  # last column counts
    offset = torch.arange(heads, device=x.device)[:, None] * most
    unused = torch.zeros_like(valid, dtype=x.dtype).masked_fill(~valid, -torch.inf)[:, None]
    for _ in range(niter):
        slots = (torch.baddbmm(unused, x, centroids.transpose(1, 2)).argmax(2) + offset).flatten()
        sums = flat.new_zeros(heads * most, flat.shape[1]).index_add_(0, slots, flat)
        sums = sums.view(heads, most, -1)
        centroids = F.normalize(torch.where(sums[..., -1:] > 0, sums[..., :-1], centroids), dim=2)
    dots, labels = torch.baddbmm(unused, x, centroids.transpose(1, 2)).max(2)
    return centroids, labels, (dots / x.norm(dim=2).clamp(min=1e-12)).mean(1)


class GraphedSteps:
    """:func:`dot_kmeans_steps` on a CUDA device, captured in a CUDA graph at the first call
    with each input shape and replayed after that: the iterations' hundred-odd kernels in one
    launch. Each call copies its inputs into the graph's own tensors and its results out of
    the graph's (the next replay overwrites them). Holds a copy of the features per shape."""

    def __init__(self) -> None:
        self._graphs: dict[tuple, tuple[list[Tensor], torch.cuda.CUDAGraph, tuple]] = {}

    def __call__(
        self, x: Tensor, rows: Tensor, valid: Tensor, niter: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        deterministic = torch.are_deterministic_algorithms_enabled()  # chosen at capture
        key = (tuple(x.shape), tuple(rows.shape), x.device, niter, deterministic)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, rows, valid, niter)
        inputs, graph, outputs = self._graphs[key]
        with torch.cuda.device(x.device):
            for mine, new in zip(inputs, (x, rows, valid), strict=True):
                mine.copy_(new)
            graph.replay()
            return tuple(t.clone() for t in outputs)

    @staticmethod
    def _capture(
        x: Tensor, rows: Tensor, valid: Tensor, niter: int
    ) -> tuple[list[Tensor], torch.cuda.CUDAGraph, tuple]:
        inputs = [x.clone(), rows.clone(), valid.clone()]
        with torch.cuda.device(x.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # a warm-up outside the capture (cuBLAS workspaces)
                dot_kmeans_steps(*inputs, niter)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the loader's pin-memory thread may use CUDA during the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = dot_kmeans_steps(*inputs, niter)
        return inputs, graph, outputs


@contextmanager
def full_float32() -> Iterator[None]:
    """float32 matrix products at full precision, then the previous setting: the CLI allows
    TF32 for training, whose 10-bit mantissa could flip the k-means' near-tied assignments."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
