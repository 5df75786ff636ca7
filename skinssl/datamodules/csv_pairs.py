"""Reading any CSV of (dermoscopic, clinical) image pairs into a :class:`Cases` table.

Columns: a dermoscopic path, a clinical path (empty: no clinical image, the pair is marked
invalid and the dermoscopic image stands in), optional label columns (raw Derm7pt strings or
class names), an optional split column (train/valid/test) and an optional id column (each
case's name, unique). Relative paths are resolved against ``image_root`` (default: the CSV's
folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from skinssl.datamodules.cases import SPLITS, Cases, CsvTable, DataError, encode_labels, read_csv
from skinssl.labels import HEAD_NAMES, HEADS

SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}
SCHEMA = (
    "The heads and their classes are Derm7pt's (skinssl/labels.py): labels of another scheme "
    "need that file changed. Leave a cell empty for an unknown label; label_columns: {} reads no "
    "labels (pretraining and predict need none)"
)


def default_label_columns(header: list[str], path: Path) -> dict[str, str]:
    """Head -> column for the label columns present, by head name (``PN``) or meta.csv name
    (``pigment_network``); both for one head is an error (which one holds its labels?)."""
    found = {}
    for h in HEADS:
        names = [name for name in dict.fromkeys((h.name, h.column)) if name in header]
        cased = [c for c in header
                 if c.strip().lower() in (h.name.lower(), h.column) and c not in names]  # fmt: skip
        if cased and not names:
            rank_zero_warn(
                f"{path}: column(s) {cased} not read as head {h.name}'s labels: label columns "
                f"are named exactly {h.name!r} or {h.column!r}, without spaces (or mapped with "
                "label_columns)"
            )
        if len(names) > 1:
            raise DataError(
                f"{path}: columns {names} both name head {h.name}: keep one, or map every head "
                "to read with label_columns (it replaces the automatic choice), e.g. "
                f"{{DIAG: diagnosis, {h.name}: {names[0]}, ...}}"
            )
        if names:
            found[h.name] = names[0]
    return found


def read_pair_csv(
    path: str | Path,
    image_root: str | Path | None = None,
    derm_column: str = "derm",
    clinic_column: str = "clinic",
    split_column: str | None = "split",
    label_columns: dict[str, str] | None = None,
    id_column: str | None = None,
    splits_unused: bool = False,
) -> Cases:
    """Cases of a paired CSV. With ``split_column`` None every case is in ``train``; so it is
    without the default ``split`` column (with a warning, unless ``splits_unused``: the
    caller reads every case whatever its split); another absent column is an error.
    ``id_column`` names each case (non-empty, unique) in output tables."""
    path = Path(path).expanduser()
    required = (derm_column, clinic_column) + ((id_column,) if id_column else ())
    table = read_csv(path, required, skip_empty_rows=True)
    rows, header = table.rows, table.header
    if label_columns is None:
        label_columns = default_label_columns(header, path)
    for head_name, col in label_columns.items():
        if head_name not in HEAD_NAMES:
            raise DataError(
                f"label_columns: unknown head {head_name!r}; valid: {HEAD_NAMES}. {SCHEMA}"
            )
        if col not in header:
            raise DataError(f"{path}: label column {col!r} (head {head_name}) is not in {header}")
    root = (Path(image_root).expanduser() if image_root is not None else path.parent).absolute()
    derm, clinic, valid, pairs, spelled = [], [], [], [], []
    for i, r in enumerate(rows):
        d = (r[derm_column] or "").strip()
        c = (r[clinic_column] or "").strip()
        if not d:
            raise DataError(f"{table.at(i)}: empty {derm_column!r} path")
        derm.append(root / d)
        clinic.append(root / (c or d))
        pairs.append((os.path.realpath(derm[-1]), os.path.realpath(clinic[-1])))
        spelled.append(f"({d}, {c or d})")
        valid.append(bool(c) and pairs[-1][0] != pairs[-1][1])  # (however they are spelled)
    labels = encode_labels(table, label_columns, hint=f"\n{SCHEMA}")
    ids = _read_ids(table, id_column) if id_column else None
    read = {derm_column, clinic_column, split_column, id_column, *label_columns.values()}
    unused = [c for c in header if c not in read]
    rank_zero_info(
        f"{path}: labels "
        + (", ".join(f"{h} <- {c!r}" for h, c in label_columns.items()) or "none")
        + (f"; columns not read: {unused}" if unused else "")
    )
    if split_column in header:
        splits = _read_splits(table, split_column)
    elif split_column in (None, "split"):
        if split_column == "split" and not splits_unused:
            near = [c for c in header if c.strip().lower() == "split"]
            hint = f"; did you mean split_column: {near[0]!r}?" if near else ""
            rank_zero_warn(
                f"{path}: no 'split' column, so every case is in 'train' (split_column: null "
                f"says so without this warning){hint}"
            )
        splits = {"train": np.arange(len(rows))}
    else:
        raise DataError(
            f"{path}: split column {split_column!r} is not in {header}; name the column of "
            "train/valid/test, or set split_column: null to put every case in 'train'"
        )
    valid = np.array(valid, dtype=bool)
    cases = Cases(derm, clinic, labels, valid, splits, source=str(path), ids=ids)
    _check_listed_once(table, pairs, spelled)  # (after the splits' check, which names both)
    return cases


def _check_listed_once(table: CsvTable, pairs: list[tuple[str, str]], spelled: list[str]) -> None:
    """An error for a case listed twice: the same two images (``pairs``: resolved paths),
    however their paths are spelled (``spelled``: as in the table)."""
    first: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(pairs):
        j = first.setdefault(pair, i)
        if j != i:
            raise DataError(
                f"{table.at(i)}: the pair {spelled[i]} is also that of line {table.lines[j]} "
                f"(row {j}); each case must be listed once"
            )


def _read_ids(table: CsvTable, column: str) -> list[str]:
    ids: list[str] = []
    first: dict[str, int] = {}
    for i, r in enumerate(table.rows):
        name = (r[column] or "").strip()
        if not name:
            raise DataError(f"{table.at(i)}, column {column!r}: empty case id")
        if first.setdefault(name, i) != i:
            raise DataError(
                f"{table.at(i)}, column {column!r}: case id {name!r} is also that of row "
                f"{first[name]}; ids must be unique"
            )
        ids.append(name)
    return ids


def _read_splits(table: CsvTable, column: str) -> dict[str, np.ndarray]:
    members: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, r in enumerate(table.rows):
        value = (r[column] or "").strip().lower()
        if value not in SPLIT_ALIASES:
            raise DataError(
                f"{table.at(i)}, column {column!r}: unknown split {r[column]!r}; valid values: "
                f"{sorted(SPLIT_ALIASES)}"
            )
        members[SPLIT_ALIASES[value]].append(i)
    return {s: np.asarray(m, dtype=np.int64) for s, m in members.items()}
