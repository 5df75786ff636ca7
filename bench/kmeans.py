"""Seconds per clustering pass (every head once) of the pseudo-label k-means.

The callback's two algorithms, ``kmeans`` (FAISS spherical k-means, CPU, and one GPU when a CUDA
GPU and a FAISS GPU build are present) and ``dot_kmeans_heads`` (the authors' k-means in torch,
every head in one batch, CPU and CUDA), against scikit-learn's ``KMeans`` (Lloyd, same
iterations, one init) on the same L2-normalised features. Two sizes: Derm7pt's training split
(413 cases x 7 heads) and 100k cases x 8 heads, 512-d embeddings. Features are Gaussian blobs
around K random directions plus noise, so that the clusterings have structure.

At Derm7pt size also: FAISS on fewer threads; the authors' k-means one head after another; on
a GPU, the host's time to queue the authors' k-means (what training waits for in the callback)
and its iterations replayed from a CUDA graph; the statistics the callback logs per pass (NMI
and ARI against the previous clustering, NMI against the true labels), as the callback computes
them and with scikit-learn's functions. Prints a Markdown table and writes JSON.

    python bench/kmeans.py
    python bench/kmeans.py --threads 8 --repeats 5 --sklearn-max 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import sklearn
import torch
from json_out import write_json  # bench/json_out.py (the script's folder is on sys.path)
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from skinssl.callbacks.kmeans_report import clustering_metrics
from skinssl.clustering import (
    GraphedSteps,
    dot_kmeans_heads,
    faiss_threads,
    kmeans,
)
from skinssl.host import available_cores
from skinssl.labels import UNKNOWN

CASES = {
    "Derm7pt train (413 x 7 heads)": (413, (3, 2, 3, 3, 3, 3, 2)),
    "100k x 8 heads": (100_000, (5, 3, 2, 3, 3, 3, 3, 2)),
}
DIM = 512


def head_features(n: int, k: int, seed: int) -> np.ndarray:
    """[n, DIM] float32: k noisy blobs on the sphere (noise norm ~ 1, centre norm 1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = rng.normal(size=(n, DIM)).astype(np.float32) / np.sqrt(DIM)
    x += centres[rng.integers(0, k, size=n)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def faiss_pass(device: int | None, resources: object, niter: int) -> Callable:
    def run(feats: list[np.ndarray], ks: tuple[int, ...]) -> list[float]:
        return [
            kmeans(x, k, niter, 1, 0, device, resources)[2] for x, k in zip(feats, ks, strict=True)
        ]

    return run


def authors_pass(
    device: str, niter: int, batched: bool = True, wait: bool = True, graph: bool = False
) -> Callable:
    """The authors' k-means of every head: in one batch as the callback runs it, or one head
    after another (the baseline). The features are moved to the device before the clock
    starts (in the warm-up pass), as the callback's memory bank holds them there. ``wait``:
    read the objectives back (the whole pass); else only queue the work (the host's time, what
    the callback's training waits for on a GPU). ``graph``: the iterations replayed from a
    CUDA graph (:class:`GraphedSteps`, captured in the warm-up pass)."""
    moved: dict[str, Any] = {"from": None, "to": None}
    steps = GraphedSteps() if graph else None

    def run(feats: list[np.ndarray], ks: tuple[int, ...]) -> list[float]:
        if moved["from"] is not feats:
            moved.update({"from": feats, "to": [torch.from_numpy(x).to(device) for x in feats]})
        x = moved["to"]
        if batched:
            found = dot_kmeans_heads(x, list(ks), niter, 0, steps=steps)
        else:
            found = [dot_kmeans_heads([f], [k], niter, 0)[0] for f, k in zip(x, ks, strict=True)]
        return [float(objective) for _, _, objective in found] if wait else []

    return run


def sklearn_pass(niter: int) -> Callable:
    def run(feats: list[np.ndarray], ks: tuple[int, ...]) -> list[float]:
        objectives = []
        for x, k in zip(feats, ks, strict=True):
            model = KMeans(k, init="random", n_init=1, max_iter=niter, tol=0.0, random_state=0)
            assign = model.fit_predict(x)
            centres = model.cluster_centers_ / np.linalg.norm(
                model.cluster_centers_, axis=1, keepdims=True
            )
            objectives.append(float((x * centres[assign]).sum(1).mean()))
        return objectives

    return run


def on_threads(run: Callable, threads: int) -> Callable:
    """``run`` with FAISS on ``threads`` OpenMP threads."""

    def wrapped(feats: list[np.ndarray], ks: tuple[int, ...]) -> list[float]:
        with faiss_threads(threads):
            return run(feats, ks)

    return wrapped


def sklearn_statistics(
    assignments: np.ndarray, previous: np.ndarray, true: np.ndarray, k: int
) -> dict[str, float]:
    """The callback's per-head statistics with scikit-learn's functions (the baseline)."""
    known = true != UNKNOWN
    return {
        "nmi_prev": normalized_mutual_info_score(previous, assignments),
        "ari_prev": adjusted_rand_score(previous, assignments),
        "nmi_true": normalized_mutual_info_score(true[known], assignments[known]),
    }


def statistics_pass(statistics: Callable) -> Callable:
    """Every head's statistics of a clustering against a previous one and true labels with a
    quarter unknown; returns each head's NMI against the previous clustering."""

    def run(feats: list[np.ndarray], ks: tuple[int, ...]) -> list[float]:
        out = []
        for seed, (x, k) in enumerate(zip(feats, ks, strict=True)):
            rng = np.random.default_rng(seed)
            assignments, previous = rng.integers(0, k, (2, len(x)))
            true = np.where(rng.random(len(x)) < 0.25, UNKNOWN, rng.integers(0, k, len(x)))
            out.append(statistics(assignments, previous, true, k)["nmi_prev"])
        return out

    return run


def measure(run: Callable, feats: list[np.ndarray], ks: tuple[int, ...], repeats: int) -> dict:
    """Median seconds per pass over ``repeats`` (after one warm-up; each pass starts with the
    GPU idle) and the mean objective (None when the pass does not read them back)."""
    run(feats, ks)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        objectives = run(feats, ks)
        times.append(time.perf_counter() - start)
    mean = float(np.mean(objectives)) if objectives else None
    return {"seconds": statistics.median(times), "objective": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sklearn-max", type=int, default=100_000, help="skip scikit-learn above this many cases"
    )
    parser.add_argument("--out", default="bench/results/kmeans.json")
    args = parser.parse_args()

    methods: dict[str, Callable] = {"faiss-cpu": faiss_pass(None, None, args.niter)}
    gpu = torch.cuda.is_available() and faiss.get_num_gpus() > 0
    if gpu:
        methods["faiss-gpu"] = faiss_pass(0, faiss.StandardGpuResources(), args.niter)
    methods["authors-cpu"] = authors_pass("cpu", args.niter)
    if torch.cuda.is_available():
        methods["authors-cuda"] = authors_pass("cuda", args.niter)
    methods["sklearn"] = sklearn_pass(args.niter)

    rows = []
    with faiss_threads(args.threads), threadpool_limits(args.threads):
        for case, (n, ks) in CASES.items():
            feats = [head_features(n, k, seed) for seed, k in enumerate(ks)]
            extra = {}
            if n < 10_000:
                fewer = [t for t in (1, 2, 4, 8) if t < args.threads]
                extra = {f"faiss-cpu, {t} thr": on_threads(methods["faiss-cpu"], t) for t in fewer}
                for name in [m for m in methods if m.startswith("authors")]:
                    extra[f"{name}, per head"] = authors_pass(name[8:], args.niter, batched=False)
                if torch.cuda.is_available():  # what the callback's training waits for
                    extra["authors-cuda, queued"] = authors_pass("cuda", args.niter, wait=False)
                    extra["authors-cuda, CUDA graph"] = authors_pass("cuda", args.niter, graph=True)
                    extra["authors-cuda, CUDA graph, queued"] = authors_pass(
                        "cuda", args.niter, wait=False, graph=True
                    )
                extra["statistics"] = statistics_pass(clustering_metrics)
                extra["statistics (sklearn)"] = statistics_pass(sklearn_statistics)
            for name, run in {**methods, **extra}.items():
                if name == "sklearn" and n > args.sklearn_max:
                    print(f"{case}: sklearn skipped (n = {n} > --sklearn-max {args.sklearn_max})")
                    continue
                repeats = args.repeats if n < 10_000 else max(1, args.repeats // 3)
                r = {"case": case, "n": n, "heads": len(ks), "dim": DIM, "method": name}
                r.update(measure(run, feats, ks, repeats))
                if name.startswith("statistics"):
                    r["objective"] = None
                rows.append(r)
                print(f"{case:30s} {name:20s} {r['seconds']:8.4f} s/pass")

    print(f"\n{args.threads} threads, {args.niter} iterations, 1 init, {DIM}-d\n")
    print("| case | method | seconds / pass | vs sklearn | mean cosine to centroid |")
    print("|---|---|---|---|---|")
    for r in rows:
        baseline = "statistics (sklearn)" if r["method"].startswith("statistics") else "sklearn"
        base = next(
            (b["seconds"] for b in rows if b["case"] == r["case"] and b["method"] == baseline),
            None,
        )
        if r["method"].endswith("queued"):  # the host's time only, not a whole pass
            base = None
        r["speedup_vs_sklearn"] = base / r["seconds"] if base else None
        speed = f"{r['speedup_vs_sklearn']:.1f}x" if base else "-"
        objective = "-" if r["objective"] is None else f"{r['objective']:.4f}"
        print(f"| {r['case']} | {r['method']} | {r['seconds']:.4f} | {speed} | {objective} |")

    meta = {
        "date": date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": args.threads,
        "niter": args.niter,
        "versions": {"faiss": faiss.__version__, "sklearn": sklearn.__version__},
    }
    write_json(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
