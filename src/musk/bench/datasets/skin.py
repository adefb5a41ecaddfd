"""SkinCancer (Kriegsmann et al. 2022, heiDATA): 16 skin tissue classes (``skin``), or the 4 tumour classes
(``skin_tumor``).

Layout (official and upstream demo): ``<root>/data/tiles-v2.csv`` with the columns ``file`` (relative to
``<root>``), ``class``, ``set`` (Train / Validation / Test) and ``malignicy`` (tumor / nontumor).
"""

from __future__ import annotations

from pathlib import Path

from ..data import BenchData, DatasetLayoutError, FileImages
from .layout import check_split, read_table

CLASSES = [
    "nontumor_skin_necrosis_necrosis",
    "nontumor_skin_muscle_skeletal",
    "nontumor_skin_sweatglands_sweatglands",
    "nontumor_skin_vessel_vessel",
    "nontumor_skin_elastosis_elastosis",
    "nontumor_skin_chondraltissue_chondraltissue",
    "nontumor_skin_hairfollicle_hairfollicle",
    "nontumor_skin_epidermis_epidermis",
    "nontumor_skin_nerves_nerves",
    "nontumor_skin_subcutis_subcutis",
    "nontumor_skin_dermis_dermis",
    "nontumor_skin_sebaceousglands_sebaceousglands",
    "tumor_skin_epithelial_sqcc",
    "tumor_skin_melanoma_melanoma",
    "tumor_skin_epithelial_bcc",
    "tumor_skin_naevus_naevus",
]
SETS = {"train": "Train", "val": "Validation", "test": "Test"}


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, SETS)
    csv = root / "data" / "tiles-v2.csv"
    table = read_table(csv, name, ["file", "class", "set", "malignicy"])
    table = table[table["set"] == SETS[split]]
    classes = CLASSES
    if name == "skin_tumor":
        table = table[table["malignicy"] == "tumor"]
        classes = [c for c in CLASSES if c.startswith("tumor_")]
    unknown = sorted(set(table["class"]) - set(classes))
    if unknown:
        raise DatasetLayoutError(f"{name}: {csv} has unknown classes {unknown}; expected {classes}")
    labels = table["class"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    paths = [root / str(f) for f in table["file"]]
    return BenchData(name, split, FileImages(paths, root), labels=labels, classes=list(classes))
