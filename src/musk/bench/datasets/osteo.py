"""Osteosarcoma tumour assessment (Leavey et al., UT Southwestern; TCIA): non-tumour, necrotic (non-viable)
tumour, viable tumour.

Official layout: the image tiles (``*.jpg``) anywhere under ``<root>`` (``Training-Set-1/``, ``Training-Set-2/``
...) and ``<root>/ML_Features_1144.csv`` with ``image.name`` and ``classification`` (``Non-Tumor``,
``Non-Viable-Tumor``, ``Viable``; the mixed ``viable: non-viable`` tiles are left out). The dataset has no
official split: a fixed 70/30 split by a hash of the file name (see ``layout.hash_split``).
"""

from __future__ import annotations

from pathlib import Path

from ..data import BenchData, DatasetLayoutError, FileImages
from .layout import check_split, hash_split, read_table

LABELS = {"Non-Tumor": 0, "Non-Viable-Tumor": 1, "Viable": 2}
CLASSES = ["non-tumor", "non-viable necrotic osteosarcoma tumor", "viable osteosarcoma tumor"]


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, ("train", "test"))
    table = read_table(root / "ML_Features_1144.csv", name, ["image.name", "classification"])
    table = table[table["classification"].isin(LABELS)]
    files = {p.name: p for p in root.rglob("*.jpg")}
    names = [str(n) if str(n).endswith(".jpg") else f"{n}.jpg" for n in table["image.name"]]
    missing = [n for n in names if n not in files]
    if missing:
        raise DatasetLayoutError(
            f"{name}: {len(missing)} image(s) listed in ML_Features_1144.csv are not under {root}, e.g. {missing[:3]}"
        )
    keep = hash_split(names, split)
    paths = [files[names[i]] for i in keep]
    labels = [LABELS[table["classification"].iloc[i]] for i in keep]
    return BenchData(name, split, FileImages(paths, root), labels=labels, classes=list(CLASSES))
