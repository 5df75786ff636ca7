"""LightningModules: the supervised multi-label model (and, later, SSL pretraining)."""

from skinssl.lightning_modules.supervised import MultiLabelClassifier

__all__ = ["MultiLabelClassifier"]
