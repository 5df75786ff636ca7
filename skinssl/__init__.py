"""skinssl: self-supervised multi-modality, multi-label skin lesion classification."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
