"""WSSS4LUAD (Han et al. 2022): lung adenocarcinoma tiles, tumour / stroma / normal.

Official layout: ``<root>/1.training/*.png`` whose names end in the image-level label vector
``[tumor, stroma, normal]``, e.g. ``436219-7159-48057-[1, 0, 0].png``. Tiles with exactly one class are used
(tiles with several are left out), with a fixed 70/30 split by a hash of the file name (see
``layout.hash_split``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..data import BenchData, FileImages
from .layout import check_split, hash_split, images_in, require

CLASSES = ["tumor", "stroma", "normal"]
_VECTOR = re.compile(r"\[(\d),\s*(\d),\s*(\d)\]")


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, ("train", "test"))
    paths, labels = [], []
    for path in images_in(require(root / "1.training", name, "folder")):
        match = _VECTOR.search(path.name)
        if match is None:
            continue
        vector = [int(v) for v in match.groups()]
        if sum(vector) == 1:
            paths.append(path)
            labels.append(vector.index(1))
    keep = hash_split([p.name for p in paths], split)
    return BenchData(
        name, split, FileImages([paths[i] for i in keep], root), labels=[labels[i] for i in keep], classes=list(CLASSES)
    )
