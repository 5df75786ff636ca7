"""Reading the official Derm7pt release layout into a :class:`Cases` table.

Layout: ``meta/meta.csv``, ``meta/{train,valid,test}_indexes.csv`` (0-based row positions) and
``images/<dir>/<file>``. Cite: Kawahara et al., IEEE JBHI 23(2):538-546, 2019.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from skinssl.datamodules.cases import (
    SPLITS,
    Cases,
    DataError,
    encode_labels,
    read_csv,
    read_index_file,
)
from skinssl.host import where
from skinssl.labels import HEADS

REQUIRED_COLUMNS = ("clinic", "derm") + tuple(h.column for h in HEADS)


class _CaseInsensitiveResolver:
    """Finds a file whose path differs only in letter case (one Derm7pt row needs this)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, Path] | None = None

    def __call__(self, relative: str) -> Path:
        path = self.root / relative
        if path.is_file():
            return path
        if self._index is None:
            self._index = {
                str(p.relative_to(self.root)).lower(): p
                for p in self.root.rglob("*")
                if p.is_file()
            }
        return self._index.get(relative.lower(), path)


# the official split sizes of the release (the authors' sanity check)
OFFICIAL_SIZES = {"train": 413, "valid": 203, "test": 395}


def read_derm7pt(root: str | Path) -> Cases:
    """All 1011 (or however many) cases of a Derm7pt-layout folder with its official splits."""
    root = Path(root)
    meta = root / "meta" / "meta.csv"
    if not meta.is_file():
        raise DataError(
            f"{meta} not found{where(meta)}: the data root ({root}) must be the Derm7pt release "
            "folder, the one that holds meta/meta.csv, meta/*_indexes.csv and images/"
        )
    table = read_csv(meta, REQUIRED_COLUMNS)
    rows = table.rows
    for i, r in enumerate(rows):
        for column in ("derm", "clinic"):
            if not r[column].strip():
                raise DataError(f"{table.at(i)}: empty {column!r} image path")
    resolve = _CaseInsensitiveResolver(root / "images")
    derm = [resolve(r["derm"]) for r in rows]
    clinic = [resolve(r["clinic"]) for r in rows]
    labels = encode_labels(table, {h.name: h.column for h in HEADS})
    pair_valid = np.array([r["clinic"] != r["derm"] for r in rows], dtype=bool)
    splits = {
        name: read_index_file(root / "meta" / f"{name}_indexes.csv", len(rows)) for name in SPLITS
    }
    lists = str(root / "meta" / f"{{{','.join(SPLITS)}}}_indexes.csv")
    sizes = {name: len(rows) for name, rows in splits.items()}
    if sorted(sizes.values()) == sorted(OFFICIAL_SIZES.values()) and sizes != OFFICIAL_SIZES:
        rank_zero_warn(
            f"{lists}: the splits have {sizes} cases; the official files have {OFFICIAL_SIZES}. "
            "Are two of them swapped? (checkpoints are chosen on valid, and test is reported)"
        )
    return Cases(derm, clinic, labels, pair_valid, splits, source=str(meta), split_source=lists)
