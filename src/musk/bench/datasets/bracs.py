"""BRACS (Brancati et al. 2022): breast regions of interest, 7 subtypes grouped into 6 (``bracs6cls``, normal
and pathological benign merged) or 3 (``bracs3cls``: non-cancerous, pre-cancerous, cancerous) classes;
``bracs_retrieval`` uses every split for image retrieval.

Layouts under ``<root>``: official ``BRACS_RoI/latest_version/{train,val,test}/<0_N..6_IC>/*.png`` (or those
split folders directly under ``<root>``), or the upstream demo's ``bright_roi.csv`` (``image_path``,
``class_name``, ``data_split``). Each ROI (40x, about 2000 px) is centre-cropped, or padded with black, to
1792 px (224 px at 5x), as upstream.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..data import BenchData, DatasetLayoutError, FileImages
from .layout import check_split, class_folders, read_table

FOLDERS = ["0_N", "1_PB", "2_UDH", "3_FEA", "4_ADH", "5_DCIS", "6_IC"]
GROUPS = {
    "bracs6cls": [0, 0, 1, 2, 3, 4, 5],
    "bracs_retrieval": [0, 0, 1, 2, 3, 4, 5],
    "bracs3cls": [0, 0, 0, 1, 1, 2, 2],
}
CLASSES = {
    "bracs6cls": [
        "normal tissue or pathological benign",
        "usual ductal hyperplasia",
        "flat epithelial atypia",
        "atypical ductal hyperplasia",
        "ductal carcinoma in situ",
        "invasive carcinoma",
    ],
    "bracs3cls": ["non-cancerous", "pre-cancerous", "cancerous"],
}
CLASSES["bracs_retrieval"] = CLASSES["bracs6cls"]
CROP = 1792


def crop_or_pad(image: Image.Image, size: int = CROP) -> Image.Image:
    """Centre crop to ``size`` when either side is larger, else centre on a black ``size`` square."""
    w, h = image.size
    if w > size or h > size:
        left, top = (w - size) // 2, (h - size) // 2
        return image.crop((left, top, left + size, top + size))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image, ((size - w) // 2, (size - h) // 2))
    return canvas


def _official_root(root: Path) -> Path | None:
    for base in (root / "BRACS_RoI" / "latest_version", root):
        if (base / "train").is_dir():
            return base
    return None


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, ("train", "val", "test"))
    splits = ("train", "val", "test") if name == "bracs_retrieval" else (split,)
    base = _official_root(root)
    paths, subtypes = [], []
    if base is not None:
        for s in splits:
            found, labels = class_folders(base / s, name, FOLDERS)
            paths += found
            subtypes += labels
    else:
        table = read_table(root / "bright_roi.csv", name, ["image_path", "class_name", "data_split"])
        table = table[table["data_split"].isin(splits)]
        unknown = sorted(set(table["class_name"]) - set(FOLDERS))
        if unknown:
            raise DatasetLayoutError(f"{name}: {root / 'bright_roi.csv'} has unknown classes {unknown}")
        paths = [root / str(p) for p in table["image_path"]]
        subtypes = [FOLDERS.index(c) for c in table["class_name"]]
    labels = [GROUPS[name][s] for s in subtypes]
    return BenchData(
        name, split, FileImages(paths, root, prepare=crop_or_pad), labels=labels, classes=list(CLASSES[name])
    )
