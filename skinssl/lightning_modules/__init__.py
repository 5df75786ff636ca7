"""LightningModules: SM3 pretraining stages and the downstream multi-label classifier; the
SSL baselines are in :mod:`skinssl.lightning_modules.baselines`."""

from skinssl.lightning_modules.classifier import MultiLabelClassifier
from skinssl.lightning_modules.sm3_contrastive import SM3Contrastive
from skinssl.lightning_modules.sm3_pseudo import SM3PseudoLabels

__all__ = ["MultiLabelClassifier", "SM3Contrastive", "SM3PseudoLabels"]
