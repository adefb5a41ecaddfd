"""LC25000 (Borkowski et al. 2019): lung and colon histology, five classes.

Official layout: ``<root>/lung_colon_image_set/colon_image_sets/{colon_aca,colon_n}/*.jpeg`` and
``.../lung_image_sets/{lung_aca,lung_n,lung_scc}/*.jpeg`` (``<root>`` may also be ``lung_colon_image_set``
itself). No official split: a fixed 70/30 split by a hash of the file path (see ``layout.hash_split``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import BenchData, FileImages
from .layout import check_split, class_folders, hash_split

FOLDERS = {
    "colon_image_sets": ["colon_aca", "colon_n"],
    "lung_image_sets": ["lung_aca", "lung_n", "lung_scc"],
}
CLASSES = [
    "colon adenocarcinoma",
    "benign colonic tissue",
    "lung adenocarcinoma",
    "benign lung tissue",
    "lung squamous cell carcinoma",
]


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, ("train", "test"))
    base = root / "lung_colon_image_set" if (root / "lung_colon_image_set").is_dir() else root
    paths, labels, offset = [], [], 0
    for group, folders in FOLDERS.items():
        found, found_labels = class_folders(base / group, name, folders)
        paths += found
        labels += [offset + label for label in found_labels]
        offset += len(folders)
    keep = hash_split([str(p.relative_to(base)) for p in paths], split)
    return BenchData(
        name, split, FileImages([paths[i] for i in keep], root), labels=np.asarray(labels)[keep], classes=list(CLASSES)
    )
