"""Real pixels through every image task: tiles of the CMU H&E slide, tissue vs background by saturation.

A smoke test that real H&E tiles flow through the folder loader, the feature cache and every image task with
the tiny model; the scores of a random tiny model are not checked, only that each run is complete.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import musk
from musk.bench.results import read_records
from musk.cli import main
from weights_file import save_weights

TILE = 128
SATURATION = 40  # mean HSV saturation (0-255) above which a tile is tissue; glass is below 15 on this slide


def _cut_tiles(slide, root, per_class=6):
    """Tiles of the slide's level 0 into root/{train,test}/{background,tissue}/, alternating train and test."""
    rgb = Image.open(slide).convert("RGB")
    saturation = np.asarray(rgb.convert("HSV"))[..., 1]
    counts = {"tissue": 0, "background": 0}
    for y in range(0, rgb.height - TILE + 1, TILE):
        for x in range(0, rgb.width - TILE + 1, TILE):
            mean = saturation[y : y + TILE, x : x + TILE].mean()
            label = "tissue" if mean > SATURATION else "background" if mean < 15 else None
            if label is None or counts[label] >= 2 * per_class:
                continue
            split = ("train", "test")[counts[label] % 2]
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            rgb.crop((x, y, x + TILE, y + TILE)).save(folder / f"x{x}_y{y}.png")
            counts[label] += 1
    assert counts == {"tissue": 2 * per_class, "background": 2 * per_class}


@pytest.mark.parametrize("task", ["zeroshot_classification", "linear_probe", "knn", "image_retrieval"])
def test_real_slide_tiles_through_every_image_task(task, sample_slide, tokenizer_file, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "slide_tiles"
    if not root.exists():
        _cut_tiles(sample_slide, root / "tiles")
        torch.manual_seed(0)
        model = musk.create_model("musk_tiny_patch16_64")
        save_weights(model, root / "tiny.safetensors")
        shutil.copy(tokenizer_file, root / "tokenizer.spm")
    output = root / f"{task}.json"
    argv = [
        "bench", "eval", "--pretrained_model", f"musk_tiny_patch16_64,{root / 'tiny.safetensors'}",
        "--dataset", "folder", "--dataset_root", str(root / "tiles"), "--task", task, "--fewshot_k", "2", "-1",
        "--num_workers", "0", "--feature_root", str(root / "features"), "--output", str(output),
    ]  # fmt: skip
    assert main(argv) == 0
    records = read_records(output)
    assert len(records) == (2 if task in ("linear_probe", "knn") else 1)
    for record in records:
        metrics = record["metrics"]
        assert record["n_samples"] == 12  # six tiles of each class in test/
        if "confusion_matrix" in metrics:
            assert np.array(metrics["confusion_matrix"]).sum(1).tolist() == [6, 6]  # background, tissue
        scalars = [v for v in metrics.values() if isinstance(v, float)]
        assert scalars and all(np.isfinite(scalars))
