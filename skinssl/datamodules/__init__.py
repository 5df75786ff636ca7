"""Paired two-modality data: Derm7pt release, any CSV of pairs, built-in synthetic data."""

from skinssl.datamodules.base import PairedDataModule
from skinssl.datamodules.cases import Cases, DataError
from skinssl.datamodules.modules import (
    Derm7ptDataModule,
    PairedCSVDataModule,
    SyntheticDerm7ptDataModule,
)
from skinssl.datamodules.views import Views

__all__ = [
    "Cases",
    "DataError",
    "Derm7ptDataModule",
    "PairedCSVDataModule",
    "PairedDataModule",
    "SyntheticDerm7ptDataModule",
    "Views",
]
