"""PatchCamelyon (Veeling et al. 2018): 96 px lymph-node patches, metastasis or not.

Official layout: ``<root>/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` (``x``: (N, 96, 96, 3)
uint8, ``y``: (N, 1, 1, 1) labels), gunzipped. Splits: train, val, test.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ..data import ArrayImages, BenchData
from .layout import check_split, require

CLASSES = ["lymph node", "lymph node containing metastatic tumor tissue"]
FILE_SPLIT = {"train": "train", "val": "valid", "test": "test"}


def _dataset(path: Path, key: str):
    import h5py

    return h5py.File(path, "r")[key]


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, FILE_SPLIT)
    stem = f"camelyonpatch_level_2_split_{FILE_SPLIT[split]}"
    x_path = require(root / f"{stem}_x.h5", name)
    y_path = require(root / f"{stem}_y.h5", name)
    labels = np.asarray(_dataset(y_path, "y")[:]).reshape(-1)
    images = ArrayImages(name=f"{stem}_x.h5", root=root, open_array=partial(_dataset, x_path, "x"))
    return BenchData(name, split, images, labels=labels, classes=list(CLASSES))
