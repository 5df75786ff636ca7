"""Shared fixtures: the real Derm7pt metadata with generated placeholder images, tiny data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
torch.set_num_threads(2)
cv2.setNumThreads(1)

from helpers import write_jpeg  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "derm7pt"


@pytest.fixture(scope="session")
def derm7pt_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real meta files plus a placeholder JPEG for each of the 2013 release image paths."""
    if not (SHARED / "meta" / "meta.csv").is_file():
        pytest.skip(f"real Derm7pt metadata not found at {SHARED}")
    root = tmp_path_factory.mktemp("derm7pt")
    shutil.copytree(SHARED / "meta", root / "meta")
    for p in (root / "meta").iterdir():
        p.chmod(0o644)
    rng = np.random.default_rng(0)
    for line in (SHARED / "images_sha256.txt").read_text().splitlines():
        write_jpeg(root / line.split()[1], rng)
    return root


@pytest.fixture
def copy_release(derm7pt_release: Path, tmp_path: Path):
    """A writable copy of the placeholder release (meta and images) to break on purpose."""

    def make() -> Path:
        root = tmp_path / "release"
        shutil.copytree(derm7pt_release, root)
        return root

    return make


@pytest.fixture(autouse=True)
def _rank_zero_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a Trainer for a simulated rank > 0 (tests/test_slurm.py) sets Lightning's
    process-wide rank, which silences rank-zero logs and warnings in every later test: restore
    it after each test."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero
    from lightning.pytorch.utilities.rank_zero import rank_zero_only as pl_rank_zero
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero

    for obj in {id(o): o for o in (fabric_rank_zero, pl_rank_zero, utils_rank_zero)}.values():
        monkeypatch.setattr(obj, "rank", getattr(obj, "rank", 0), raising=False)


@pytest.fixture(autouse=True)
def _each_test_alone() -> Iterator[None]:
    """Every test starts from torch's seed 0, and leaves the process-group and seed variables
    as it found them (Lightning's spawn sets MASTER_PORT, seed_everything PL_GLOBAL_SEED): a
    later test would reuse a port chosen free long before, and draw seeds that depend on test
    order."""
    torch.manual_seed(0)
    names = ("MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
