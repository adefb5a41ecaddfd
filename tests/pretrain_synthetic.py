"""Generated pretraining data with learnable structure, for the pretraining tests.

Images: 64 px tiles of 4 x 4 patches, a checkerboard of two of six fixed 16 px motifs, so a masked patch is
predictable from the visible ones. Texts: documents from a small grammar whose words depend on each other
(an organ fixes its tumour and stain words). Pairs: a tile and a caption naming its two motifs.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

MOTIF_NAMES = ("red", "green", "blue", "yellow", "purple", "grey")
ORGANS = {
    "lung": ("adenocarcinoma", "napsin"),
    "breast": ("ductal carcinoma", "oestrogen"),
    "colon": ("adenocarcinoma", "cdx2"),
    "prostate": ("acinar carcinoma", "psa"),
    "skin": ("melanoma", "sox10"),
}
GRADES = ("well differentiated", "moderately differentiated", "poorly differentiated")


def motifs(seed: int = 1234) -> np.ndarray:
    """Six 16 x 16 RGB motifs: a base colour with a fixed random texture."""
    rng = np.random.default_rng(seed)
    base = np.array([[200, 40, 40], [40, 180, 60], [40, 60, 200], [220, 210, 40], [150, 50, 170], [128, 128, 128]])
    texture = rng.integers(-40, 41, size=(6, 16, 16, 1))
    return np.clip(base[:, None, None, :] + texture, 0, 255).astype(np.uint8)


def motif_image(a: int, b: int, table: np.ndarray) -> Image.Image:
    tile = np.zeros((64, 64, 3), dtype=np.uint8)
    for r in range(4):
        for c in range(4):
            tile[16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = table[a if (r + c) % 2 == 0 else b]
    return Image.fromarray(tile)


def _pairs_of_motifs(n: int, seed: int, single: bool = False) -> list[tuple[int, int]]:
    """Two different motifs per tile, or one (``single``: a = b)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(len(MOTIF_NAMES), size=2, replace=False)
        out.append((int(a), int(a if single else b)))
    return out


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` PNG tiles in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    table = motifs()
    for i, (a, b) in enumerate(_pairs_of_motifs(n, seed)):
        motif_image(a, b, table).save(folder / f"tile_{i:04d}.png")
    return folder


def document(rng: np.random.Generator) -> str:
    organ = list(ORGANS)[int(rng.integers(len(ORGANS)))]
    tumour, marker = ORGANS[organ]
    grade = GRADES[int(rng.integers(len(GRADES)))]
    return (
        f"the {organ} biopsy shows {grade} {tumour} . the tumour cells stain for {marker} . "
        f"final diagnosis : {organ} {tumour} , {grade} ."
    )


def make_corpus(path: Path, n: int, seed: int = 0, jsonl: bool = False) -> Path:
    """``n`` documents, one per line (``.txt``) or as ``{"text": ...}`` objects (``.jsonl``)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [document(rng) for _ in range(n)]
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((json.dumps({"text": line}) if jsonl else line) + "\n")
    return path


def caption(a: int, b: int) -> str:
    if a == b:
        return f"a tile of {MOTIF_NAMES[a]} texture"
    return f"a tile with a checkerboard of {MOTIF_NAMES[a]} and {MOTIF_NAMES[b]} texture"


def make_pairs(folder: Path, n: int, seed: int = 0, single: bool = False) -> Path:
    """``n`` tiles and ``pairs.csv`` (image, caption) in ``folder``; returns the CSV path. ``single``: one
    motif per tile (six kinds of pair: quick to align)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = motifs()
    rows = []
    for i, (a, b) in enumerate(_pairs_of_motifs(n, seed, single)):
        name = f"pair_{i:04d}.png"
        motif_image(a, b, table).save(folder / name)
        rows.append({"image": name, "caption": caption(a, b)})
    with open(folder / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "pairs.csv"


def make_shards(folder: Path, n: int, per_shard: int, seed: int = 0, captions: bool = True) -> list[Path]:
    """WebDataset tar shards of ``key.png`` (+ ``key.txt`` captions)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = motifs()
    shards: list[Path] = []
    tar = None
    for i, (a, b) in enumerate(_pairs_of_motifs(n, seed)):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            shards.append(folder / f"shard-{len(shards):04d}.tar")
            tar = tarfile.open(shards[-1], "w")
        buffer = io.BytesIO()
        motif_image(a, b, table).save(buffer, format="PNG")
        files = {"png": buffer.getvalue()}
        if captions:
            files["txt"] = caption(a, b).encode()
        for ext, data in files.items():
            info = tarfile.TarInfo(f"sample{i:05d}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        tar.close()
    return shards


class CodeOnLoad:
    """What a crafted checkpoint file holds: unpickling it creates the file ``marker`` (it could do anything)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")
