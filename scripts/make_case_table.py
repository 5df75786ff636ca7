"""Regenerate ``skinssl/datamodules/derm7pt_cases.csv`` from a Derm7pt ``meta`` folder.

The table keeps the labels, clinical metadata, splits and stand-in-clinic flags of the real
cases (no images, no paths) for the synthetic data generator. Usage::

    python scripts/make_case_table.py PATH/TO/derm7pt/meta [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from skinssl.datamodules.cases import SPLITS
from skinssl.datamodules.synthetic import BASE36, CASE_TABLE, TABLE_COLUMNS
from skinssl.labels import HEADS

OUT = Path(__file__).resolve().parents[1] / "skinssl" / "datamodules" / CASE_TABLE

HEADER = """\
# Derm7pt case table for skinssl's synthetic data (skinssl/datamodules/synthetic.py).
# Derived from the official release's meta/meta.csv and {train,valid,test}_indexes.csv by
# scripts/make_case_table.py; metadata only (no images, no paths). Kawahara et al., IEEE JBHI
# 23(2):538-546, 2019.
# One line per meta.csv row, in row order:
#   split: the index file that lists the row; run: which ascending run of that file holds it
#   (each file is 2-4 ascending runs concatenated), which restores the file's exact order;
#   codes: one base-36 digit (0-9a-z) per column below, the position of the row's raw string in
#   that column's vocabulary (labels: sorted(head.raw) of skinssl.labels; others: sorted values);
#   invalid_pair: 1 where clinic == derm (clinical image missing, the dermoscopic one reused).
"""


def _runs(rows: list[int]) -> list[int]:
    """Run number of each entry of an index file (a new run starts where the order drops)."""
    run, out = 0, []
    for i, r in enumerate(rows):
        run += i > 0 and r < rows[i - 1]
        out.append(run)
    return out


def build(meta_dir: Path) -> str:
    """The case table's text for the release metadata in ``meta_dir``."""
    with (meta_dir / "meta.csv").open(newline="", encoding="utf-8") as f:
        meta = list(csv.DictReader(f))
    where: dict[int, tuple[str, int]] = {}
    for split in SPLITS:
        lines = (meta_dir / f"{split}_indexes.csv").read_text().split()
        rows = [int(x) for x in lines[1:]]
        where.update({r: (split, run) for r, run in zip(rows, _runs(rows), strict=True)})
    if sorted(where) != list(range(len(meta))):
        raise ValueError(f"{meta_dir}: the index files do not partition the {len(meta)} rows")
    heads = {h.column: h for h in HEADS}
    vocab = {
        c: sorted(heads[c].raw) if c in heads else sorted({r[c] for r in meta})
        for c in TABLE_COLUMNS
    }
    out = [HEADER] + [f"# vocab {c}: {'|'.join(v)}\n" for c, v in vocab.items()]
    out.append("split,run,codes,invalid_pair\n")
    for i, r in enumerate(meta):
        split, run = where[i]
        codes = "".join(BASE36[vocab[c].index(r[c])] for c in TABLE_COLUMNS)
        out.append(f"{split},{run},{codes},{int(r['clinic'] == r['derm'])}\n")
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meta_dir", type=Path, help="Derm7pt meta folder (meta.csv + index files)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.write_text(build(args.meta_dir), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
