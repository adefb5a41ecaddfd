"""SICAPv2 (Silva-Rodríguez et al. 2020): prostate Gleason patterns NC, G3, G4, G5.

Official layout: ``<root>/images/*.jpg`` and ``<root>/partition/Test/{Train,Test}.xlsx`` with the columns
``image_name``, ``NC``, ``G3``, ``G4``, ``G5`` (one-hot; the label is the column holding the maximum).
"""

from __future__ import annotations

from pathlib import Path

from ..data import BenchData, FileImages
from .layout import check_split, read_excel

COLUMNS = ["NC", "G3", "G4", "G5"]
CLASSES = [
    "non-cancerous well-differentiated glands",
    "gleason grade 3 with atrophic well differentiated and dense glandular regions",
    "gleason grade 4 with cribriform, ill-formed, large-fused and papillary glandular patterns",
    "gleason grade 5 with nests of cells without lumen formation, isolated cells and pseudo-roseting patterns",
]


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, ("train", "test"))
    table = read_excel(root / "partition" / "Test" / f"{split.capitalize()}.xlsx", name, ["image_name", *COLUMNS])
    labels = table[COLUMNS].to_numpy().argmax(axis=1)
    paths = [root / "images" / str(n) for n in table["image_name"]]
    return BenchData(name, split, FileImages(paths, root), labels=labels, classes=list(CLASSES))
