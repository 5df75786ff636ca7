"""Baseline self-supervised pretraining methods on the trunks, data and downstream of SM3.

Each is single-modality (``modality: derm|clinic``) or multi-modal (``both``, with the
method's cross-modal term where it has one); every checkpoint holds its trunks as ``encoder.*``,
so ``MultiLabelClassifier(init_from=...)`` fine-tunes any of them.
"""

from skinssl.lightning_modules.baselines.barlow_twins import BarlowTwins
from skinssl.lightning_modules.baselines.base import Pretraining
from skinssl.lightning_modules.baselines.byol import BYOL
from skinssl.lightning_modules.baselines.deepcluster import DeepClusterV2
from skinssl.lightning_modules.baselines.moco import MoCo
from skinssl.lightning_modules.baselines.simclr import SimCLR
from skinssl.lightning_modules.baselines.simsiam import SimSiam
from skinssl.lightning_modules.baselines.swav import SwAV

__all__ = [
    "BYOL",
    "BarlowTwins",
    "DeepClusterV2",
    "MoCo",
    "Pretraining",
    "SimCLR",
    "SimSiam",
    "SwAV",
]
