"""The Derm7pt release reader on the real metadata (placeholder images) and its bad-input errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from skinssl.datamodules import DataError, Derm7ptDataModule
from skinssl.datamodules.derm7pt import read_derm7pt
from skinssl.labels import HEAD_NAMES, seven_point_score


def test_counts_splits_and_scores(derm7pt_release: Path) -> None:
    cases = read_derm7pt(derm7pt_release)
    assert len(cases) == 1011
    assert {k: len(v) for k, v in cases.splits.items()} == {"train": 413, "valid": 203, "test": 395}

    def counts(head: str, split: str | None = None) -> list[int]:
        rows = cases.splits[split] if split else slice(None)
        return np.bincount(cases.labels[rows, HEAD_NAMES.index(head)]).tolist()

    assert counts("DIAG") == [42, 575, 252, 97, 45]
    assert counts("DIAG", "test") == [16, 219, 101, 40, 19]
    assert counts("BWV", "test") == [320, 75]
    # the other test-split counts derived from the authors' released CSVs
    assert counts("PN", "test") == [156, 146, 93]
    assert counts("DaG", "test") == [100, 118, 177]
    assert (cases.labels >= 0).all()
    with (derm7pt_release / "meta" / "meta.csv").open() as f:
        expected = np.array([int(r["seven_point_score"]) for r in csv.DictReader(f)])
    np.testing.assert_array_equal(seven_point_score(cases.labels), expected)


def test_case_mismatch_and_invalid_pairs(derm7pt_release: Path) -> None:
    cases = read_derm7pt(derm7pt_release)
    assert cases.derm[815].is_file()
    assert cases.derm[815].name == "Fcl068.jpg" and cases.derm[815].parent.name == "FCL"
    cases.check_images_exist()
    assert int((~cases.pair_valid).sum()) == 9
    invalid = np.flatnonzero(~cases.pair_valid)
    assert all(cases.derm[i] == cases.clinic[i] for i in invalid)


def _rewrite(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_missing_images_listed_all(copy_release) -> None:
    root = copy_release()
    gone = ["images/NEL/Nel026.jpg", "images/NEL/NEL027.JPG", "images/NEL/Nel028.jpg"]
    for g in gone:
        (root / g).unlink()
    dm = Derm7ptDataModule(root=str(root), num_workers=0, image_size=32, cache_size=32)
    with pytest.raises(DataError, match="3 image file") as err:
        dm.setup("fit")
    for g in gone:
        assert g.split("/", 1)[1] in str(err.value)


def test_truncated_jpeg_names_file(copy_release) -> None:
    root = copy_release()
    bad = root / "images/NEL/Nel026.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    dm = Derm7ptDataModule(root=str(root), num_workers=0, image_size=32, cache_size=32)
    with pytest.raises(DataError, match="Nel026.jpg.*truncated"):
        dm.setup("fit")


def test_not_an_image_names_file(copy_release) -> None:
    root = copy_release()
    (root / "images/NEL/Nel026.jpg").write_text("not a jpeg")
    dm = Derm7ptDataModule(root=str(root), num_workers=0, image_size=32, cache_size=32)
    named = r"cannot decode image .*Nel026.jpg: .* \(row 0 dermoscopic\)"  # its use, by row
    with pytest.raises(DataError, match=named):
        dm.setup("fit")
    bad = root / "images/NEL/Nel028.jpg"  # a second one: both named in one error
    bad.write_bytes(bad.read_bytes()[:200])
    dm = Derm7ptDataModule(root=str(root), num_workers=0, image_size=32, cache_size=32)
    with pytest.raises(DataError, match=r"2 images cannot be read:\n .*Nel026.jpg.*\n .*Nel028"):
        dm.setup("fit")


def test_unknown_label_names_row_column_value(copy_release) -> None:
    root = copy_release()
    _rewrite(
        root / "meta/meta.csv",
        lambda lines: [lines[0], lines[1].replace(",arborizing,", ",spiral,"), *lines[2:]],
    )
    with pytest.raises(DataError) as err:
        read_derm7pt(root)
    msg = str(err.value)
    assert "line 2 (row 0)" in msg and "'vascular_structures'" in msg and "'spiral'" in msg
    assert "'arborizing'" in msg and "'IR'" in msg


def test_cases_in_no_split_are_reported(copy_release) -> None:
    root = copy_release()
    _rewrite(root / "meta/train_indexes.csv", lambda lines: lines[:-10])
    with pytest.warns(UserWarning, match="meta.csv: 10 of 1011 cases are in no split"):
        read_derm7pt(root)


def test_empty_image_path_names_line_and_column(copy_release) -> None:
    root = copy_release()
    _rewrite(
        root / "meta/meta.csv",
        lambda lines: [*lines[:2], lines[2].replace(",NEL/Nel028.jpg,", ",,"), *lines[3:]],
    )
    with pytest.raises(DataError, match=r"meta.csv, line 3 \(row 1\): empty 'derm' image path"):
        read_derm7pt(root)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda lines: [*lines, "5000"], "row 5000 is out of range; valid rows are 0..1010$"),
        (lambda lines: [*lines, "1011"], r"0..1010 \(rows count from 0: is the file 1-based\?"),
        (lambda lines: [*lines, lines[1]], "is listed twice"),
        (lambda lines: [*lines, "abc"], "'abc' is not an integer"),
        (lambda lines: ["index", *lines[1:]], "header 'indexes'"),
    ],
)
def test_bad_index_file(copy_release, edit, pattern: str) -> None:
    root = copy_release()
    _rewrite(root / "meta/train_indexes.csv", edit)
    with pytest.raises(DataError, match=pattern):
        read_derm7pt(root)


def test_overlapping_splits(copy_release) -> None:
    root = copy_release()
    first_test_row = (root / "meta/test_indexes.csv").read_text().splitlines()[1]
    _rewrite(root / "meta/train_indexes.csv", lambda lines: [*lines, first_test_row])
    lists = r"meta/\{train,valid,test\}_indexes.csv"  # the files to mend, not meta.csv
    with pytest.raises(DataError, match=f"{lists}: row {first_test_row} is in both the 'train'"):
        read_derm7pt(root)


def test_swapped_split_files_warn(copy_release) -> None:
    root = copy_release()
    valid, test = root / "meta/valid_indexes.csv", root / "meta/test_indexes.csv"
    text = valid.read_text()
    valid.write_text(test.read_text())
    test.write_text(text)
    with pytest.warns(UserWarning, match=r"'valid': 395, 'test': 203\}.*Are two of them swapped"):
        read_derm7pt(root)


def test_a_root_without_meta_csv_says_what_the_root_is(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="must be the Derm7pt release folder, the one that holds "):
        read_derm7pt(tmp_path)


def test_index_file_saved_with_a_byte_order_mark(copy_release) -> None:
    """Spreadsheet programs save UTF-8 with a BOM; it is not part of the header."""
    root = copy_release()
    path = root / "meta/train_indexes.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    cases = read_derm7pt(root)
    assert len(cases.splits["train"]) == 413


def test_missing_column(copy_release) -> None:
    root = copy_release()
    _rewrite(
        root / "meta/meta.csv",
        lambda lines: [
            ln.replace("streaks", "streak", 1) if i == 0 else ln for i, ln in enumerate(lines)
        ],
    )
    with pytest.raises(DataError, match=r"missing required column\(s\) \['streaks'\]"):
        read_derm7pt(root)


def test_label_fraction_outside_range() -> None:
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
            Derm7ptDataModule(root="unused", label_fraction=bad)


def test_label_fraction_stratified_and_seeded(derm7pt_release: Path) -> None:
    def make(seed: int, keep: bool) -> Derm7ptDataModule:
        dm = Derm7ptDataModule(
            root=str(derm7pt_release),
            label_fraction=0.1,
            split_seed=seed,
            keep_unlabelled=keep,
            cache="none",
            num_workers=0,
            image_size=32,
            cache_size=32,
        )
        dm.setup("fit")
        return dm

    dm = make(0, keep=False)
    rows, labels = dm.train_labels()
    diag = labels[rows, HEAD_NAMES.index("DIAG")]
    assert len(rows) == pytest.approx(41, abs=3)
    # stratified: 10 % of each diagnosis, at least one case of each
    train_diag = dm.cases.labels[dm.split_rows("train"), HEAD_NAMES.index("DIAG")]
    want = [max(1, round(0.1 * n)) for n in np.bincount(train_diag, minlength=5)]
    assert np.bincount(diag, minlength=5).tolist() == want
    assert (diag >= 0).all()
    rows_again, _ = make(0, keep=False).train_labels()
    np.testing.assert_array_equal(rows, rows_again)
    assert not np.array_equal(rows, make(1, keep=False).train_labels()[0])
    all_rows, kept_labels = make(0, keep=True).train_labels()
    assert len(all_rows) == 413
    assert int((kept_labels[all_rows, 0] >= 0).sum()) == len(rows)
