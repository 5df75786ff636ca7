"""K-means pseudo-labels: the FAISS function, the callback in a fit, two ranks, resuming, bank."""

from __future__ import annotations

import copy
import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import write_jpeg
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

import skinssl.callbacks.kmeans as km
import skinssl.callbacks.kmeans_report as report
import skinssl.clustering as clustering
from skinssl.callbacks import GlooExit, KMeansPseudoLabels
from skinssl.datamodules import PairedCSVDataModule, Views

HEADS = {"PN": 3, "BWV": 2}
DEVICE = torch.device(os.environ.get("SKINSSL_TEST_DEVICE", "cpu"))


class ToyModule(L.LightningModule):
    """The clustering protocol over a tiny net: a frozen trunk kept in eval mode, a BN in train
    mode, per-head linear projections and bias-free prototype heads."""

    def __init__(self, out_dir: str | None = None, nan: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.trunk.requires_grad_(False).eval()
        self.norm = nn.BatchNorm1d(8)
        self.proj = nn.ModuleDict({h: nn.Linear(8, 16) for h in HEADS})
        self.protos = nn.ModuleDict({h: nn.Linear(16, k, bias=False) for h, k in HEADS.items()})
        self.out_dir, self.nan = out_dir, nan
        self.pseudo: torch.Tensor | None = None
        self.calls: list[int] = []
        self.pass_modes: list[bool] = []  # True: no grad and every submodule in eval mode
        self.training_passes: list[bool] = []  # True: no grad and every one in training mode

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        u = self.norm(torch.cat([self.trunk(batch["derm"]), self.trunk(batch["clinic"])], 1))
        return {h: p(u) * (float("nan") if self.nan else 1.0) for h, p in self.proj.items()}

    def cluster_sizes(self) -> dict[str, int]:
        return dict(HEADS)

    def cluster_embeddings(self, batch: dict) -> dict[str, torch.Tensor]:
        modes = {m.training for m in self.modules()}
        self.pass_modes.append(not torch.is_grad_enabled() and modes == {False})
        self.training_passes.append(not torch.is_grad_enabled() and modes == {True})
        return self.embed(batch)

    def set_clusters(
        self, centroids: dict[str, torch.Tensor], labels: torch.Tensor, fresh: bool = True
    ) -> None:
        if fresh:  # as SM3 stage 2: a resumed run keeps its trained prototypes
            for h, c in centroids.items():
                self.protos[h].weight.data.copy_(c)
        self.pseudo = labels
        self.calls.append(self.trainer.current_epoch)
        if self.out_dir:
            torch.save(labels, Path(self.out_dir) / f"rank{self.global_rank}_{len(self.calls)}.pt")

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        emb = self.embed(batch)
        y = self.pseudo[batch["index"]]
        losses = [
            F.cross_entropy(self.protos[h](F.normalize(e, dim=1)), y[:, j], ignore_index=-1)
            for j, (h, e) in enumerate(emb.items())
        ]
        return {"loss": sum(losses), "embeddings": {h: e.detach() for h, e in emb.items()}}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def make_dm(root: Path, n_train: int, batch_size: int = 2, **kw: Any) -> PairedCSVDataModule:
    """Paired CSV data: 2 valid, 2 test, then ``n_train`` training cases (so that a label
    written by position rather than by case lands on the wrong rows); PN known on 2 of 3."""
    rng = np.random.default_rng(0)
    splits = ["valid", "valid", "test", "test"] + ["train"] * n_train
    path = root / "pairs.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["derm", "clinic", "PN", "split"])
        for i, split in enumerate(splits):
            for name in (f"d{i}.jpg", f"c{i}.jpg"):
                write_jpeg(root / name, rng, (32, 32))
            w.writerow([f"d{i}.jpg", f"c{i}.jpg", ["absent", "ATP", ""][i % 3], split])
    return PairedCSVDataModule(
        csv_path=str(path),
        border_crop=2,
        image_size=24,
        cache_size=28,
        batch_size=batch_size,
        num_workers=0,
        **{"keep_unlabelled": True, **kw},
    )


def trainer(root: Path, callbacks: list, max_epochs: int = 2, **kw) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(root),
    )
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


def train_rows(dm: PairedCSVDataModule) -> np.ndarray:
    return dm.cases.splits["train"]


def check_labels(labels: torch.Tensor, rows: np.ndarray) -> None:
    """Every training row labelled in range, every other row -1."""
    other = np.setdiff1d(np.arange(len(labels)), rows)
    for j, k in enumerate(HEADS.values()):
        assert ((labels[rows, j] >= 0) & (labels[rows, j] < k)).all()
        assert (labels[other, j] == -1).all()


# ------------------------------------------------------------------ the k-means function
def blobs(n_per: int, k: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = np.repeat(np.arange(k), n_per)
    x = centers[truth] + 0.15 * rng.normal(size=(k * n_per, d)) / np.sqrt(d)
    return x.astype(np.float32), truth


@pytest.mark.parametrize("k", [3, 5])
def test_kmeans_recovers_blobs_deterministically(k: int) -> None:
    x, truth = blobs(60, k, 32, seed=k)
    centroids, assign, objective = clustering.kmeans(x, k, niter=20, nredo=3, seed=7)
    assert centroids.shape == (k, 32) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert assign.shape == (len(x),) and assign.dtype == np.int64
    assert normalized_mutual_info_score(truth, assign) > 0.95
    assert 0.9 < objective <= 1
    again = clustering.kmeans(x, k, niter=20, nredo=3, seed=7)
    np.testing.assert_array_equal(again[1], assign)
    np.testing.assert_array_equal(again[0], centroids)


def test_kmeans_takes_a_32_bit_seed() -> None:
    """A run's seed may have 32 bits (``seed_everything: true`` draws one); FAISS takes a C
    int, and gets the seed modulo 2**31."""
    x, _ = blobs(10, 2, 8, seed=0)
    big = clustering.kmeans(x, 2, seed=2**32 - 1)
    np.testing.assert_array_equal(big[0], clustering.kmeans(x, 2, seed=2**31 - 1)[0])


def test_kmeans_errors() -> None:
    with pytest.raises(ValueError, match="K = 5 clusters needs at least 5 samples, got 3"):
        clustering.kmeans(np.ones((3, 4), np.float32), 5)
    x = np.ones((10, 4), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite \(NaN/inf\) values in the 10 x 4"):
        clustering.kmeans(x, 2)


def authors_reference(x: np.ndarray, k: int, niter: int, seed: int, head: int = 0):
    """The authors' ``cluster_memory`` as a float64 loop: the same K starting samples (the
    ``head``-th draw of the seeded generator), dot-product E-steps, mean M-steps over raw
    members, empty clusters keep their centroid, normalise every step."""
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randperm(len(x), generator=gen) for _ in range(head + 1)][-1][:k].numpy()
    x = x.astype(np.float64)
    c = x[start].copy()
    empty = 0
    for step in range(niter + 1):
        a = np.array([int(np.argmax([row @ ck for ck in c])) for row in x])
        if step == niter:
            break
        for j in range(k):
            members = x[a == j]
            if len(members):
                c[j] = members.mean(0)
            else:
                empty += 1
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    return c, a, empty


@pytest.mark.parametrize("data", ["blobs", "duplicates"])
def test_authors_kmeans_matches_a_direct_loop(data: str) -> None:
    if data == "blobs":
        x, _ = blobs(30, 4, 16, seed=1)
        x = x * np.random.default_rng(0).uniform(0.5, 3, (len(x), 1)).astype(np.float32)
    else:  # three distinct points, K = 6: some clusters start or stay empty
        x = np.repeat(np.eye(3, 8, dtype=np.float32) + 0.1, 10, axis=0)
    ref_c, ref_a, empty = authors_reference(x, 6 if data == "duplicates" else 4, 10, seed=3)
    c, a, objective = clustering.dot_kmeans(x, len(ref_c), niter=10, seed=3)
    np.testing.assert_array_equal(a, ref_a)
    np.testing.assert_allclose(c, ref_c, atol=1e-5)
    assert empty > 0 or data == "blobs"  # the duplicates exercise the empty-cluster rule
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert objective == pytest.approx(float((unit * ref_c[ref_a]).sum(1).mean()), abs=1e-5)


def test_authors_kmeans_of_several_heads_at_once_equals_one_at_a_time() -> None:
    """Heads with other K and D, batched (zero-padded) or in batches of one, give each head's
    own result, from its own random start."""
    rng = np.random.default_rng(2)
    shapes = [(4, 16), (2, 8), (3, 16)]
    feats = [blobs(24 // k, k, d, seed=s)[0] for s, (k, d) in enumerate(shapes)]  # 24 rows each
    feats[1] = feats[1] * rng.uniform(0.5, 3, (24, 1)).astype(np.float32)
    ks = [4, 2, 3]
    tensors = [torch.from_numpy(x) for x in feats]
    found = clustering.dot_kmeans_heads(tensors, ks, niter=10, seed=5)
    for head, ((c, a, objective), x, k) in enumerate(zip(found, feats, ks, strict=True)):
        ref_c, ref_a, _ = authors_reference(x, k, 10, seed=5, head=head)
        assert c.shape == ref_c.shape and a.dtype == torch.int64 and objective.ndim == 0
        np.testing.assert_array_equal(a.numpy(), ref_a)
        np.testing.assert_allclose(c.numpy(), ref_c, atol=1e-5)
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        expected = float((unit * ref_c[ref_a]).sum(1).mean())
        assert float(objective) == pytest.approx(expected, abs=1e-5)
    one_at_a_time = clustering.dot_kmeans_heads(tensors, ks, niter=10, seed=5, batch_bytes=1)
    for (c, a, objective), (c1, a1, objective1) in zip(found, one_at_a_time, strict=True):
        assert torch.equal(a, a1)
        torch.testing.assert_close(c, c1, atol=1e-6, rtol=0)
        assert float(objective) == pytest.approx(float(objective1), abs=1e-6)
    with pytest.raises(ValueError, match="same samples; got \\[24, 23\\]"):
        clustering.dot_kmeans_heads([tensors[0], tensors[1][:23]], [2, 2])


@contextmanager
def raising_on_sync() -> Iterator[None]:
    """On a CUDA DEVICE, once its queue is empty: any synchronisation inside raises (CUDA's
    sync debug mode). Elsewhere nothing."""
    if DEVICE.type != "cuda":
        yield
        return
    torch.cuda.synchronize(DEVICE)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_authors_kmeans_on_the_test_device_is_queued_without_waiting() -> None:
    """On ``SKINSSL_TEST_DEVICE`` (``cuda`` in the device check): the CPU's labels; on a GPU
    the k-means, its clock and the copies of its results to the host are queued without a
    synchronisation (CUDA's sync debug mode raises on one)."""
    ks = [4, 2, 3]
    feats = [torch.from_numpy(blobs(72 // k, k, 16, seed=k)[0]) for k in ks]  # 72 rows each
    on_cpu = clustering.dot_kmeans_heads(feats, ks, niter=10, seed=5)
    feats = [f.to(DEVICE) for f in feats]
    with raising_on_sync():
        clock = report.Clock(DEVICE)
        clock.start()
        found = clustering.dot_kmeans_heads(feats, ks, niter=10, seed=5)
        clock.stop()
        copies = report.HostCopies(
            assignments=torch.stack([a for _, a, _ in found]),
            objectives=torch.stack([o for _, _, o in found]),
            previous=None,
        )
    host = copies.get()
    assert torch.equal(host["assignments"], torch.stack([a for _, a, _ in on_cpu]))
    expected = torch.stack([o for _, _, o in on_cpu])
    torch.testing.assert_close(host["objectives"], expected, atol=1e-5, rtol=0)
    assert host["previous"] is None and clock.seconds() > 0


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs SKINSSL_TEST_DEVICE=cuda")
@pytest.mark.parametrize("deterministic", [False, True])
def test_authors_kmeans_replayed_from_a_cuda_graph(
    deterministic: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The eager iterations' labels, centroids and objectives: at the capture, at a replay
    with other starting samples and at one with other features (queued without a
    synchronisation); one graph for one shape. Also under deterministic algorithms
    (``trainer.deterministic: true``; cuBLAS with the workspace setting Lightning makes)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    ks = [4, 2, 3]
    feats = [torch.from_numpy(blobs(72 // k, k, 16, seed=k)[0]).to(DEVICE) for k in ks]
    other = [f.flip(0) * 2 for f in feats]
    steps = clustering.GraphedSteps()

    def same(a: list, b: list) -> None:
        for (c, labels, objective), (c1, labels1, objective1) in zip(a, b, strict=True):
            assert torch.equal(labels, labels1)
            torch.testing.assert_close(c, c1, atol=1e-5, rtol=0)
            torch.testing.assert_close(objective, objective1, atol=1e-5, rtol=0)

    torch.use_deterministic_algorithms(deterministic)
    try:
        for seed in (5, 6):  # the capture, then a replay from other samples
            graphed = clustering.dot_kmeans_heads(feats, ks, 10, seed, steps=steps)
            same(graphed, clustering.dot_kmeans_heads(feats, ks, 10, seed))
        with raising_on_sync():
            replayed = clustering.dot_kmeans_heads(other, ks, 10, 5, steps=steps)
        same(replayed, clustering.dot_kmeans_heads(other, ks, 10, 5))
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(steps._graphs) == 1


def test_a_failing_report_warns_and_training_goes_on_with_several_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statistics and logs run on rank 0 alone, after the broadcast: with several ranks an
    error there is a warning (raising would leave the other ranks waiting in the next
    collective); in one process it is raised."""

    def broken(*args: object) -> None:
        raise KeyError("a broken statistic")

    monkeypatch.setattr(report, "clustering_metrics", broken)
    with pytest.raises(KeyError, match="a broken statistic"):
        trainer(tmp_path, [KMeansPseudoLabels()]).fit(ToyModule(), make_dm(tmp_path, n_train=4))
    callback = KMeansPseudoLabels()
    callback._report = SimpleNamespace(step=3)
    monkeypatch.setattr(km, "write_report", broken)
    with pytest.warns(UserWarning, match="clustering at step 3 failed .*a broken statistic"):
        callback._report_now(SimpleNamespace(world_size=2))
    assert callback._report is None  # (reported once)


def test_authors_kmeans_runs_at_full_float32_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not TF32, which the CLI allows for training; the setting is restored afterwards."""
    seen = []
    steps = clustering.dot_kmeans_steps

    def recording(*args: object) -> object:
        seen.append(torch.get_float32_matmul_precision())
        return steps(*args)

    monkeypatch.setattr(clustering, "dot_kmeans_steps", recording)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        clustering.dot_kmeans(blobs(10, 2, 8, seed=0)[0], 2)
        assert seen == ["highest"]
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_authors_kmeans_weights_members_by_norm() -> None:
    """Unlike spherical k-means, a long member pulls its centroid harder."""
    x = np.array([[1, 0], [0, 1], [10, 0]], np.float32)  # one cluster: the mean of raw rows
    c, _, _ = clustering.dot_kmeans(x, 1, niter=1, seed=0)
    raw = x.mean(0) / np.linalg.norm(x.mean(0))
    np.testing.assert_allclose(c[0], raw, atol=1e-6)
    sph = clustering.kmeans(x, 1, niter=1)[0][0]
    assert abs(float(sph @ raw)) < 0.99  # the spherical centroid points elsewhere


def test_feature_check_counts_non_finite_values_only() -> None:
    x = np.zeros((4, 3), np.float32)
    x[0, :2] = np.finfo(np.float32).max  # finite, though their float32 sum overflows
    assert clustering.checked_features(x, 2) is not None
    x[1, 0], x[2, 1] = np.inf, -np.inf  # inf - inf: a NaN sum
    with pytest.raises(ValueError, match="2 non-finite"):
        clustering.checked_features(x, 2)


def test_authors_kmeans_errors() -> None:
    with pytest.raises(ValueError, match="K = 5 clusters needs at least 5 samples, got 3"):
        clustering.dot_kmeans(np.ones((3, 4), np.float32), 5)
    with pytest.raises(ValueError, match="non-finite"):
        clustering.dot_kmeans(np.full((4, 2), np.inf, np.float32), 2)
    with pytest.raises(ValueError, match="'authors' k-means has no restarts"):
        KMeansPseudoLabels(algorithm="authors", nredo=3)
    with pytest.raises(ValueError, match="algorithm = 'lloyd'"):
        KMeansPseudoLabels(algorithm="lloyd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cuda_graph: true replays the 'authors' k-means"):
        KMeansPseudoLabels(cuda_graph=True)


# ------------------------------------------------------------------ the callback in a fit
def test_callback_fit_labels_logs_and_clean_pass(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, n_train=8)
    model, cb = ToyModule(), KMeansPseudoLabels()
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    t = trainer(tmp_path, [cb], logger=logger)
    torch.manual_seed(11)  # as seed_everything(11): the k-means seed follows the run's
    t.fit(model, dm)
    assert cb.state_dict()["settings"]["seed"] == 11
    assert model.calls == [0, 1]
    assert model.pass_modes and all(model.pass_modes)
    check_labels(model.pseudo, train_rows(dm))
    for h, c in cb.state_dict()["centroids"].items():  # L2-normalised [K, D]
        assert c.shape == (HEADS[h], 16)
        torch.testing.assert_close(c.norm(dim=1), torch.ones(HEADS[h]))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0})
    tags = events.Reload().Tags()
    names = ("objective", "size_min", "size_max", "nmi_true")
    for name in [f"PN/{n}" for n in names] + ["seconds", "statistics_seconds"]:
        assert len(events.Scalars(f"kmeans/{name}")) == 2
    assert len(events.Scalars("kmeans/PN/nmi_prev")) == 1  # from the second clustering on
    (share,) = events.Scalars("kmeans/epoch_share")  # after an epoch has been timed
    (spent,) = events.Scalars("kmeans/callback_seconds")
    (second,) = [e.value for e in events.Scalars("kmeans/seconds")][1:]
    assert 0 < share.value < 1 and spent.value > second  # k-means and the rest of the callback
    assert "kmeans/BWV/nmi_true" not in tags["scalars"]  # no BWV column in the CSV
    assert "kmeans/BWV/ari_prev" in tags["scalars"]
    assert {"kmeans/PN/cluster_sizes", "kmeans/BWV/cluster_sizes"} <= set(tags["histograms"])

    # A direct pass leaves every train/eval flag and the BN statistics exactly as they were.
    model.train()
    model.trunk.eval()
    flags = {n: m.training for n, m in model.named_modules()}
    stats = {n: b.clone() for n, b in model.named_buffers()}
    cb.cluster(t, model)
    assert flags == {n: m.training for n, m in model.named_modules()}
    assert all(torch.equal(stats[n], b) for n, b in model.named_buffers())
    logger.experiment.close()  # its writer thread would write after tmp_path is gone


def test_callback_with_the_authors_kmeans(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, n_train=8)
    model, cb = ToyModule(), KMeansPseudoLabels(algorithm="authors", cuda_graph=True)  # no GPU
    saves = ModelCheckpoint(dirpath=tmp_path / "ck", filename="end")
    trainer(tmp_path, [cb, saves], enable_checkpointing=True).fit(model, dm)
    assert model.calls == [0, 1]
    check_labels(model.pseudo, train_rows(dm))
    for h, c in cb.state_dict()["centroids"].items():
        torch.testing.assert_close(c.norm(dim=1), torch.ones(HEADS[h]))
    with pytest.raises(ValueError, match="algorithm: checkpoint 'authors', this run 'spherical'"):
        trainer(tmp_path, [KMeansPseudoLabels()]).fit(
            ToyModule(), dm, ckpt_path=str(tmp_path / "ck" / "end.ckpt")
        )


def test_every_n_epochs(tmp_path: Path) -> None:
    model = ToyModule()
    cb = KMeansPseudoLabels(every_n_epochs=2)
    trainer(tmp_path, [cb], max_epochs=4).fit(model, make_dm(tmp_path, n_train=6))
    assert model.calls == [0, 2]


def test_a_callback_used_again_clusters_the_new_fit(tmp_path: Path) -> None:
    """A second fit with the same callback clusters its own model before its first epoch,
    from its own pass (nothing of the first fit's memory bank or labels kept)."""
    cb = KMeansPseudoLabels(every_n_epochs=5, features="memory_bank")
    first = ToyModule()
    trainer(tmp_path, [cb], max_epochs=2).fit(first, make_dm(tmp_path, n_train=6))
    second = ToyModule()
    trainer(tmp_path, [cb], max_epochs=1).fit(second, make_dm(tmp_path, n_train=6))
    assert first.calls == [0] and second.calls == [0]
    assert second.pass_modes.count(True) >= 1  # the bank filled from the new model


@pytest.mark.parametrize("algorithm", ["spherical", "authors"])
def test_each_clustering_seeded_with_seed_plus_epoch(
    algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds = []
    name = "kmeans" if algorithm == "spherical" else "dot_kmeans_heads"
    real = getattr(km, name)
    seed_at = 4 if algorithm == "spherical" else 3  # (features, k, niter, [nredo,] seed, ...)
    monkeypatch.setattr(km, name, lambda *a, **k: seeds.append(a[seed_at]) or real(*a, **k))
    cb = KMeansPseudoLabels(seed=5, algorithm=algorithm)
    trainer(tmp_path, [cb], max_epochs=3).fit(ToyModule(), make_dm(tmp_path, n_train=6))
    per_epoch = len(HEADS) if algorithm == "spherical" else 1  # (authors': heads in one call)
    assert seeds == [s for s in (5, 6, 7) for _ in range(per_epoch)]


def test_callback_names_head_and_epoch_on_bad_features(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, n_train=4)
    with pytest.raises(ValueError, match="head 'PN' \\(K = 3\\) at epoch 0: .*non-finite"):
        trainer(tmp_path, [KMeansPseudoLabels()]).fit(ToyModule(nan=True), dm)
    dm = make_dm(tmp_path, n_train=2)
    with pytest.raises(ValueError, match="head 'PN' \\(K = 3\\) at epoch 0: .*got 2"):
        trainer(tmp_path, [KMeansPseudoLabels()]).fit(ToyModule(), dm)


# ------------------------------------------------------------------ two ranks
@pytest.mark.parametrize("rank", [0, 1])
def test_a_failure_on_rank_0_reaches_every_rank(rank: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 takes part in the broadcast before it raises (the others would wait for it
    forever), and the other ranks raise too, naming rank 0's error."""
    from types import SimpleNamespace

    broadcasts = []

    def broadcast(obj: object, src: int) -> object:
        broadcasts.append(obj)
        return {"error": "RuntimeError on rank 0: CUDA out of memory"} if rank else obj

    cb = KMeansPseudoLabels()
    monkeypatch.setattr(cb, "_features", lambda trainer, module: (np.arange(4), {}))

    def out_of_memory(*args: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(cb, "_cluster_rank0", out_of_memory)
    trainer = SimpleNamespace(
        current_epoch=0, is_global_zero=rank == 0, strategy=SimpleNamespace(broadcast=broadcast)
    )
    expected = "^CUDA out of memory$" if rank == 0 else "k-means pseudo-labels: RuntimeError on"
    with pytest.raises(RuntimeError, match=expected):
        cb.cluster(trainer, ToyModule())  # type: ignore[arg-type]
    assert len(broadcasts) == 1


def test_two_ranks_identical_labels(tmp_path: Path) -> None:
    """ddp_spawn on gloo, 7 training cases (the sampler pads one); pass, then the bank."""
    dm = make_dm(tmp_path, n_train=7)
    out = tmp_path / "labels"
    out.mkdir()
    t = trainer(
        tmp_path,
        [KMeansPseudoLabels(features="memory_bank"), GlooExit()],
        devices=2,
        strategy="ddp_spawn",
        logger=CSVLogger(str(tmp_path), name="csv", version=0),
    )
    t.fit(ToyModule(out_dir=str(out)), dm)
    dm.setup()
    for call in (1, 2):
        labels = [torch.load(out / f"rank{r}_{call}.pt", weights_only=True) for r in (0, 1)]
        assert torch.equal(labels[0], labels[1])
        check_labels(labels[0], train_rows(dm))
    with (tmp_path / "csv" / "version_0" / "metrics.csv").open() as f:
        samples = [float(r["kmeans/samples"]) for r in csv.DictReader(f) if r["kmeans/samples"]]
    assert samples == [7.0, 7.0]  # one row per case, the padded duplicate dropped


# ------------------------------------------------------------------ resuming
def test_two_ranks_label_each_case_as_one_process(tmp_path: Path) -> None:
    """The first clustering (a clean pass of the same weights) gives the same labels on 1 and 2
    processes: the features gathered from the ranks stay with their cases."""
    dm = make_dm(tmp_path, n_train=7)
    torch.manual_seed(0)
    model = ToyModule()
    labels = {}
    for devices, extra in ((1, {}), (2, {"strategy": "ddp_spawn"})):
        out = tmp_path / f"labels{devices}"
        out.mkdir()
        run = copy.deepcopy(model)
        run.out_dir = str(out)
        callbacks = [KMeansPseudoLabels(seed=0), GlooExit()]
        trainer(tmp_path, callbacks, max_epochs=1, devices=devices, **extra).fit(run, dm)
        labels[devices] = torch.load(out / "rank0_1.pt", weights_only=True)
    assert torch.equal(labels[1], labels[2])


def test_resume_mid_epoch_keeps_boundary_reclusters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = make_dm(tmp_path, n_train=8)  # 4 steps per epoch
    ck = tmp_path / "ck"
    saves = [
        ModelCheckpoint(dirpath=ck, filename="mid", every_n_train_steps=6),
        ModelCheckpoint(dirpath=ck, filename="end-{epoch}", save_top_k=-1),
    ]
    trainer(tmp_path, [KMeansPseudoLabels(), *saves], enable_checkpointing=True).fit(
        ToyModule(), dm
    )
    mid = torch.load(ck / "mid.ckpt", weights_only=True)
    state = mid["callbacks"]["KMeansPseudoLabels"]
    assert state["epoch"] == 1 and mid["global_step"] == 6
    assert state["settings"]["heads"] == HEADS and state["labels"].shape == (12, 2)

    runs: list[int] = []
    real = km.kmeans
    monkeypatch.setattr(km, "kmeans", lambda *a, **k: runs.append(1) or real(*a, **k))

    model = ToyModule()
    trainer(tmp_path, [KMeansPseudoLabels()]).fit(model, dm, ckpt_path=str(ck / "mid.ckpt"))
    assert runs == [] and model.calls == [1]  # mid-epoch: the epoch's labels kept
    assert torch.equal(model.pseudo, state["labels"])

    model = ToyModule()
    end0 = ck / "end-epoch=0.ckpt"
    trainer(tmp_path, [KMeansPseudoLabels()]).fit(model, dm, ckpt_path=str(end0))
    assert len(runs) == len(HEADS) and model.calls == [1]  # boundary: clustered anew
    saved0 = torch.load(end0, weights_only=True)["callbacks"]["KMeansPseudoLabels"]
    assert saved0["epoch"] == 0

    with pytest.raises(ValueError, match="niter: checkpoint 10, this run 5"):
        trainer(tmp_path, [KMeansPseudoLabels(niter=5)]).fit(ToyModule(), dm, ckpt_path=str(end0))
    with pytest.raises(ValueError, match="fill: checkpoint 'eval', this run 'train'"):
        trainer(tmp_path, [KMeansPseudoLabels(features="memory_bank", fill="train")]).fit(
            ToyModule(), dm, ckpt_path=str(end0)
        )
    older = {**saved0, "settings": {k: v for k, v in saved0["settings"].items() if k != "fill"}}
    seed = saved0["settings"]["seed"]  # the run's: a callback not yet set up has no other
    KMeansPseudoLabels(seed=seed).load_state_dict(older)  # from before the setting: fill eval
    with pytest.raises(ValueError, match="fill: checkpoint 'eval'"):
        KMeansPseudoLabels(seed=seed, features="memory_bank", fill="train").load_state_dict(older)


# ------------------------------------------------------------------ memory bank
def test_memory_bank_resumes_mid_epoch_as_uninterrupted(tmp_path: Path) -> None:
    """A run resumed from a mid-epoch checkpoint clusters the same bank at the next epoch."""
    dm = make_dm(tmp_path, n_train=8)  # 4 steps per epoch
    ck, whole, cut = tmp_path / "ck", tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    mid = ModelCheckpoint(dirpath=ck, filename="mid-{step}", every_n_train_steps=6, save_top_k=-1)
    bank = KMeansPseudoLabels(features="memory_bank")
    trainer(tmp_path, [bank, mid], max_epochs=3, enable_checkpointing=True).fit(
        ToyModule(out_dir=str(whole)), dm
    )
    path = ck / "mid-step=6.ckpt"  # epoch 1, 2 of 4 batches
    state = torch.load(path, weights_only=True)["callbacks"]["KMeansPseudoLabels"]
    assert state["bank_filled"][train_rows(dm)].all() and set(state["bank"]) == set(HEADS)

    model = ToyModule(out_dir=str(cut))
    resumed = KMeansPseudoLabels(features="memory_bank")
    trainer(tmp_path, [resumed], max_epochs=3).fit(model, dm, ckpt_path=str(path))
    assert model.calls == [1, 2]  # the kept labels of epoch 1, then epoch 2's clustering
    last = torch.load(whole / "rank0_3.pt", weights_only=True)
    torch.testing.assert_close(torch.load(cut / "rank0_2.pt", weights_only=True), last)
    for h in HEADS:
        torch.testing.assert_close(resumed._centroids[h], bank._centroids[h], rtol=0, atol=0)


def test_memory_bank_labels_every_training_case(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, n_train=8, batch_size=3)  # drop_last: 2 cases unseen per epoch
    passes = []
    real = dm.dataset

    def counting(split: str, train: bool, **kwargs: bool):
        passes.append(train)
        return real(split, train, **kwargs)

    dm.dataset = counting
    model = ToyModule(out_dir=str(tmp_path))
    trainer(tmp_path, [KMeansPseudoLabels(features="memory_bank")], max_epochs=3).fit(model, dm)
    assert model.calls == [0, 1, 2]
    assert passes.count(False) == 1  # only the first clustering needed a pass
    for call in (1, 2, 3):
        check_labels(torch.load(tmp_path / f"rank0_{call}.pt", weights_only=True), train_rows(dm))


@pytest.mark.parametrize("fill", ["eval", "train"])
def test_clustering_sees_the_cases_training_reads(tmp_path: Path, fill: str) -> None:
    """With a label fraction and no keep_unlabelled, training reads the labelled cases only:
    the memory bank and every clustering have those, in both fill modes."""
    dm = make_dm(tmp_path, n_train=12, batch_size=3, label_fraction=0.5, keep_unlabelled=False)
    model = ToyModule(out_dir=str(tmp_path))
    bank = KMeansPseudoLabels(features="memory_bank", fill=fill)
    trainer(tmp_path, [bank], max_epochs=2).fit(model, dm)
    rows, _ = dm.train_labels()
    assert len(rows) < len(train_rows(dm))
    for call in (1, 2):
        check_labels(torch.load(tmp_path / f"rank0_{call}.pt", weights_only=True), rows)


def test_a_fill_pass_over_case_ids_loads_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fill: train`` with views on the device batches case ids: no loader workers for it
    (as training), whatever the data's ``num_workers``."""
    workers = []
    real = km.DataLoader

    def recording(*args: Any, **kwargs: Any) -> Any:
        workers.append(kwargs["num_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(km, "DataLoader", recording)
    dm = make_dm(tmp_path, n_train=6, batch_size=3, augment_on="device")
    dm.num_workers = 2
    callback = KMeansPseudoLabels(features="memory_bank", fill="train", algorithm="authors")
    trainer(tmp_path, [callback], max_epochs=1).fit(ToyModule(), dm)
    assert workers == [0]


@pytest.mark.parametrize(
    ("fill", "augment_on"), [("eval", "cpu"), ("train", "cpu"), ("train", "device")]
)
def test_memory_bank_filled_as_the_authors_code(tmp_path: Path, fill: str, augment_on: str) -> None:
    """``fill: train`` fills the bank from the training views (made in the loader or on the
    device) with every submodule in training mode, the frozen trunk included (its BatchNorm
    statistics move once), without gradients; ``eval`` leaves the trunk's statistics as they
    were. Each submodule's mode is restored. 7 cases in batches of 3: the training-mode pass
    makes 3 and 4 (BatchNorm cannot normalise a last batch of one case in training mode)."""
    dm = make_dm(tmp_path, n_train=7, batch_size=3, augment_on=augment_on)
    passes: list[bool] = []
    real = dm.dataset

    def counting(split: str, train: bool, **kwargs: bool):
        passes.append(train)
        return real(split, train, **kwargs)

    dm.dataset = counting
    model = ToyModule()
    bn = model.trunk[1]
    before = bn.running_mean.clone()
    callback = KMeansPseudoLabels(features="memory_bank", fill=fill, algorithm="authors")
    trainer(tmp_path, [callback], max_epochs=2).fit(model, dm)
    passes.remove(True)  # the training loader's dataset
    assert passes == [fill == "train"]  # one fill pass, then the bank
    wanted, other = (model.training_passes, model.pass_modes)[:: 1 if fill == "train" else -1]
    assert wanted == [True] * (2 if fill == "train" else 3) and not any(other)
    assert (not torch.equal(bn.running_mean, before)) == (fill == "train")
    assert not bn.training and model.norm.training  # each submodule's own mode again
    check_labels(model.pseudo, train_rows(dm))
    with pytest.raises(ValueError, match="fill = 'train'; valid: 'eval', or 'train' with"):
        KMeansPseudoLabels(fill="train")  # features: pass has no bank to fill
    check = KMeansPseudoLabels._check_fill_views
    check(SimpleNamespace(derm_views=Views(n=0), clinic_views=Views(n=1)))  # clinic only
    with pytest.raises(ValueError, match=r"the data makes \{'clinic_views.n': 2\}; use fill"):
        check(SimpleNamespace(derm_views=Views(n=1), clinic_views=Views(n=2)))
