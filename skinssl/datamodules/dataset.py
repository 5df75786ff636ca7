"""The paired two-modality dataset: one item per lesion, as the batch dict of DESIGN.md §2."""

from __future__ import annotations

import math
import signal
from typing import TYPE_CHECKING

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from skinssl.datamodules.cases import DataError
from skinssl.datamodules.images import ImageStore
from skinssl.datamodules.views import seed_pipeline, write_chw

if TYPE_CHECKING:
    import lightning as L

Item = dict[str, object]


class PairDataset(Dataset):
    """Items ``index``, ``derm``, ``clinic``, ``labels``, ``pair_valid`` for chosen rows.

    ``derm``/``clinic`` are one uint8 CHW tensor when ``n_views`` is 1, else a list of them.
    ``index`` is the case's row in its data source, the key pseudo-labels are looked up by.
    ``store`` holds the unique images; ``derm_ids``/``clinic_ids`` point into it per row.
    ``case_seed`` seeds the views of ``(position, epoch)`` keys. With ``tolerant`` (prediction),
    a case whose image cannot be read still gives an item: black images of ``image_size`` and
    the reason in ``error`` (empty for the others). ``__getitems__`` makes whole batches: a
    ``DataLoader`` over this dataset needs ``collate_fn=whole_batch``.
    """

    def __init__(
        self,
        rows: np.ndarray,
        store: ImageStore,
        derm_ids: np.ndarray,
        clinic_ids: np.ndarray,
        labels: np.ndarray,
        pair_valid: np.ndarray,
        derm_pipeline: A.Compose,
        clinic_pipeline: A.Compose,
        n_views: tuple[int, int] = (1, 1),
        tolerant: bool = False,
        image_size: int = 224,
        case_seed: int = 0,
    ) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.store = store
        self.derm_ids = derm_ids
        self.clinic_ids = clinic_ids
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.pair_valid = torch.as_tensor(pair_valid, dtype=torch.bool)
        self.pipelines = (derm_pipeline, clinic_pipeline)
        self.n_views = n_views
        self.tolerant = tolerant
        self.case_seed = case_seed
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        """Item at position ``key``: the batch of that one key, unbatched."""
        item = {}
        for name, value in self.__getitems__([key]).items():
            many_views = isinstance(value, list) and name != "error"
            item[name] = [view[0] for view in value] if many_views else value[0]
        item["index"] = int(item["index"])
        return item

    def __getitems__(self, keys: list[int] | list[tuple[int, int]]) -> Item:
        """The batch of ``keys``, as the default collate would stack their items. Each view
        is written straight into its place in the batch (in shared memory inside a loader
        worker): no copy per item, none to stack them. A ``(position, epoch)`` key (from an
        ``EpochSampler``) seeds the case's views from (``case_seed``, epoch, case): the same
        views wherever it is loaded."""
        rows = [int(self.rows[k[0] if isinstance(k, tuple) else k]) for k in keys]
        shape = (len(keys), 3, self.image_size, self.image_size)
        views = [[batch_tensor(shape) for _ in range(n)] for n in self.n_views]
        errors = []
        for j, (key, row) in enumerate(zip(keys, rows, strict=True)):
            if isinstance(key, tuple):
                self.seed(views_seed(self.case_seed, key[1], row))
            images, problems = [], []
            for ids in (self.derm_ids, self.clinic_ids):
                try:
                    images.append(self.store[ids[row]])
                except DataError as error:
                    if not self.tolerant:
                        raise
                    problems.append(str(error))  # both images' problems, not the first only
            if problems:
                for view in views[0] + views[1]:
                    view[j] = 0
            else:
                for m, image in enumerate(images):
                    for view in views[m]:
                        write_chw(self.pipelines[m](image=image)["image"], view[j])
            errors.append("; ".join(dict.fromkeys(problems)))  # (a stand-in: the same image)
        index = torch.tensor(rows)
        batch: Item = {
            "index": index,
            "labels": self.labels[index],
            "pair_valid": self.pair_valid[index],
        }
        for m, name in enumerate(("derm", "clinic")):
            batch[name] = views[m][0] if self.n_views[m] == 1 else views[m]
        if self.tolerant:
            batch["error"] = errors
        return batch

    def seed(self, seed: int) -> None:
        """Seed both pipelines (distinct streams per modality)."""
        seed_pipeline(self.pipelines[0], seed)
        seed_pipeline(self.pipelines[1], seed + 1_000_003)


def batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in shared memory inside a loader worker, so that it
    reaches the main process without a copy (as the default collate allocates its batches)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def whole_batch(batch: Item) -> Item:
    """The loaders' ``collate_fn``: the datasets' ``__getitems__`` make whole batches."""
    return batch


def shared_seed(trainer: L.Trainer | None) -> int:
    """The run's seed (torch's initial seed, as ``seed_everything`` set it), rank 0's on every
    rank: the training order, views and per-step seeds need one seed, also when each process
    drew its own (``seed_everything: true``)."""
    seed = torch.initial_seed() % 2**32
    if trainer is not None and trainer.world_size > 1:
        seed = int(trainer.strategy.broadcast(seed, src=0))
    return seed


def views_seed(seed: int, epoch: int, row: int) -> int:
    """A well-mixed 32-bit seed for the views of case ``row`` in ``epoch`` of a run."""
    return int(np.random.SeedSequence([seed, epoch, row]).generate_state(1)[0])


def one_thread_worker(worker_id: int) -> None:
    """DataLoader worker init: one OpenCV and one torch thread per worker, and SIGUSR1/SIGUSR2
    ignored: SLURM's early warning (``--signal``) reaches every process of the job, and a
    worker it killed would end the run before the main process saves its checkpoint.
    (Training views need no per-worker seed: each case's are seeded from (seed, epoch, case),
    see ``views_seed``.)"""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    for name in ("SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class PairKeys(Dataset):
    """Training items without images, for views made on the accelerator: ``index``,
    ``labels``, ``pair_valid``, the cached image ids ``derm_id``/``clinic_id`` and the
    ``epoch`` the views are drawn for. Keys are ``(position, epoch)``. As for
    :class:`PairDataset`, a ``DataLoader`` over it needs ``collate_fn=whole_batch``."""

    def __init__(
        self, rows: np.ndarray, derm_ids: np.ndarray, clinic_ids: np.ndarray,
        labels: np.ndarray, pair_valid: np.ndarray,
    ) -> None:  # fmt: skip
        self.rows = np.asarray(rows, dtype=np.int64)
        self.derm_ids, self.clinic_ids = derm_ids, clinic_ids
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.pair_valid = torch.as_tensor(pair_valid, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> Item:
        i, epoch = key
        row = int(self.rows[i])
        return {
            "index": row,
            "labels": self.labels[row],
            "pair_valid": self.pair_valid[row],
            "derm_id": int(self.derm_ids[row]),
            "clinic_id": int(self.clinic_ids[row]),
            "epoch": epoch,
        }

    def __getitems__(self, keys: list[tuple[int, int]]) -> Item:
        """The batch of ``keys`` (see :func:`whole_batch`)."""
        return default_collate([self[k] for k in keys])
