"""Miniatures of the benchmark datasets' folder layouts (a few small images per class), written in tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from musk.bench.datasets.skin import CLASSES as SKIN_CLASSES

RNG = np.random.default_rng(0)


def image(path: Path, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def unitopatho_demo(root: Path, per_class: int = 2) -> Path:
    """``unitopatho/unitopath-public`` with images_{train,test}.json (upstream demo)."""
    base = root / "unitopatho" / "unitopath-public"
    lists = {"train": [], "test": []}
    for c in ["HP", "NORM", "TA.HG", "TA.LG", "TVA.HG", "TVA.LG"]:
        for split in lists:
            for i in range(per_class):
                rel = f"800/{c}/{split}{i}.png"
                image(base / rel)
                lists[split].append(rel)
    for split, items in lists.items():
        (base / f"images_{split}.json").write_text(json.dumps(items))
    return base


def unitopatho_official(root: Path) -> Path:
    base = root / "unitopath-public"
    for split in ("train", "test"):
        rows = []
        for c in ["HP", "NORM", "TA.HG", "TA.LG", "TVA.HG", "TVA.LG"]:
            name = f"{split}-{c}.png"
            image(base / "800" / c / name)
            rows.append({"image_id": name, "top_label_name": c, "type": "x", "grade": 0})
        pd.DataFrame(rows).to_csv(base / "800" / f"{split}.csv", index=False)
    return base


def skin(root: Path, per_class: int = 1) -> Path:
    base = root / "skincancer"
    rows = []
    for c in SKIN_CLASSES:
        for s in ("Train", "Validation", "Test"):
            for i in range(per_class):
                rel = f"data/tiles/{c}/{s}_{i}.jpg"
                image(base / rel)
                rows.append(
                    {
                        "uuid": f"{c}{s}{i}",
                        "file": rel,
                        "class": c,
                        "set": s,
                        "malignicy": "tumor" if c.startswith("tumor") else "nontumor",
                    }
                )
    pd.DataFrame(rows).to_csv(base / "data" / "tiles-v2.csv", index=False)
    return base


def pannuke_demo(root: Path, per_class: int = 2) -> Path:
    base = root / "pannuke"
    rows = []
    for split in ("train", "test"):
        for word in ("benign", "malignant"):
            for i in range(per_class):
                rel = f"images/{split}_{word}_{i}.png"
                image(base / rel)
                rows.append({"image": rel, "caption": f"an H&E image of {word} breast tissue.", "split": split})
    pd.DataFrame(rows).to_csv(base / "PanNuke_all_binary.csv", index=False)
    return base


def pannuke_official(root: Path) -> tuple[Path, dict]:
    """Three folds of 3 patches; labels: malignant when mask channel 0 has a nucleus."""
    base = root / "pannuke_official"
    labels = {}
    for n in (1, 2, 3):
        images = RNG.integers(0, 256, (3, 32, 32, 3)).astype(np.float64)
        masks = np.zeros((3, 32, 32, 6))
        masks[1, 5:9, 5:9, 0] = 7  # one neoplastic nucleus in the second patch
        masks[2, 5:9, 5:9, 1] = 3  # an inflammatory one in the third (benign)
        for sub, array in (("images", images), ("masks", masks)):
            folder = base / f"Fold {n}" / sub / f"fold{n}"
            folder.mkdir(parents=True)
            np.save(folder / f"{sub}.npy", array)
        labels[n] = [0, 1, 0]
    return base, labels


def pathmmu(root: Path) -> tuple[Path, list[str]]:
    """PathMMU demo layout; returns the captions in loading order."""
    base = root / "PathMMU"
    captions = []
    for subset in ("Book", "WebPathology", "Twitter"):
        entries = {}
        for i in range(3):
            name = f"{subset.lower()}_{i}.jpg"
            image(base / subset / "images" / name)
            entries[f"q{i}"] = {"img_path": name, "caption": f"{subset} case {i}: tumour cells in a fibrous stroma."}
            captions.append(entries[f"q{i}"]["caption"])
        (base / subset / "GPTCaption").mkdir(parents=True)
        (base / subset / "GPTCaption" / "captions.json").write_text(json.dumps(entries))
    return base, captions


def arch(root: Path) -> Path:
    """books_set and pubmed_set; in each, the first caption belongs to two images (two panels)."""
    base = root / "ARCH"
    for folder in ("books_set", "pubmed_set"):
        entries = {}
        for i in range(4):
            uuid = f"{folder}-uuid-{i}"
            image(base / folder / "images" / f"{uuid}.png")
            caption = "shared figure caption" if i < 2 else f"caption {i}"
            entries[str(i)] = {"figure_id": str(i // 2), "letter": "AB"[i % 2], "caption": caption, "uuid": uuid}
        (base / folder / "captions.json").write_text(json.dumps(entries))
    return base


def pcam(root: Path, n: int = 4) -> Path:
    import h5py

    base = root / "pcam"
    base.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        with h5py.File(base / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f["x"] = RNG.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        with h5py.File(base / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f["y"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
    return base


NCT = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]


def nct_crc(root: Path) -> Path:
    base = root / "nct_crc"
    for folder in ("NCT-CRC-HE-100K", "CRC-VAL-HE-7K"):
        for c in NCT:
            image(base / folder / c / f"{c}-AAAA.tif")
    return base


def sicap(root: Path) -> Path:
    base = root / "SICAPv2"
    for split, n in (("Train", 8), ("Test", 4)):
        rows = []
        for i in range(n):
            name = f"16B{split}_Block_Region_{i}.jpg"
            image(base / "images" / name)
            onehot = [0, 0, 0, 0]
            onehot[i % 4] = 1
            rows.append(
                {"image_name": name, "NC": onehot[0], "G3": onehot[1], "G4": onehot[2], "G5": onehot[3], "G4C": 0}
            )
        (base / "partition" / "Test").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_excel(base / "partition" / "Test" / f"{split}.xlsx", index=False)
    return base


def osteo(root: Path) -> Path:
    base = root / "osteo"
    rows = []
    kinds = ["Non-Tumor", "Non-Viable-Tumor", "Viable", "viable: non-viable"]
    for i in range(20):
        name = f"Case-{i}-A1-{1000 + i}.jpg"
        image(base / f"Training-Set-{1 + i % 2}" / f"set{i % 3}" / name)
        rows.append({"image.name": name, "classification": kinds[i % 4]})
    pd.DataFrame(rows).to_csv(base / "ML_Features_1144.csv", index=False)
    return base


def renalcell(root: Path) -> Path:
    base = root / "renalcell"
    for split in ("train", "test"):
        for c in ["blood", "cancer", "empty", "normal", "other", "stroma"]:
            image(base / split / c / f"{c}_{split}.png")
    return base


def lc25000(root: Path, per_class: int = 6) -> Path:
    base = root / "LC25000" / "lung_colon_image_set"
    for group, classes in (
        ("colon_image_sets", ["colon_aca", "colon_n"]),
        ("lung_image_sets", ["lung_aca", "lung_n", "lung_scc"]),
    ):
        for c in classes:
            for i in range(per_class):
                image(base / group / c / f"{c}{i}.jpeg")
    return root / "LC25000"


def wsss4luad(root: Path) -> Path:
    base = root / "WSSS4LUAD" / "1.training"
    vectors = ["[1, 0, 0]", "[0, 1, 0]", "[0, 0, 1]", "[1, 1, 0]"]
    for i in range(16):
        image(base / f"4362{i}-7159-48057-{vectors[i % 4]}.png")
    return root / "WSSS4LUAD"


BRACS = ["0_N", "1_PB", "2_UDH", "3_FEA", "4_ADH", "5_DCIS", "6_IC"]


def bracs_official(root: Path) -> Path:
    base = root / "BRACS" / "BRACS_RoI" / "latest_version"
    for split in ("train", "val", "test"):
        for c in BRACS:
            image(base / split / c / f"BRACS_1_{c}_{split}.png", size=24)
    return root / "BRACS"


def bracs_demo(root: Path) -> Path:
    base = root / "bracs_demo"
    rows = []
    for split in ("train", "val", "test"):
        for c in BRACS:
            rel = f"roi/{split}/{c}.png"
            image(base / rel, size=24)
            rows.append({"image_path": rel, "class_name": c, "data_split": split})
    pd.DataFrame(rows).to_csv(base / "bright_roi.csv", index=False)
    return base
