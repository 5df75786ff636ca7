"""Built-in synthetic Derm7pt-shaped data: real labels and splits, procedurally drawn images.

``generate`` writes a folder in the official release layout (``meta/meta.csv``, the three index
files, ``images/<dir>/<file>.jpg``), so it is read exactly like the real release, with no
download and no dataset image involved. With the default 1011 cases it reproduces the real label
table row for row, the official splits in their file order and the 9 cases whose clinical image
is a stand-in for the dermoscopic one; other sizes sample rows of that table (its joint label
distribution). The images come from :mod:`skinssl.datamodules.painter`.

The real labels come from ``derm7pt_cases.csv`` beside this module (written by
``scripts/make_case_table.py``): metadata only, no images, no paths. Its ``#`` header documents
the encoding.

Output is a pure function of (num_cases, image_size, seed): every file is byte-identical across
runs and worker counts. A stamp file written last marks a folder as complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from skinssl.datamodules.cases import SPLITS
from skinssl.datamodules.derm7pt import OFFICIAL_SIZES
from skinssl.datamodules.painter import paint_pair
from skinssl.host import available_cores
from skinssl.labels import HEADS, seven_point_score

META_COLUMNS = (
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
    "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
    "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic",
    "derm", "case_id", "notes",
)  # fmt: skip
"""The 19 columns of the real ``meta.csv``, in order."""
TABLE_COLUMNS = (META_COLUMNS[1],) + META_COLUMNS[3:15]
"""The meta.csv columns the case table keeps (labels and clinical metadata, no paths)."""
REAL_SPLIT_SIZES = tuple(OFFICIAL_SIZES[s] for s in SPLITS)
NUM_REAL_CASES = sum(REAL_SPLIT_SIZES)
CASE_TABLE = "derm7pt_cases.csv"
STAMP = ".skinssl_synthetic.json"
FORMAT_VERSION = 1
"""Bump when the painter or the layout changes, so stale folders are not reused."""
MISSING_NOTE = "Clinical missing and replaced with derm"
JPEG_QUALITY = 90
BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class CaseTable(NamedTuple):
    """The real Derm7pt cases in meta.csv row order (from the package's case table).

    ``split`` names each row's split; ``run`` says which ascending run of that split's index
    file holds the row (the official files concatenate 2-4 ascending runs), which restores the
    files' exact order. ``values`` maps each of ``TABLE_COLUMNS`` to the raw meta.csv strings.
    ``invalid_pair`` is True where the clinical image is the dermoscopic one reused.
    """

    split: np.ndarray
    run: np.ndarray
    values: dict[str, np.ndarray]
    invalid_pair: np.ndarray

    def labels(self) -> np.ndarray:
        """[N, 8] class indices in ``HEAD_NAMES`` order."""
        return np.stack(
            [np.array([h.raw[v] for v in self.values[h.column]]) for h in HEADS], 1
        ).astype(np.int64)

    def index_rows(self, split: str) -> np.ndarray:
        """Rows of ``split`` in the order of the official index file."""
        rows = np.flatnonzero(self.split == split)
        return rows[np.lexsort((rows, self.run[rows]))]


def load_case_table() -> CaseTable:
    """Read the package's case table; its ``# vocab`` lines give each column's strings."""
    text = resources.files(__package__).joinpath(CASE_TABLE).read_text(encoding="utf-8")
    vocab: dict[str, list[str]] = {}
    body = []
    for line in text.splitlines():
        if line.startswith("# vocab "):
            column, _, words = line[len("# vocab ") :].partition(": ")
            vocab[column] = words.split("|")
        elif not line.startswith("#"):
            body.append(line)
    if tuple(vocab) != TABLE_COLUMNS:
        raise ValueError(f"{CASE_TABLE}: vocabularies {list(vocab)} != {list(TABLE_COLUMNS)}")
    rows = list(csv.DictReader(io.StringIO("\n".join(body))))
    codes = np.array([[BASE36.index(c) for c in r["codes"]] for r in rows])
    return CaseTable(
        split=np.array([r["split"] for r in rows]),
        run=np.array([int(r["run"]) for r in rows]),
        values={c: np.array(vocab[c])[codes[:, j]] for j, c in enumerate(TABLE_COLUMNS)},
        invalid_pair=np.array([r["invalid_pair"] == "1" for r in rows]),
    )


# --------------------------------------------------------------------------------------------
# Which cases


def _split_sizes(n: int) -> list[int]:
    """Split sizes in the real 413/203/395 proportions, at least one case each."""
    valid, test = (max(1, round(n * s / NUM_REAL_CASES)) for s in REAL_SPLIT_SIZES[1:])
    return [n - valid - test, valid, test]


def _choose_cases(
    table: CaseTable, num_cases: int, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Source rows of the case table and the split rows of the generated data."""
    if num_cases == NUM_REAL_CASES:
        return np.arange(NUM_REAL_CASES), {s: table.index_rows(s) for s in SPLITS}
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    rows = rng.choice(NUM_REAL_CASES, num_cases, replace=num_cases > NUM_REAL_CASES)
    ends = np.cumsum(_split_sizes(num_cases))
    parts = np.split(rng.permutation(num_cases), ends[:-1])
    return rows, {s: np.sort(p) for s, p in zip(SPLITS, parts, strict=True)}


# --------------------------------------------------------------------------------------------
# Images


class _Task(NamedTuple):
    index: int
    labels: np.ndarray
    derm: Path
    clinic: Path | None
    size: int
    seed: int


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def _paint_case(task: _Task) -> None:
    """Paint and write one case; its RNG depends only on (seed, case index)."""
    rng = np.random.default_rng(np.random.SeedSequence(task.seed, spawn_key=(task.index,)))
    derm, clinic = paint_pair(task.labels, rng, task.size)
    _write_jpeg(task.derm, derm)
    if task.clinic is not None:
        _write_jpeg(task.clinic, clinic)


def _paint_all(tasks: list[_Task], workers: int) -> None:
    """Paint every case, in ``workers`` forked processes when more than one."""
    if workers == 1:
        for t in tasks:
            _paint_case(t)
        return
    # Stop OpenCV's worker threads first: a forked child would wait on them forever.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_paint_case, tasks, chunksize=8):
                pass
    finally:
        cv2.setNumThreads(threads)


# --------------------------------------------------------------------------------------------
# Metadata and the folder


def _image_names(num_cases: int) -> list[tuple[str, str]]:
    """(derm, clinic) paths relative to ``images/``, 100 cases per folder like the release."""
    width = max(4, len(str(num_cases)))
    return [
        (
            f"syn{i // 100:03d}/{i + 1:0{width}d}_derm.jpg",
            f"syn{i // 100:03d}/{i + 1:0{width}d}_clinic.jpg",
        )
        for i in range(num_cases)
    ]


def _write_meta(
    meta: Path,
    table: CaseTable,
    rows: np.ndarray,
    paths: list[tuple[str, str]],
    invalid: np.ndarray,
) -> None:
    """meta.csv in the release's format; a stand-in pair names its derm image as clinic too."""
    scores = seven_point_score(table.labels()[rows])
    with (meta / "meta.csv").open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(META_COLUMNS)
        for i, r in enumerate(rows):
            derm, clinic = paths[i]
            note = MISSING_NOTE if invalid[i] else ""
            v = {c: table.values[c][r] for c in TABLE_COLUMNS}
            v |= {"case_num": i + 1, "seven_point_score": scores[i], "derm": derm}
            v |= {"clinic": derm if note else clinic, "case_id": "", "notes": note}
            out.writerow([v[c] for c in META_COLUMNS])


def _write_indexes(meta: Path, splits: dict[str, np.ndarray]) -> None:
    """The release's index files: header ``indexes``, then one 0-based row per line."""
    for name, rows in splits.items():
        lines = ["indexes", *map(str, rows.tolist())]
        (meta / f"{name}_indexes.csv").write_text("\n".join(lines) + "\n")


def _is_complete(root: Path, params: dict[str, object]) -> bool:
    """True if ``root`` already holds exactly this data; ValueError if it holds anything else."""
    stamp = root / STAMP
    if stamp.is_file():
        found = json.loads(stamp.read_text())
        if found == params:
            return True
        raise ValueError(
            f"{root} already holds synthetic data generated with {found}, not the requested "
            f"{params}; choose another folder or delete this one"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(
            f"{root} exists and is not an empty folder, but has no {STAMP} stamp (not synthetic "
            "data, or an interrupted generation); delete it or choose another folder"
        )
    return False


def _write_release(folder: Path, num_cases: int, image_size: int, seed: int, workers: int) -> None:
    """The images, ``meta.csv`` and index files of :func:`generate` into ``folder``."""
    table = load_case_table()
    rows, splits = _choose_cases(table, num_cases, seed)
    labels, invalid = table.labels()[rows], table.invalid_pair[rows]
    paths = _image_names(num_cases)
    images = folder / "images"
    for sub in sorted({d.split("/")[0] for d, _ in paths}):
        (images / sub).mkdir(parents=True, exist_ok=True)
    tasks = [
        _Task(i, labels[i], images / d, None if invalid[i] else images / c, image_size, seed)
        for i, (d, c) in enumerate(paths)
    ]
    _paint_all(tasks, workers)
    meta = folder / "meta"
    meta.mkdir(exist_ok=True)
    _write_meta(meta, table, rows, paths, invalid)
    _write_indexes(meta, splits)


def generate(
    root: str | Path,
    num_cases: int = NUM_REAL_CASES,
    image_size: int = 256,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Write the synthetic dataset into ``root`` (a no-op if it is already there); return root.

    Args:
        root: an empty or missing folder, or one generated earlier with the same arguments.
        num_cases: 1011 gives the real Derm7pt table; other counts sample its rows.
        image_size: image height in pixels (width is 1.5x, like the 768x512 release).
        seed: seed of the images (and of the sampled rows and splits when num_cases != 1011).
        workers: painting processes (default: the cores the process may use); the output does
            not depend on it.
    """
    if num_cases < 3:
        raise ValueError(f"num_cases must be >= 3 (one case per split at least), got {num_cases}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    workers = available_cores() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root).resolve()  # (a link to a folder: that folder)
    params = {
        "generator": "skinssl.datamodules.synthetic",  # (also when run as __main__)
        "version": FORMAT_VERSION,
        "num_cases": num_cases,
        "image_size": image_size,
        "seed": seed,
    }
    if _is_complete(root, params):
        return root
    # made beside root and renamed into place when complete: processes that generate the same
    # data at once (a node's first rank each, on a shared file system) never see it half-made
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_release(work, num_cases, image_size, seed, workers)
        (work / STAMP).write_text(json.dumps(params, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # as a folder made with mkdir (mkdtemp's is private)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        work.rename(root)  # (replaces an empty folder)
    except OSError:  # another process was first
        shutil.rmtree(work)
        if not _is_complete(root, params):
            raise
    return root


def main(argv: list[str] | None = None) -> None:
    """``python -m skinssl.datamodules.synthetic ROOT [--num-cases N --image-size S --seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output folder (empty or missing)")
    parser.add_argument("--num-cases", type=int, default=NUM_REAL_CASES)
    parser.add_argument("--image-size", type=int, default=256, help="image height in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="default: all CPUs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = generate(args.root, args.num_cases, args.image_size, args.seed, args.workers)
    print(f"synthetic Derm7pt data in {root} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
