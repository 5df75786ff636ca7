"""The table of paired cases every data source is read into, and its checks."""

from __future__ import annotations

import csv
import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from skinssl.host import where
from skinssl.labels import HEADS, UNKNOWN

SPLITS = ("train", "valid", "test")
NEWLINE = b"\n"


class DataError(ValueError):
    """Bad input data: the message names the file, row, column or value and what is valid."""


@dataclass
class Cases:
    """Paired two-modality cases, one row per lesion.

    ``labels`` is [N, 8] int64 in ``HEAD_NAMES`` order, -1 where unknown. ``pair_valid`` is
    False where the clinical image is a stand-in (the dermoscopic image reused). ``splits`` maps
    a split name to row positions.
    """

    derm: list[Path]
    clinic: list[Path]
    labels: np.ndarray
    pair_valid: np.ndarray
    splits: dict[str, np.ndarray]
    source: str
    """What the cases were read from, for error messages."""
    split_source: str = ""
    """What the splits were read from, when not ``source`` (index files), for error messages."""
    ids: list[str] | None = None
    """Each case's own name (e.g. a CSV's id column), for output tables; None: the row."""

    def __post_init__(self) -> None:
        n = len(self.derm)
        ids = n if self.ids is None else len(self.ids)
        sizes = (len(self.clinic), len(self.pair_valid), ids, self.labels.shape)
        if sizes != (n, n, n, (n, len(HEADS))):
            raise ValueError(f"{self.source}: inconsistent case table sizes")
        if n == 0:
            raise DataError(f"{self.source}: no cases")
        self._check_splits()

    def __len__(self) -> int:
        return len(self.derm)

    def _check_splits(self) -> None:
        seen: dict[int, str] = {}
        for name, rows in self.splits.items():
            for r in rows.tolist():
                if r in seen:
                    raise DataError(
                        f"{self.split_source or self.source}: row {r} is in both the "
                        f"{seen[r]!r} and the {name!r} split; splits must not overlap"
                    )
                seen[r] = name
        # the same image in two splits (test cases seen in training), however its path is spelled
        owner: dict[str, int] = {}
        for r in sorted(seen):
            for path in dict.fromkeys((self.derm[r], self.clinic[r])):
                first = owner.setdefault(os.path.realpath(path), r)
                if seen[first] != seen[r]:
                    raise DataError(
                        f"{self.source}: image {path} is in row {first} ({seen[first]!r} split) "
                        f"and row {r} ({seen[r]!r} split); an image must not be in two splits"
                    )
        unused = len(self) - len(seen)
        if unused:
            rank_zero_warn(
                f"{self.source}: {unused} of {len(self)} cases are in no split (not used)"
            )

    @functools.cached_property
    def image_uses(self) -> dict[Path, str]:
        """Each image file and the cases that use it, for messages (``row 3 clinical``);
        made once (the missing-file check and the image cache's errors both use it)."""
        uses: dict[Path, list[str]] = {}
        for r, (derm, clinic) in enumerate(zip(self.derm, self.clinic, strict=True)):
            uses.setdefault(derm, []).append(f"row {r} dermoscopic")
            if clinic != derm:
                uses.setdefault(clinic, []).append(f"row {r} clinical")
        return {path: ", ".join(rows) for path, rows in uses.items()}

    def check_images_exist(self) -> None:
        """One error listing every missing image file (not just the first), with its rows."""
        missing = [f"{path} ({rows})" for path, rows in self.image_uses.items()
                   if not path.is_file()]  # fmt: skip
        if missing:
            raise DataError(
                f"{self.source}: {len(missing)} image file(s) not found:{listing(missing, 50)}\n"
                "Check the image root folder and the paths in the table."
            )


def read_index_file(path: Path, num_rows: int) -> np.ndarray:
    """Row positions from a Derm7pt index file: header ``indexes``, one 0-based row per line."""
    if not path.is_file():
        raise DataError(f"index file not found: {path}")
    lines = path.read_text(encoding="utf-8-sig").splitlines()  # with or without a BOM
    if not lines or lines[0].strip() != "indexes":
        raise DataError(f"{path}: first line must be the header 'indexes', got {lines[:1]}")
    rows: list[int] = []
    seen: set[int] = set()
    for line_no, text in enumerate(lines[1:], start=2):
        text = text.strip()
        if not text:
            continue
        try:
            r = int(text)
        except ValueError:
            msg = f"{path}, line {line_no}: {text!r} is not an integer row index"
            raise DataError(msg) from None
        if not 0 <= r < num_rows:
            hint = " (rows count from 0: is the file 1-based?)" if r == num_rows else ""
            raise DataError(
                f"{path}, line {line_no}: row {r} is out of range; valid rows are "
                f"0..{num_rows - 1}{hint}"
            )
        if r in seen:
            raise DataError(f"{path}, line {line_no}: row {r} is listed twice")
        seen.add(r)
        rows.append(r)
    return np.asarray(rows, dtype=np.int64)


@dataclass
class CsvTable:
    """A CSV file's rows as dicts by column, and the file line each row is on."""

    path: Path
    header: list[str]
    rows: list[dict[str, str]]
    lines: list[int]

    def at(self, i: int) -> str:
        """Where row ``i`` is, for messages: ``<path>, line <n> (row <i>)``."""
        return f"{self.path}, line {self.lines[i]} (row {i})"


def encode_labels(table: CsvTable, columns: dict[str, str], hint: str = "") -> np.ndarray:
    """[N, 8] class indices from a table's rows; ``columns`` maps head name -> column name.

    Heads without a column, and empty cells, are unknown (-1). Unrecognised strings are one
    error naming each one's file line, 0-based row, column and value, and the valid values
    (then ``hint``).
    """
    labels = np.full((len(table.rows), len(HEADS)), UNKNOWN, dtype=np.int64)
    unknown: list[tuple[int, str]] = []
    valid: dict[str, str] = {}
    for j, h in enumerate(HEADS):
        col = columns.get(h.name)
        if col is None:
            continue
        for i, row in enumerate(table.rows):
            value = (row.get(col) or "").strip()
            if not value:
                continue
            try:
                labels[i, j] = h.encode(value)
            except KeyError:
                unknown.append((i, f"line {table.lines[i]} (row {i}), column {col!r}: {value!r}"))
                valid[h.name] = ", ".join(map(repr, h.valid_values()))
    if unknown:
        in_order = [text for _, text in sorted(unknown, key=lambda u: u[0])]
        raise DataError(
            f"{table.path}: {len(unknown)} unknown label(s):{listing(in_order, 20)}\nvalid values: "
            + "; ".join(f"head {h} (column {columns[h]!r}): {v}" for h, v in valid.items())
            + hint
        )
    return labels


def listing(items: list[str], limit: int) -> str:
    """``items`` one per indented line, the first ``limit`` of them, then how many more."""
    more = [f"... and {len(items) - limit} more"] if len(items) > limit else []
    return "".join(f"\n  {item}" for item in items[:limit] + more)


def read_csv(path: Path, required: tuple[str, ...], skip_empty_rows: bool = False) -> CsvTable:
    """A CSV file's table; a clear error for a missing file, text that is not UTF-8, a missing
    required column, a column name given twice, and a row with more or fewer fields than the
    header. Blank lines are skipped, and with ``skip_empty_rows`` rows whose every field is
    blank (as spreadsheets leave; not in Derm7pt's meta.csv, whose index files count every
    row); the lines of the rows after them stay the file's."""
    if not path.is_file():
        raise DataError(f"file not found: {path}{where(path)}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # with or without a BOM
    except UnicodeDecodeError as error:
        line, byte = data[: error.start].count(NEWLINE) + 1, data[error.start :][:1]
        raise DataError(
            f"{path}, line {line}: not UTF-8 text (byte {byte!r}); save the table as 'CSV "
            "UTF-8' (in Excel: Save As > CSV UTF-8)"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        raise DataError(
            f"{path}: the header {header[0]!r} is one column: fields must be separated by "
            "commas (this file seems to use semicolons or tabs)"
        )
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"{path}: column(s) {twice} appear more than once in the header "
                        f"{header}; give each column its own name")  # fmt: skip
    missing = [c for c in required if c not in header]
    if missing:
        spaced = [c for c in header if c != c.strip() and c.strip() in missing]
        cased = [c for c in header if c not in spaced and c.strip().lower() in
                 {m.lower() for m in missing}]  # fmt: skip
        hint = f"; {spaced} have spaces around the name" if spaced else ""
        hint += f"; {cased} differ in upper/lower case (names are exact)" if cased else ""
        raise DataError(
            f"{path}: missing required column(s) {missing}; the header has {header}{hint}"
        )
    rows, lines = [], []
    for row in reader:  # DictReader keys extra fields None and fills missing ones with None
        extra, given = row.pop(None, []), [v for v in row.values() if v is not None]
        if skip_empty_rows and not any(v.strip() for v in given + extra):
            continue
        if extra or len(given) < len(header):
            raise DataError(
                f"{path}, line {reader.line_num}: {len(given) + len(extra)} fields, but the "
                f"header has {len(header)} ({','.join(header)})"
            )
        rows.append(row)
        lines.append(reader.line_num)
    return CsvTable(path, header, rows, lines)
