"""Seeding for numpy / random (and torch when it is already imported)."""
from __future__ import annotations

import os
import random
import sys


def seed_everything(seed: int) -> None:
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    import numpy as np

    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:  # never import torch just to seed it
        import torch

        torch.manual_seed(seed)
