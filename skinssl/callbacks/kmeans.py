"""K-means pseudo-labels for SM3 stage 2, DeepCluster-v2 style.

Every ``every_n_epochs`` training epochs each clustered head's embeddings of the training split
are clustered with k-means (FAISS spherical k-means, or the authors' dot-product k-means in
torch), K = that head's cluster count. The L2-normalised centroids and the per-case assignments
go to the module through its small :class:`ClusteringModule` protocol; the module copies the
centroids into its prototype heads and trains them on the assignments, looked up by
``batch["index"]``.

The callback owns when and how: features (a clean eval pass, or the previous epoch's training
embeddings, kept on the module's device), gathering across ranks, the k-means on rank 0 (FAISS
on the rank's GPU or the CPU; torch on the module's device), broadcasting the result, the
resumable state, and when the clustering's statistics and logs are made
(:mod:`skinssl.callbacks.kmeans_report` makes them). With the authors' k-means on a GPU, training
does not wait for the k-means: it is queued ahead of the next training step, and its statistics
and logs are made while that step runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import faiss
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from skinssl.callbacks.kmeans_report import Clock, HostCopies, Report, write_report
from skinssl.clustering import (
    GraphedSteps,
    dot_kmeans_heads,
    faiss_threads,
    feature_problems,
    kmeans,
)
from skinssl.datamodules.dataset import PairKeys, one_thread_worker, shared_seed, whole_batch
from skinssl.distributed import gather_rows
from skinssl.host import available_cores
from skinssl.labels import UNKNOWN

FeatureSource = Literal["pass", "memory_bank"]
Algorithm = Literal["spherical", "authors"]
Fill = Literal["eval", "train"]
FILL_EPOCH = 2**32 - 1
"""The epoch key a ``fill: train`` pass draws its views for: one no training epoch reaches."""


@runtime_checkable
class ClusteringModule(Protocol):
    """What the callback needs from a LightningModule (SM3 stage 2 or a DeepCluster baseline).

    With ``features: memory_bank`` its ``training_step`` also returns
    ``{"loss": ..., "embeddings": {head: [B, D]}}``: the batch's embeddings for the bank.
    """

    def cluster_sizes(self) -> dict[str, int]:
        """Clustered head name -> number of clusters K, in a fixed order."""

    def cluster_embeddings(self, batch: dict) -> dict[str, Tensor]:
        """Per clustered head, embeddings [B, D] of a normalised, on-device batch."""

    def set_clusters(
        self, centroids: dict[str, Tensor], labels: Tensor, fresh: bool = True
    ) -> None:
        """Centroids head -> [K, D] (L2-normalised); labels [num_cases, H], -1 = not clustered.
        ``fresh``: a new clustering; False: a resumed run's kept one, whose trained
        prototypes the checkpoint already restored."""


@contextmanager
def all_in_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Every submodule in training or eval mode (whatever the module's own ``train`` keeps
    frozen), then each one's own flag restored exactly."""
    flags = [(m, m.training) for m in module.modules()]
    for m, _ in flags:
        m.training = training
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def setting_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``name: checkpoint X, this run Y`` for each setting that differs (head order counts).

    Heads are skipped while the run's are unknown (no module set up yet).
    """
    diff = []
    for key, value in current.items():
        old = saved.get(key)
        if key == "heads":
            if not value:
                continue
            old, value = list((old or {}).items()), list(value.items())
        if old != value:
            diff.append(f"{key}: checkpoint {old!r}, this run {value!r}")
    return diff


class KMeansPseudoLabels(L.Callback):
    """Regenerates every clustered head's pseudo-labels with k-means (SM3 stage 2).

    Clusters before the first training epoch and at the start of every ``every_n_epochs``-th
    epoch. The module must implement :class:`ClusteringModule`; the datamodule must offer
    ``dataset(split, train, training_cases)``, ``on_after_batch_transfer``, ``cases``,
    ``batch_size``, ``eval_batch_size`` and ``num_workers`` (as
    :class:`skinssl.datamodules.PairedDataModule` does).

    Args:
        every_n_epochs: re-cluster at the start of every n-th epoch (epoch 0 always).
        features: ``pass``: embeddings of a no-grad, eval-mode pass over the training split with
            the deterministic eval view; ``memory_bank``: the latest training-step embeddings
            of each case (``training_step`` returns ``{"loss", "embeddings": {head: [B, D]}}``),
            as the authors' code does; a pass fills the bank when it lacks a training case.
        fill: the pass that fills the memory bank: ``eval``, the pass above; ``train``, as the
            authors' code: the training views (drawn for an epoch no training reaches), every
            submodule in training mode, frozen trunks included (their BatchNorm layers update
            their running statistics once; dropout is on), no gradients; one view per case and
            modality. With several processes each moves its own statistics and DDP then
            broadcasts rank 0's.
        algorithm: ``spherical``: FAISS spherical k-means of the L2-normalised embeddings (on the
            rank's GPU with a FAISS GPU build); ``authors``: the authors' k-means
            (:func:`skinssl.clustering.dot_kmeans_heads`, torch on the module's device): raw
            embeddings, so a member's pull on its centroid grows with its norm; an empty
            cluster keeps its centroid. Both assign by the largest cosine to unit centroids.
        niter: k-means iterations (the authors' code: 10).
        nredo: k-means runs per head; the best objective is kept (``spherical`` only).
        seed: k-means seed; epoch ``e`` uses ``seed + e``. Default: the run's seed
            (``seed_everything``).
        threads: FAISS CPU threads (default: the cores available to the process).
        cuda_graph: ``authors`` on a CUDA device: replay the iterations from a CUDA graph,
            captured at the first clustering (:class:`GraphedSteps`; one launch instead of
            about a hundred, for the same labels). Elsewhere it has no effect.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        features: FeatureSource = "pass",
        fill: Fill = "eval",
        algorithm: Algorithm = "spherical",
        niter: int = 10,
        nredo: int = 1,
        seed: int | None = None,
        threads: int | None = None,
        cuda_graph: bool = False,
    ) -> None:
        if every_n_epochs < 1 or niter < 1 or nredo < 1:
            raise ValueError(
                f"every_n_epochs ({every_n_epochs}), niter ({niter}) and nredo ({nredo}) "
                "must be >= 1"
            )
        if features not in get_args(FeatureSource):
            raise ValueError(f"features = {features!r}; valid: 'pass', 'memory_bank'")
        if fill not in get_args(Fill) or (fill == "train" and features != "memory_bank"):
            raise ValueError(
                f"fill = {fill!r}; valid: 'eval', or 'train' with features: memory_bank"
            )
        if algorithm not in get_args(Algorithm):
            raise ValueError(f"algorithm = {algorithm!r}; valid: 'spherical', 'authors'")
        if algorithm == "authors" and nredo != 1:
            raise ValueError(f"nredo = {nredo}: the 'authors' k-means has no restarts (use 1)")
        if cuda_graph and algorithm != "authors":
            raise ValueError("cuda_graph: true replays the 'authors' k-means; FAISS has none")
        self.every_n_epochs = every_n_epochs
        self.features = features
        self.fill = fill
        self.algorithm = algorithm
        self.niter = niter
        self.nredo = nredo
        self.seed = seed
        self._seed = 0 if seed is None else seed  # the run's seed from setup when None
        self.threads = threads
        self.cuda_graph = cuda_graph
        self._graphed = GraphedSteps() if cuda_graph else None
        self._sizes: dict[str, int] = {}
        self._gpu_resources: Any = None
        self._forget()

    def _forget(self) -> None:
        """No clustering, memory bank or timing yet: a new fit (a checkpoint's state is
        loaded after ``setup``)."""
        self._epoch = -1
        self._labels: Tensor | None = None
        self._centroids: dict[str, Tensor] = {}
        self._rows: np.ndarray | None = None
        self._index: Tensor | None = None  # _rows on the module's device
        self._seen: list[Tensor] = []  # the epoch's training case indices, step by step
        self._chunks: list[dict[str, Tensor]] = []  # their embeddings, with several processes
        self._epoch_clock: float | None = None
        self._epoch_seconds: float | None = None
        self._bank: dict[str, Tensor] = {}
        self._filled: Tensor | None = None
        self._report: Report | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._forget()  # a callback used for a second fit clusters that fit's model
        self._seed = shared_seed(trainer) if self.seed is None else self.seed
        if not isinstance(pl_module, ClusteringModule):
            raise TypeError(
                f"KMeansPseudoLabels needs a module with cluster_sizes(), cluster_embeddings() "
                f"and set_clusters(); {type(pl_module).__name__} lacks them"
            )
        needs = (
            "dataset", "on_after_batch_transfer", "cases", "batch_size", "eval_batch_size",
            "num_workers",
        )  # fmt: skip
        missing = [a for a in needs if not hasattr(trainer.datamodule, a)]
        if missing:
            raise TypeError(
                f"KMeansPseudoLabels needs a datamodule like skinssl's PairedDataModule; "
                f"{type(trainer.datamodule).__name__} lacks {missing}"
            )
        sizes = dict(pl_module.cluster_sizes())
        bad = {h: k for h, k in sizes.items() if not (isinstance(k, int) and k >= 1)}
        if not sizes or bad:
            raise ValueError(f"cluster_sizes() must map head -> K >= 1, got {sizes}")
        self._sizes = sizes
        if self.fill == "train":
            self._check_fill_views(trainer.datamodule)

    @staticmethod
    def _check_fill_views(dm: Any) -> None:
        """``fill: train`` embeds one training view per case and modality."""
        counts = {m: getattr(getattr(dm, f"{m}_views", None), "n", 1) for m in ("derm", "clinic")}
        many = {f"{m}_views.n": n for m, n in counts.items() if n > 1}
        if many:
            raise ValueError(
                f"fill: train embeds one training view per case, but the data makes {many}; "
                "use fill: eval (the clean pass) with several views"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Before the first epoch (after Lightning restored the loops): cluster or restore."""
        self._refresh(trainer, pl_module, starting=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = time.perf_counter()
        if self.features == "memory_bank":
            self._merge_bank(trainer)
        clustered = self._refresh(trainer, pl_module, starting=False)
        if clustered and self._report is not None and self._epoch_seconds is not None:
            # what training waited for: bank merge, features, k-means (on a GPU: queued),
            # broadcast, prototypes; against the previous epoch's training. The statistics
            # and logs come after the next step is queued, in the epoch's time.
            spent = time.perf_counter() - start
            self._report.metrics["kmeans/callback_seconds"] = spent
            self._report.metrics["kmeans/epoch_share"] = spent / (spent + self._epoch_seconds)
        self._epoch_clock = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch's training time, for the clustering's share of an epoch: on a GPU once its
        queued work is done (else the next epoch's clustering would wait for it and count it)."""
        self._report_now(trainer)
        if self._epoch_clock is not None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self._epoch_seconds = time.perf_counter() - self._epoch_clock

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.features == "memory_bank" and outputs is not None:
            self._keep(trainer, outputs, batch)
        self._report_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report_now(trainer)

    def _keep(self, trainer: L.Trainer, outputs: Any, batch: dict[str, Any]) -> None:
        """A training step's embeddings for the memory bank: in one process written into it at
        once (an epoch's embeddings are never held twice), with several kept for the epoch's
        end (:meth:`_merge_bank` gathers them on rank 0)."""
        emb = outputs.get("embeddings") if isinstance(outputs, dict) else None
        if not isinstance(emb, dict) or any(h not in emb for h in self._sizes):
            raise ValueError(
                "KMeansPseudoLabels(features='memory_bank') needs training_step to return "
                f"{{'loss': ..., 'embeddings': {{head: Tensor[B, D]}}}} for heads "
                f"{list(self._sizes)}; got {type(outputs).__name__} "
                f"with embeddings {sorted(emb) if isinstance(emb, dict) else emb!r}"
            )
        index = batch["index"].detach()
        self._seen.append(index)
        if trainer.world_size > 1:
            self._chunks.append({h: emb[h].detach() for h in self._sizes})
            return
        for h in self._sizes:
            self._write_bank(h, index, emb[h].detach().float(), self._num_cases(trainer))

    def _write_bank(self, head: str, rows: Tensor, emb: Tensor, num_cases: int) -> None:
        """Embeddings [B, D] of cases ``rows`` into the head's bank (made at first use, on
        the embeddings' device)."""
        if head not in self._bank:
            self._bank[head] = emb.new_zeros(num_cases, emb.shape[1])
        self._bank_on(head, emb.device)[rows] = emb

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, identical on every rank."""
        labels = self._labels
        if labels is None:
            labels = torch.empty(0, len(self._sizes), dtype=torch.long)
        return {
            "epoch": self._epoch,
            "labels": labels.cpu(),
            "centroids": {h: c.to("cpu", copy=True) for h, c in self._centroids.items()},
            "settings": self._settings(),
        }

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """``memory_bank``: the bank (rank 0's, this epoch's embeddings so far merged in), which
        cases it holds and the training rows go into this callback's saved state, so that a
        resumed run clusters what the uninterrupted run would. Every rank takes part."""
        if self.features != "memory_bank" or self._rows is None:
            return
        self._merge_bank(trainer)
        state = checkpoint["callbacks"][self.state_key]
        state["bank"] = {h: b.cpu() for h, b in self._bank.items()}
        state["bank_filled"] = self._filled
        state["rows"] = torch.from_numpy(self._rows)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's clustering (and memory bank); it reaches the module in
        ``on_train_start``."""
        saved = {"algorithm": "spherical", "fill": "eval", **state_dict["settings"]}  # older
        diff = setting_differences(saved, self._settings())
        if diff:
            raise ValueError(
                "KMeansPseudoLabels: the checkpoint's pseudo-labels were made with other "
                "settings than this run's: " + "; ".join(diff) + ". Resume with the same "
                "settings, or start a new run from the weights only."
            )
        self._epoch = int(state_dict["epoch"])
        self._labels = state_dict["labels"] if self._epoch >= 0 else None
        self._centroids = dict(state_dict["centroids"])
        if "bank" in state_dict:
            self._bank = dict(state_dict["bank"])
            self._filled = state_dict["bank_filled"]
            self._rows, self._index = state_dict["rows"].numpy(), None

    def _settings(self) -> dict[str, Any]:
        return {
            "heads": dict(self._sizes),
            "niter": self.niter,
            "nredo": self.nredo,
            "seed": self._seed,
            "features": self.features,
            "algorithm": self.algorithm,
            "every_n_epochs": self.every_n_epochs,
            "fill": self.fill,
        }

    # ------------------------------------------------------------- clustering
    def _refresh(self, trainer: L.Trainer, pl_module: L.LightningModule, starting: bool) -> bool:
        """Cluster when due (returns whether it did); at train start otherwise hand the kept
        (restored) labels over.

        A run resumed mid-epoch restarts at the checkpoint's epoch: its labels are kept. A run
        resumed at an epoch boundary starts a later epoch and re-clusters when due.
        """
        epoch, num_cases = trainer.current_epoch, self._num_cases(trainer)
        if self._labels is not None and len(self._labels) != num_cases:
            raise ValueError(
                f"KMeansPseudoLabels: the kept (checkpoint) pseudo-labels cover "
                f"{len(self._labels)} cases, the datamodule has {num_cases}; "
                "resume on the same data"
            )
        due = epoch % self.every_n_epochs == 0 and epoch != self._epoch
        if self._labels is not None and not due:
            if starting:
                self._apply(pl_module, fresh=False)
            return False
        self.cluster(trainer, pl_module)
        return True

    def cluster(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Cluster every head now (all ranks call this), then ``set_clusters`` on every rank.

        On a GPU with the authors' k-means nothing waits for the k-means: its kernels are
        queued ahead of the next training step; its statistics and logs follow once the
        results are back (:meth:`_report_now`)."""
        self._report_now(trainer)  # a clustering not yet reported (no training step since)
        epoch = trainer.current_epoch
        start = time.perf_counter()
        rows, features = self._features(trainer, pl_module)
        features_s = time.perf_counter() - start
        result, failure, report = None, None, None
        if trainer.is_global_zero:
            try:
                result, report = self._cluster_rank0(trainer, pl_module, rows, features, epoch)
            except Exception as e:  # every rank must get past the broadcast below, then raise
                failure, result = e, {"error": f"{type(e).__name__} on rank 0: {e}"}
            else:
                report.metrics["kmeans/features_seconds"] = features_s
        result = trainer.strategy.broadcast(result, src=0)
        if failure is not None:
            raise failure
        if result["error"]:
            raise RuntimeError(f"k-means pseudo-labels: {result['error']}")
        self._epoch = epoch
        self._labels = result["labels"]
        self._centroids = result["centroids"]
        self._apply(pl_module)
        self._report = report

    def _cluster_rank0(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        rows: np.ndarray,
        features: dict[str, Tensor],
        epoch: int,
    ) -> tuple[dict[str, Any], Report]:
        """K-means of every head and the labels of every case (on the module's device; on the
        CPU when there are other ranks to broadcast them to), and the clustering's report."""
        device = pl_module.device
        picked = self._picked(device)
        clock = Clock(device)
        found = self._kmeans(pl_module, features, epoch, clock)
        assignments = torch.stack([a for _, a, _ in found.values()])  # [H, rows]
        labels = torch.full((self._num_cases(trainer), len(found)), UNKNOWN, device=device)
        labels[picked] = assignments.T
        labels_before = None if self._labels is None else self._labels.to(device, non_blocking=True)
        previous = None if labels_before is None else labels_before[picked].T
        report = Report(
            step=trainer.global_step,
            rows=rows,
            metrics={"kmeans/samples": float(len(rows))},
            clock=clock,
            results=HostCopies(
                assignments=assignments,
                objectives=torch.stack([o for _, _, o in found.values()]),
                previous=previous,
            ),
        )
        centroids = {h: c for h, (c, _, _) in found.items()}
        if trainer.world_size > 1:  # broadcast as CPU tensors (each rank moves them to its own)
            labels, centroids = labels.cpu(), {h: c.cpu() for h, c in centroids.items()}
        return {"error": None, "labels": labels, "centroids": centroids}, report

    def _kmeans(
        self, pl_module: L.LightningModule, features: dict[str, Tensor], epoch: int, clock: Clock
    ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Every head's (centroids, assignments, objective) on the module's device, timed by
        ``clock`` (after the authors' check of the features); a ValueError names the head."""
        seed, heads, device = self._seed + epoch, list(self._sizes), pl_module.device
        if self.algorithm == "authors":  # every head in one batch on the module's device
            ks = [self._sizes[h] for h in heads]
            checked = [features[h] for h in heads]
            for h, problem in zip(heads, feature_problems(checked, ks), strict=True):
                if problem:
                    with self._naming(h, epoch):
                        raise ValueError(problem)
            steps = self._graphed if device.type == "cuda" else None
            clock.start()
            batch = dot_kmeans_heads(checked, ks, self.niter, seed, steps=steps)
            clock.stop()
            return dict(zip(heads, batch, strict=True))
        faiss_device, found = self._faiss_device(pl_module), {}
        clock.start()
        with faiss_threads(self.threads or available_cores()):
            for h in heads:
                with self._naming(h, epoch):
                    c, a, objective = kmeans(
                        features[h].cpu().numpy(),
                        self._sizes[h],
                        self.niter,
                        self.nredo,
                        seed,
                        faiss_device,
                        self._gpu_resources,
                    )
                found[h] = (
                    torch.from_numpy(c).to(device),
                    torch.from_numpy(a).to(device),
                    torch.tensor(objective, device=device),
                )
        clock.stop()
        return found

    @contextmanager
    def _naming(self, head: str, epoch: int) -> Iterator[None]:
        """A ValueError raised inside names the head and the epoch."""
        try:
            yield
        except ValueError as e:
            raise ValueError(
                f"k-means pseudo-labels of head {head!r} (K = {self._sizes[head]}) at epoch "
                f"{epoch}: {e}"
            ) from None

    def _faiss_device(self, pl_module: L.LightningModule) -> int | None:
        """This rank's CUDA ordinal when the module is on a GPU and FAISS has GPU support."""
        if pl_module.device.type != "cuda" or faiss.get_num_gpus() == 0:
            return None
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        return torch.cuda.current_device()

    def _apply(self, pl_module: L.LightningModule, fresh: bool = True) -> None:
        assert self._labels is not None
        device = pl_module.device
        centroids = {h: c.to(device) for h, c in self._centroids.items()}
        pl_module.set_clusters(centroids, self._labels.to(device), fresh)

    # --------------------------------------------------------------- features
    def _features(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[np.ndarray, dict[str, Tensor]]:
        """Training rows (sorted, unique) and, on rank 0, each head's features [rows, D] on
        the module's device.

        From the memory bank when it holds every training case, else from a pass (which then
        fills the bank).
        """
        rows, filled = self._rows, self._filled
        if (
            self.features == "memory_bank"
            and rows is not None
            and filled is not None
            and bool(filled[torch.from_numpy(rows)].all())
        ):
            if not trainer.is_global_zero:
                return rows, {}
            picked = self._picked(pl_module.device)
            return rows, {h: self._bank_on(h, pl_module.device)[picked] for h in self._sizes}
        rows, features = self._pass(trainer, pl_module, train=self.fill == "train")
        self._rows, self._index = rows, None
        if self.features == "memory_bank":
            num_cases, picked = self._num_cases(trainer), self._picked(pl_module.device)
            self._filled = torch.zeros(num_cases, dtype=torch.bool)
            self._filled[torch.from_numpy(rows)] = True
            self._bank = {}
            for h, f in features.items():  # rank 0 only
                self._bank[h] = f.new_zeros(num_cases, f.shape[1])
                self._bank[h][picked] = f
        return rows, features

    def _picked(self, device: torch.device) -> Tensor:
        """The training rows as an index on ``device`` (made once per set of rows)."""
        assert self._rows is not None
        if self._index is None or self._index.device != device:
            self._index = torch.from_numpy(self._rows).to(device)
        return self._index

    def _bank_on(self, head: str, device: torch.device) -> Tensor:
        """The head's memory bank, moved to ``device`` if it is not there (a resumed run)."""
        if self._bank[head].device != device:
            self._bank[head] = self._bank[head].to(device)
        return self._bank[head]

    def _pass(
        self, trainer: L.Trainer, pl_module: L.LightningModule, train: bool = False
    ) -> tuple[np.ndarray, dict[str, Tensor]]:
        """No-grad embeddings of the training cases (those training reads: with a
        ``label_fraction`` and no ``keep_unlabelled``, the labelled ones), gathered and
        deduplicated: eval mode and
        the eval view, or (``train``, see ``fill``) training mode and views, batches of the
        training batch size in a seeded shuffled order (a last batch of one case, which
        BatchNorm cannot normalise in training mode, joins the one before)."""
        dm = trainer.datamodule
        dataset = dm.dataset("train", train=train, training_cases=True)
        sampler: Any = None
        if trainer.world_size > 1 or train:
            sampler = DistributedSampler(
                dataset, trainer.world_size, trainer.global_rank, shuffle=train, seed=self._seed
            )
        batching: dict[str, Any] = dict(batch_size=dm.eval_batch_size, sampler=sampler)
        if train:  # keys that seed each case's views, for an epoch no training reaches
            keys, size = [(i, FILL_EPOCH) for i in sampler], dm.batch_size
            batches = [keys[j : j + size] for j in range(0, len(keys), size)]
            if len(batches) > 1 and len(batches[-1]) == 1:
                batches[-2].extend(batches.pop())
            batching = dict(batch_sampler=batches)
        loader = DataLoader(
            dataset,
            **batching,
            num_workers=0 if isinstance(dataset, PairKeys) else dm.num_workers,  # ids only
            pin_memory=pl_module.device.type == "cuda",
            worker_init_fn=one_thread_worker,
            collate_fn=whole_batch,
        )
        index: list[Tensor] = []
        emb: dict[str, list[Tensor]] = {h: [] for h in self._sizes}
        with (
            all_in_mode(pl_module, training=train),
            torch.no_grad(),
            trainer.precision_plugin.forward_context(),
        ):
            for batch in loader:
                batch = move_data_to_device(dm.on_before_batch_transfer(batch, 0), pl_module.device)
                batch = dm.on_after_batch_transfer(batch, 0)
                out = pl_module.cluster_embeddings(batch)
                missing = [h for h in self._sizes if h not in out]
                if missing:
                    raise ValueError(f"cluster_embeddings() returned no embeddings for {missing}")
                index.append(batch["index"])
                for h in self._sizes:
                    emb[h].append(out[h].float())
        return self._collect(trainer, index, emb)

    def _collect(
        self, trainer: L.Trainer, index: list[Tensor], emb: dict[str, list[Tensor]]
    ) -> tuple[np.ndarray, dict[str, Tensor]]:
        """Gather across ranks; one row per index (the sampler pads by repeating some)."""
        all_index = gather_rows(torch.cat(index)).cpu().numpy()
        rows, first = np.unique(all_index, return_index=True)
        features, keep = {}, None
        for h, parts in emb.items():
            gathered = gather_rows(torch.cat(parts))  # every rank takes part in the collective
            if trainer.is_global_zero:
                keep = torch.from_numpy(first).to(gathered.device) if keep is None else keep
                features[h] = gathered[keep]
        return rows, features

    def _merge_bank(self, trainer: L.Trainer) -> None:
        """Mark the cases the last epoch's training saw as held by the bank and, with several
        processes, write their embeddings into it (rank 0), by case index, on the device they
        were made on; a case seen twice (a padded distributed sampler) keeps its later
        embedding. Every rank runs the same number of training batches (Lightning's
        distributed sampler), so all take part in the same collectives.
        """
        if not self._seen:
            return
        index = gather_rows(torch.cat(self._seen))
        seen = index.cpu().numpy()  # the epoch is over: the device has nothing else to finish
        if self._filled is None:
            self._filled = torch.zeros(self._num_cases(trainer), dtype=torch.bool)
        self._filled[torch.from_numpy(seen)] = True
        chunks, self._seen, self._chunks = self._chunks, [], []
        if not chunks:  # one process: already written, step by step (_keep)
            return
        cases, last = np.unique(seen[::-1], return_index=True)
        later = None if len(cases) == len(seen) else torch.from_numpy(len(seen) - 1 - last)
        for h in self._sizes:
            emb = gather_rows(torch.cat([c[h] for c in chunks]).float())
            if trainer.is_global_zero:
                rows = index
                if later is not None:
                    keep = later.to(emb.device)
                    emb, rows = emb[keep], index[keep]
                self._write_bank(h, rows, emb, len(self._filled))

    def _num_cases(self, trainer: L.Trainer) -> int:
        return len(trainer.datamodule.cases)

    # ---------------------------------------------------------------- logging
    def _report_now(self, trainer: L.Trainer) -> None:
        """The latest clustering's statistics and logs (rank 0), once: scalars to every
        logger, cluster-size histograms to TensorBoard. Called after the next training step
        is queued, so that on a GPU they are made while the step runs."""
        report, self._report = self._report, None
        if report is None:
            return
        try:
            write_report(trainer, report, self._sizes)
        except Exception as e:
            if trainer.world_size == 1:
                raise
            # rank 0 alone: raising would leave the other ranks waiting
            rank_zero_warn(
                f"KMeansPseudoLabels: the statistics and logs of the clustering at step "
                f"{report.step} failed ({type(e).__name__}: {e}); training goes on with its labels"
            )
