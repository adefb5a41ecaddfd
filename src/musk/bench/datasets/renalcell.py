"""RenalCell (Brummer et al. 2023, Zenodo): renal cell carcinoma tissue classes blood, cancer, empty, normal,
other, stroma.

Layout: one folder per class, either under ``<root>/train/`` and ``<root>/test/`` or directly under ``<root>``;
in the latter case a fixed 70/30 split by a hash of the file path (see ``layout.hash_split``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import BenchData, FileImages
from .layout import check_split, class_folders, hash_split

FOLDERS = ["blood", "cancer", "empty", "normal", "other", "stroma"]


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, ("train", "test"))
    if (root / split).is_dir():
        paths, labels = class_folders(root / split, name, FOLDERS)
    else:
        paths, labels = class_folders(root, name, FOLDERS)
        keep = hash_split([str(p.relative_to(root)) for p in paths], split)
        paths, labels = [paths[i] for i in keep], np.asarray(labels)[keep]
    return BenchData(name, split, FileImages(paths, root), labels=labels, classes=list(FOLDERS))
