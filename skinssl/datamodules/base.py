"""The shared LightningDataModule for paired two-modality data.

Subclasses only say where cases come from (``load_cases``); loaders, views, the decoded-image
cache, the label fraction, worker seeding and on-device normalisation live here.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import asdict, replace
from typing import Any, Literal, get_args

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from skinssl.datamodules.cases import Cases, DataError
from skinssl.datamodules.dataset import (
    PairDataset,
    PairKeys,
    one_thread_worker,
    shared_seed,
    views_seed,
    whole_batch,
)
from skinssl.datamodules.device_views import DeviceImages, fuses_by_default
from skinssl.datamodules.images import CacheMode, ImageStore
from skinssl.datamodules.resumable import EpochSampler, ResumableLoader
from skinssl.datamodules.views import (
    DERM7PT_MEAN,
    DERM7PT_STD,
    Normalize,
    Views,
    eval_pipeline,
    train_pipeline,
)
from skinssl.host import available_cores
from skinssl.labels import HEAD_NAMES, UNKNOWN

FINETUNE_VIEWS = Views()
AugmentOn = Literal["cpu", "device"]
PredictSplit = Literal["train", "valid", "test", "all"]


def default_workers() -> int:
    """Loader workers for this machine: one per core the process may use, at most 8."""
    return max(1, min(8, available_cores()))


def label_subset(labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded subset of ``rows`` stratified by diagnosis (at least one case per class; the
    cases without a diagnosis are one more stratum); ``fraction`` in (0, 1] (the data module
    checks it)."""
    if fraction == 1:
        return rows
    rng = np.random.default_rng(seed)
    diag = labels[rows, HEAD_NAMES.index("DIAG")]
    keep = []
    for cls in np.unique(diag):
        members = rows[diag == cls]
        k = max(1, round(fraction * len(members)))
        keep.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(keep))


class PairedDataModule(L.LightningDataModule):
    """Paired dermoscopic + clinical data, batches as in DESIGN.md §2.

    Args:
        batch_size: training batch size per device.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: loader workers (default: one per available core, at most 8). Training
            with ``augment_on: device`` uses none: its batches are case ids.
        image_size: side of the square views fed to the model.
        derm_views: training views of the dermoscopic image (count and augmentations).
        clinic_views: training views of the clinical image (default: same as ``derm_views``).
        border_crop: pixels cropped from every border when decoding (default: the data source's,
            25 for Derm7pt's black frame).
        cache: ``memory`` decodes every image once; ``disk`` also keeps ``.npy`` files in
            ``cache_dir`` for later runs; ``none`` decodes on every access.
        cache_size: shorter side of the cached images (a bit larger than ``image_size``).
        cache_dir: folder for ``cache: disk``.
        label_fraction: fraction of the training cases whose labels are used, stratified by
            diagnosis and seeded by ``split_seed``.
        keep_unlabelled: keep the other training cases (labels -1, e.g. for pretraining);
            otherwise training uses the labelled cases only.
        split_seed: seed of the label subset.
        mean: per-channel mean used to normalise (0-1 scale).
        std: per-channel standard deviation used to normalise (0-1 scale).
        predict_split: split that ``predict`` runs on (``all``: every case). Prediction does
            not stop at a missing or unreadable image: the case is reported as failed.
        augment_on: where training views are made: ``cpu`` (loader workers, albumentations)
            or ``device`` (the training split's cached images are copied to the accelerator
            once and the views are made there a batch at a time, with the same distribution;
            needs a cache).
        compile_views: with ``augment_on: device``, ``torch.compile`` each view (crop boxes,
            resampling, flips, colour steps, normalisation) into a few fused kernels (the
            colour steps alone compiled were 3.2x faster on an H200; the first batch of each
            views setting waits while it compiles). Default: on when the views are made
            on a CUDA device and Triton is installed.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        image_size: int = 224,
        derm_views: Views = FINETUNE_VIEWS,
        clinic_views: Views | None = None,
        border_crop: int | None = None,
        cache: CacheMode = "memory",
        cache_size: int = 256,
        cache_dir: str | None = None,
        label_fraction: float = 1.0,
        keep_unlabelled: bool = False,
        split_seed: int = 0,
        mean: tuple[float, float, float] = DERM7PT_MEAN,
        std: tuple[float, float, float] = DERM7PT_STD,
        predict_split: PredictSplit = "test",
        drop_last: bool = True,
        augment_on: AugmentOn = "cpu",
        compile_views: bool | None = None,
    ) -> None:
        super().__init__()
        # logged with the run and kept in checkpoints as plain values (loadable with weights_only)
        self.save_hyperparameters(ignore=["derm_views", "clinic_views"])
        views = {"derm_views": derm_views, "clinic_views": clinic_views or derm_views}
        for store in (self.hparams, self._hparams_initial):  # (Lightning logs the initial)
            store.update({k: asdict(v) for k, v in views.items()})
        if not 0 < label_fraction <= 1:
            raise ValueError(
                f"label_fraction = {label_fraction} is outside (0, 1]; use e.g. 0.1 for 10 %"
            )
        if augment_on == "device" and cache == "none":
            raise ValueError("augment_on: device needs the decoded-image cache (memory or disk)")
        if compile_views and augment_on != "device":
            raise ValueError("compile_views: true needs augment_on: device (views on the device)")
        if cache == "disk" and not cache_dir:
            raise ValueError("cache: disk needs a folder: set --data.init_args.cache_dir")
        if cache_size < image_size:
            raise ValueError(
                f"cache_size {cache_size} must be >= image_size {image_size}: views are cut "
                f"from the cached images; set --data.init_args.cache_size={image_size} or more"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.image_size = image_size
        self.derm_views = replace(derm_views)
        self.clinic_views = replace(clinic_views or derm_views)
        self.border_crop = self.default_border_crop() if border_crop is None else border_crop
        # as used, also when the source chose it
        self.hparams["border_crop"] = self._hparams_initial["border_crop"] = self.border_crop
        self.cache = cache
        self.cache_size = cache_size
        self.cache_dir = cache_dir
        self.label_fraction = label_fraction
        self.keep_unlabelled = keep_unlabelled
        self.split_seed = split_seed
        if predict_split not in get_args(PredictSplit):
            raise ValueError(f"predict_split {predict_split!r}: valid: {get_args(PredictSplit)}")
        self.predict_split = predict_split
        self.drop_last = drop_last
        self.augment_on = augment_on
        self.compile_views = compile_views
        self._device_images: DeviceImages | None = None
        self.normalize = Normalize(mean, std)
        self.derm_views.check()
        self.clinic_views.check()
        self.cases: Cases | None = None
        self._store: ImageStore | None = None
        self._ids: tuple[np.ndarray, np.ndarray] | None = None
        self._checked = False  # every listed image file found
        self._seed: int | None = None

    def default_border_crop(self) -> int:
        """Border crop when the config sets none (no crop unless the data source has a frame)."""
        return 0

    @abstractmethod
    def load_cases(self, stage: str | None = None) -> Cases:
        """Read the case table (paths, labels, splits) of this data source, for ``stage`` (the
        one being set up: what the reader warns about may depend on it)."""

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Read the cases once; decode the images of the stage's splits into the cache (fit:
        train and valid; validate, test, predict: theirs; None: all)."""
        if stage is not None:  # called by Lightning on every rank
            self._seed = shared_seed(self.trainer)
        name = getattr(stage, "value", stage)  # Lightning passes a TrainerFn enum
        if self.cases is None:
            self._read(name)
        assert self.cases is not None and self._store is not None and self._ids is not None
        # prediction reports unreadable images per case and goes on; every other stage stops
        self._store.strict = name != "predict"
        if self._store.strict and not self._checked:
            self.cases.check_images_exist()
            self._checked = True
        if name == "fit":
            self._warn_no_pairs()
        rows = self._stage_rows(name)
        self._store.load(np.concatenate([self._ids[0][rows], self._ids[1][rows]]).tolist())
        if name == "fit" and self.label_fraction < 1:
            self._describe_label_fraction()

    def _describe_label_fraction(self) -> None:
        """Which training labels a fit with a ``label_fraction`` uses, and how they were drawn."""
        trained, labels = self.train_labels()
        split = self.split_rows("train")
        known = int((labels[split] != UNKNOWN).any(axis=1).sum())
        diagnosed = bool((self._cases().labels[split, HEAD_NAMES.index("DIAG")] >= 0).any())
        rank_zero_info(
            f"label_fraction {self.label_fraction:g}: the labels of {known} of the "
            f"{len(split)} training cases are used ("
            + ("stratified by diagnosis" if diagnosed else
               "drawn at random: no training case has a diagnosis to stratify by")
            + f"); training reads {len(trained)} cases "
            + ("(keep_unlabelled: the others with labels -1)" if self.keep_unlabelled else
               "(the labelled ones; keep_unlabelled: true keeps the others, e.g. for "
               "pretraining)")
        )  # fmt: skip

    def _stage_rows(self, stage: str | None) -> np.ndarray:
        """The rows whose images ``stage`` (its name) reads."""
        assert self.cases is not None
        splits = {"fit": ["train", "valid"], "validate": ["valid"], "test": ["test"]}.get(
            stage, [self.predict_split] if stage == "predict" else []
        )
        if not splits or "all" in splits:
            return np.arange(len(self.cases))
        none = np.zeros(0, dtype=np.int64)
        return np.concatenate([self.cases.splits.get(s, none) for s in splits])

    def _read(self, stage: str | None) -> None:
        """The case table (read for ``stage``), its image ids and the (empty) image cache."""
        # Forked loader workers hang on their first parallel OpenCV call if this process has
        # started OpenCV's thread pool; the cache decodes in parallel through our own threads.
        cv2.setNumThreads(1)
        cases = self.load_cases(stage)
        paths = list(dict.fromkeys(cases.derm + cases.clinic))
        position = {p: i for i, p in enumerate(paths)}
        self._ids = (
            np.array([position[p] for p in cases.derm]),
            np.array([position[p] for p in cases.clinic]),
        )
        self._store = ImageStore(
            paths,
            self.border_crop,
            self.cache_size,
            self.cache,
            self.cache_dir,
            threads=default_workers(),
            uses=cases.image_uses,
        )
        self.cases = cases

    def _warn_no_pairs(self) -> None:
        """A fit whose training cases have no clinical image at all."""
        cases = self._cases()
        train = cases.splits.get("train", [])
        if len(train) and not cases.pair_valid[train].any():
            rank_zero_warn(
                f"{cases.source}: no training case has a clinical image, so each dermoscopic "
                "image stands in for its own: a model of both modalities sees dermoscopic "
                "images twice, and cross-modal terms have no pairs to learn from"
            )

    def split_rows(self, split: str) -> np.ndarray:
        """Row positions of ``split``; a clear error if the data has no such split."""
        cases = self._cases()
        if split == "all":
            return np.arange(len(cases))
        rows = cases.splits.get(split)
        if rows is None or len(rows) == 0:
            available = [s for s, r in cases.splits.items() if len(r)]
            why = (
                " (a fit validates on it every epoch, and a classifier's checkpoints are "
                "selected on it: give some cases the split 'valid')"
                if split == "valid"
                else ""
            )
            raise DataError(
                f"{cases.source}: no cases in split {split!r}; available: "
                f"{available + ['all']}{why}"
            )
        return rows

    def train_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, labels [N, 8]) of the training split after the label fraction (-1 = unused)."""
        cases = self._cases()
        rows = self.split_rows("train")
        labelled = label_subset(cases.labels, rows, self.label_fraction, self.split_seed)
        labels = cases.labels.copy()
        labels[np.setdiff1d(rows, labelled)] = UNKNOWN
        return (rows if self.keep_unlabelled else labelled), labels

    # ---------------------------------------------------------------- loaders
    def dataset(
        self, split: str, train: bool, training_cases: bool = False
    ) -> PairDataset | PairKeys:
        """Dataset of a split with training views (``train``) or the deterministic eval view;
        with ``augment_on: device``, training items carry image ids and no images. It makes
        whole batches: load it with ``collate_fn=whole_batch`` (as :meth:`loader` does). The
        training split with training views, or with ``training_cases``, has the cases that
        training reads (``label_fraction``, ``keep_unlabelled``)."""
        cases = self._cases()
        assert self._store is not None and self._ids is not None
        if split == "train" and (train or training_cases):
            rows, labels = self.train_labels()
        else:
            rows, labels = self.split_rows(split), cases.labels
        if train and self.augment_on == "device":
            _, derm, clinic = self._device_layout()
            return PairKeys(rows, derm, clinic, labels, cases.pair_valid)
        if train:
            pipes = (
                train_pipeline(self.derm_views, self.image_size),
                train_pipeline(self.clinic_views, self.image_size),
            )
            n_views = (self.derm_views.n, self.clinic_views.n)
        else:
            pipes = (eval_pipeline(self.image_size), eval_pipeline(self.image_size))
            n_views = (1, 1)
        tolerant = not self._store.strict and not train  # (prediction's set-up)
        return PairDataset(
            rows, self._store, *self._ids, labels, cases.pair_valid, *pipes, n_views,
            tolerant, self.image_size, case_seed=self._run_seed(),
        )  # fmt: skip

    def _device_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The images that go to the accelerator, the training split's only: their ids in the
        cache, and per case the position of its dermoscopic and clinical image among them (-1
        for cases outside training)."""
        assert self._store is not None and self._ids is not None
        rows, _ = self.train_labels()
        derm, clinic = self._ids
        keep = np.unique(np.concatenate([derm[rows], clinic[rows]]))
        position = np.full(len(self._store), -1, dtype=np.int64)
        position[keep] = np.arange(len(keep))
        return keep, position[derm], position[clinic]

    def _pins(self) -> bool:
        """Pin batches for a CUDA run (without a trainer: whenever CUDA is present)."""
        if self.trainer is None:
            return torch.cuda.is_available()
        return self.trainer.strategy.root_device.type == "cuda"

    def loader(self, dataset: PairDataset | PairKeys, train: bool) -> DataLoader:
        """A DataLoader with one-thread workers, pinned memory and kept workers.

        Training: a :class:`ResumableLoader` (in this process when its items are case ids
        for the device views) whose order (per epoch) and views (per case and
        epoch) follow from the run's seed alone, whatever the worker count, that shards the
        cases over the ranks and resumes mid-epoch from a checkpoint.
        """
        world = self.trainer.world_size if self.trainer is not None else 1
        workers = 0 if train and isinstance(dataset, PairKeys) else self.num_workers
        common = dict(
            num_workers=workers,
            pin_memory=self._pins(),
            persistent_workers=workers > 0,
            worker_init_fn=one_thread_worker,
            collate_fn=whole_batch,
        )
        if not train:
            return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **common)
        sampler = EpochSampler(dataset, world, self._rank(), shuffle=True, seed=self._run_seed())
        drop_last = self.drop_last and len(sampler) > self.batch_size
        self._check_batches(len(sampler), drop_last)
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            progress=self._progress,
            **common,
        )

    def _check_batches(self, per_rank: int, drop_last: bool) -> None:
        """Warn when an epoch is one batch per rank, drop_last leaves out over a quarter of
        each rank's cases (e.g. a config for one GPU run on several), or the last batch is one
        case (BatchNorm in training mode cannot normalise one value per channel)."""
        batch = self.batch_size
        batches = per_rank // batch if drop_last else -(-per_rank // batch)
        left_out = per_rank % batch if drop_last else 0
        if not drop_last and batches > 1 and per_rank % batch == 1:
            rank_zero_warn(
                f"training: {per_rank} cases per rank and batch_size {batch} leave a last batch "
                "of one case, on which a trained BatchNorm layer with one value per channel "
                "(a projector's) fails; set drop_last: true or another batch_size"
            )
        if batches == 1 or 4 * left_out > per_rank:
            dropped = f", and drop_last leaves {left_out} of them out" if left_out else ""
            rank_zero_warn(
                f"training: {per_rank} cases per rank and batch_size {batch} make {batches} "
                f"batch(es) per epoch{dropped}; a smaller batch_size (or fewer devices) gives "
                "several full batches"
            )

    def _progress(self) -> tuple[int, int]:
        """(batches of this epoch the training loop has finished, batches per epoch)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done, trainer.num_training_batches

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("train", train=True), train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("valid", train=False), train=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("test", train=False), train=False)

    def predict_dataloader(self) -> DataLoader:
        try:
            self.split_rows(self.predict_split)
        except DataError as error:
            raise DataError(f"{error} (predict's split: --data.init_args.predict_split)") from None
        return self.loader(self.dataset(self.predict_split, train=False), train=False)

    def on_before_batch_transfer(
        self, batch: dict[str, Any], dataloader_idx: int
    ) -> dict[str, Any]:
        """A key batch's views seed, from (seed, epoch, first case) while they are on the CPU."""
        if "derm_id" in batch:
            batch["views_seed"] = self._batch_seed(batch)
        return batch

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise the transferred views, batched; or make them on the device (``augment_on:
        device``), normalised there."""
        if "derm_id" in batch:
            self._device_views(batch)
            return batch
        for key in ("derm", "clinic"):
            views = batch[key]
            if isinstance(views, list):
                batch[key] = [self.normalize(v) for v in views]
            else:
                batch[key] = self.normalize(views)
        return batch

    def _device_views(self, batch: dict[str, Any]) -> None:
        """Normalised views of a key batch, drawn from its ``views_seed`` (set before the
        transfer)."""
        device = batch["derm_id"].device
        if self._device_images is None or self._device_images.images.device != device:
            assert self._store is not None
            keep = self._device_layout()[0]
            self._device_images = DeviceImages(
                self._store, device, keep, self.batch_size, self.image_size
            )
        seed = batch.pop("views_seed", None)
        if seed is None:  # called without the hook before the transfer (values read back)
            seed = self._batch_seed(batch)
        gen = torch.Generator(device=device).manual_seed(seed)
        fused = fuses_by_default(device.type) if self.compile_views is None else self.compile_views
        norm = self.normalize.to(device)
        for key, views in (("derm", self.derm_views), ("clinic", self.clinic_views)):
            ids = batch[f"{key}_id"]
            made = self._device_images.views(
                ids, views, self.image_size, gen, fused, (norm.mean, norm.std)
            )
            batch[key] = made[0] if views.n == 1 else made

    def _batch_seed(self, batch: dict[str, Any]) -> int:
        """A key batch's views seed: from (run seed, epoch, its first case)."""
        return views_seed(self._run_seed(), int(batch["epoch"][0]), int(batch["index"][0]))

    def _run_seed(self) -> int:
        """The seed of the training order and views (rank 0's once ``setup`` ran)."""
        return self._seed if self._seed is not None else torch.initial_seed() % 2**32

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _cases(self) -> Cases:
        if self.cases is None:
            self.setup()
        assert self.cases is not None
        return self.cases
