"""The synthetic Derm7pt-shaped data: determinism, layout, the real label table, the painter."""

from __future__ import annotations

import csv
import itertools
import os
import runpy
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from skinssl.datamodules import synthetic
from skinssl.datamodules.cases import SPLITS
from skinssl.datamodules.painter import image_shape, paint_pair
from skinssl.datamodules.synthetic import META_COLUMNS, MISSING_NOTE, STAMP, generate
from skinssl.labels import HEADS, seven_point_score

REPO = Path(__file__).resolve().parents[1]
REAL_META = REPO.parent / "shared" / "derm7pt" / "meta"
needs_real_meta = pytest.mark.skipif(
    not (REAL_META / "meta.csv").is_file(), reason=f"real Derm7pt metadata not found at {REAL_META}"
)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _index_file(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert lines[0] == "indexes"
    return [int(x) for x in lines[1:]]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("small") / "data", 30, 64, seed=0, workers=2)


def test_same_seed_gives_identical_files_for_any_worker_count(small: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", 30, 64, seed=0, workers=1)
    assert _files(small) == _files(again)
    other = generate(tmp_path / "other", 30, 64, seed=1, workers=2)
    derm = "images/syn000/0001_derm.jpg"
    assert _files(small)[derm] != _files(other)[derm]


def test_layout(small: Path) -> None:
    with (small / "meta" / "meta.csv").open() as f:
        assert next(csv.reader(f)) == list(META_COLUMNS)
    rows = _rows(small / "meta" / "meta.csv")
    assert [int(r["case_num"]) for r in rows] == list(range(1, 31))
    splits = {s: _index_file(small / "meta" / f"{s}_indexes.csv") for s in SPLITS}
    assert sorted(itertools.chain(*splits.values())) == list(range(30))
    assert [len(v) for v in splits.values()] == [12, 6, 12]
    labels = np.array([[h.encode(r[h.column]) for h in HEADS] for r in rows])
    assert [int(r["seven_point_score"]) for r in rows] == seven_point_score(labels).tolist()
    for r in rows:
        assert r["notes"] == (MISSING_NOTE if r["clinic"] == r["derm"] else "")
        for column in ("derm", "clinic"):
            img = cv2.imread(str(small / "images" / r[column]))
            assert img is not None and img.shape == (*image_shape(64), 3)


def test_small_counts_and_sampling_with_replacement() -> None:
    table = synthetic.load_case_table()
    for n, replace in ((3, False), (1500, True)):
        rows, splits = synthetic._choose_cases(table, n, seed=0)
        assert len(rows) == n and (len(set(rows.tolist())) < n) == replace
        assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(n))
        assert all(len(v) >= 1 for v in splits.values())


@needs_real_meta
def test_case_table_is_what_the_script_makes_from_the_real_metadata() -> None:
    build = runpy.run_path(str(REPO / "scripts" / "make_case_table.py"))["build"]
    package = REPO / "skinssl" / "datamodules" / synthetic.CASE_TABLE
    assert build(REAL_META) == package.read_text()
    assert package.stat().st_size < 30_000


@needs_real_meta
def test_1011_cases_reproduce_the_real_labels_splits_and_stand_in_pairs(tmp_path: Path) -> None:
    root = generate(tmp_path / "full", image_size=32, workers=2)
    rows, real = _rows(root / "meta" / "meta.csv"), _rows(REAL_META / "meta.csv")
    for column in META_COLUMNS[:15]:
        assert [r[column] for r in rows] == [r[column] for r in real], column
    for split in SPLITS:
        name = f"{split}_indexes.csv"
        assert (root / "meta" / name).read_bytes() == (REAL_META / name).read_bytes()
    stand_in = [i for i, r in enumerate(rows) if r["clinic"] == r["derm"]]
    assert len(stand_in) == 9
    assert stand_in == [i for i, r in enumerate(real) if r["clinic"] == r["derm"]]


@pytest.mark.parametrize("head", range(len(HEADS)), ids=[h.name for h in HEADS])
def test_every_class_of_every_head_changes_the_dermoscopic_image(head: int) -> None:
    """Same seed, one label changed: a visible part of the lesion is drawn differently."""
    h, w = image_shape(128)
    for a, b in itertools.combinations(range(HEADS[head].num_classes), 2):
        for seed in range(3):
            base = (
                np.array([1, 0, 0, 0, 0, 0, 0, 0]) if head else np.array([0, 1, 0, 1, 1, 1, 1, 0])
            )
            la, lb = base.copy(), base.copy()
            la[head], lb[head] = a, b
            da, _ = paint_pair(la, np.random.default_rng(seed), 128)
            db, _ = paint_pair(lb, np.random.default_rng(seed), 128)
            changed = np.abs(da.astype(int) - db).max(-1) > 10
            assert changed.mean() > 0.002, (HEADS[head].name, a, b, seed)
            centre = changed[h // 8 : -h // 8, w // 8 : -w // 8]
            assert centre.sum() > 0.8 * changed.sum(), "the change is in the lesion area"


def test_painter_is_deterministic_and_shaped() -> None:
    labels = np.array([2, 2, 1, 2, 2, 2, 2, 1])
    d1, c1 = paint_pair(labels, np.random.default_rng(5), 96)
    d2, c2 = paint_pair(labels, np.random.default_rng(5), 96)
    d3, _ = paint_pair(labels, np.random.default_rng(6), 96)
    assert d1.shape == c1.shape == (96, 144, 3) and d1.dtype == np.uint8
    assert np.array_equal(d1, d2) and np.array_equal(c1, c2) and not np.array_equal(d1, d3)
    with pytest.raises(ValueError, match="8 class indices"):
        paint_pair(labels[:7], np.random.default_rng(0), 96)


def test_stamp_makes_a_second_call_a_no_op_and_guards_the_folder(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (small / STAMP).is_file()
    monkeypatch.setattr(synthetic, "_paint_all", lambda *a: pytest.fail("painted again"))
    assert generate(small, 30, 64, seed=0) == small
    with pytest.raises(ValueError, match=f"{small}.*already holds synthetic data"):
        generate(small, 30, 64, seed=1)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="no .skinssl_synthetic.json stamp"):
        generate(tmp_path / "stuff", 30, 64)


def test_generating_at_once_from_two_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process completing the same data while this one paints (the first rank of
    each node, on a shared file system): both end with the complete data, nothing left over."""
    root, paint = tmp_path / "d", synthetic._paint_all

    def meanwhile(tasks: list, workers: int) -> None:
        monkeypatch.setattr(synthetic, "_paint_all", paint)
        assert generate(root, 6, 32, workers=1) == root  # the other process, first
        paint(tasks, workers)

    monkeypatch.setattr(synthetic, "_paint_all", meanwhile)
    assert generate(root, 6, 32, workers=1) == root
    assert (root / STAMP).is_file() and len(_rows(root / "meta" / "meta.csv")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_generation_through_a_link_as_mkdir_would_and_nothing_left_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root that links to an empty folder gets the data in that folder, readable as a folder
    made with mkdir (others may share it); an interrupted generation leaves nothing behind."""
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    umask = os.umask(0o022)
    try:
        assert generate(link, 6, 32, workers=1) == target
    finally:
        os.umask(umask)
    assert (target / STAMP).is_file() and target.stat().st_mode & 0o777 == 0o755

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_paint_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "other", 6, 32, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_cases": 2}, "num_cases must be >= 3"), ({"image_size": 16}, "image_size must be >= 32"),
     ({"seed": -1}, "seed must be >= 0"), ({"workers": 0}, "workers must be >= 1")],
)  # fmt: skip
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_command_line(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    args = [str(root), "--num-cases", "3", "--image-size", "32", "--seed", "2", "--workers", "1"]
    done = subprocess.run([sys.executable, "-m", "skinssl.datamodules.synthetic", *args],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "synthetic Derm7pt data in" in done.stdout
    assert len(_rows(root / "meta" / "meta.csv")) == 3
    assert generate(root, 3, 32, seed=2) == root  # the folder is the data module's too


def test_pool_does_not_hang_after_opencv_used_its_threads(tmp_path: Path) -> None:
    """Forking after OpenCV started its thread pool deadlocks the children unless stopped first."""
    code = (
        "import cv2, numpy as np, sys\n"
        "from skinssl.datamodules.synthetic import generate\n"
        "cv2.setNumThreads(2)\n"
        "cv2.GaussianBlur(np.zeros((2000, 2000), np.float32), (0, 0), 5)\n"
        "generate(sys.argv[1], 6, 32, workers=2)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], check=True, timeout=120)
    assert (tmp_path / "d" / STAMP).is_file()
