"""The concrete data modules: Derm7pt release, a paired CSV, and built-in synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skinssl.datamodules.base import PairedDataModule
from skinssl.datamodules.cases import Cases
from skinssl.datamodules.csv_pairs import read_pair_csv
from skinssl.datamodules.derm7pt import read_derm7pt


class Derm7ptDataModule(PairedDataModule):
    """The official Derm7pt release (``meta/``, ``images/``) with its 413/203/395 split.

    Args:
        root: the release folder (the one holding ``meta/`` and ``images/``).
        **kwargs: see :class:`PairedDataModule`.
    """

    def __init__(self, root: str = "data/derm7pt", **kwargs: Any) -> None:
        self.root = root
        super().__init__(**kwargs)

    def default_border_crop(self) -> int:
        return 25  # the authors' crop of Derm7pt's black frame (768 x 512 images)

    def load_cases(self, stage: str | None = None) -> Cases:
        return read_derm7pt(self.root)


class PairedCSVDataModule(PairedDataModule):
    """Any dataset given as a CSV of (dermoscopic, clinical) image paths.

    Args:
        csv_path: the CSV file.
        image_root: folder relative paths are resolved against (default: the CSV's folder).
        derm_column: column of dermoscopic image paths.
        clinic_column: column of clinical image paths (empty cell: no clinical image).
        split_column: column with train/valid/test; null: every case is in ``train`` (so is
            it without a ``split`` column, with a warning; another absent column is an error).
        label_columns: head name -> column; default: columns named like a head (``PN``) or like
            Derm7pt's meta.csv (``pigment_network``). Raw Derm7pt strings or class names.
            A mapping replaces that automatic choice: list every head to read.
        id_column: column of case names (non-empty, unique), written as ``id`` next to
            ``case`` (the row) in the predictions CSV.
        **kwargs: see :class:`PairedDataModule`.
    """

    def __init__(
        self,
        csv_path: str,
        image_root: str | None = None,
        derm_column: str = "derm",
        clinic_column: str = "clinic",
        split_column: str | None = "split",
        label_columns: dict[str, str] | None = None,
        id_column: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.csv_path = csv_path
        self.image_root = image_root
        self.derm_column = derm_column
        self.clinic_column = clinic_column
        self.split_column = split_column
        self.label_columns = label_columns
        self.id_column = id_column

    def load_cases(self, stage: str | None = None) -> Cases:
        return read_pair_csv(
            self.csv_path,
            self.image_root,
            derm_column=self.derm_column,
            clinic_column=self.clinic_column,
            split_column=self.split_column,
            label_columns=self.label_columns,
            id_column=self.id_column,
            splits_unused=stage == "predict" and self.predict_split == "all",
        )


class SyntheticDerm7ptDataModule(Derm7ptDataModule):
    """Built-in Derm7pt-shaped data that needs no download (the quick start's default).

    Generates once, deterministically from ``synthetic_seed``, a folder in the release layout with
    the real labels and splits of the 1011 Derm7pt cases and procedurally drawn images, then reads
    it exactly as the real release.

    Args:
        root: folder to generate into (reused when it already holds the same data).
        num_cases: number of cases (1011 = the real label table; otherwise sampled from it).
        synthetic_size: height in pixels of the generated images (width is 1.5x).
        synthetic_seed: seed of the generated images.
        **kwargs: see :class:`PairedDataModule`.
    """

    def __init__(
        self,
        root: str = "data/synthetic",
        num_cases: int = 1011,
        synthetic_size: int = 256,
        synthetic_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.num_cases = num_cases
        self.synthetic_size = synthetic_size
        self.synthetic_seed = synthetic_seed
        super().__init__(root=root, **kwargs)

    def default_border_crop(self) -> int:
        return max(1, round(25 * self.synthetic_size / 512))  # the frame scales with the size

    def prepare_data(self) -> None:
        from skinssl.datamodules.synthetic import generate

        generate(Path(self.root), self.num_cases, self.synthetic_size, self.synthetic_seed)

    def load_cases(self, stage: str | None = None) -> Cases:
        self.prepare_data()
        return super().load_cases(stage)
