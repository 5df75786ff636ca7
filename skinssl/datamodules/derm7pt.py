"""Reading the official Derm7pt release layout into a :class:`Cases` table.

Layout: ``meta/meta.csv``, ``meta/{train,valid,test}_indexes.csv`` (0-based row positions) and
``images/<dir>/<file>``. Cite: Kawahara et al., IEEE JBHI 23(2):538-546, 2019.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skinssl.datamodules.cases import (
    SPLITS,
    Cases,
    DataError,
    encode_labels,
    read_csv,
    read_index_file,
)
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


def read_derm7pt(root: str | Path) -> Cases:
    """All 1011 (or however many) cases of a Derm7pt-layout folder with its official splits."""
    root = Path(root)
    meta = root / "meta" / "meta.csv"
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
    return Cases(derm, clinic, labels, pair_valid, splits, source=str(meta), split_source=lists)
