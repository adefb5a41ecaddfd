"""End to end on real pixels: ``musk wsi run`` extracts features from the real H&E slide, ``musk mil``
trains on them, and the attention heatmap is drawn on that slide's thumbnail."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from musk.cli import main
from musk.wsi.h5 import read_patch_file
from musk.wsi.readers import open_slide
from weights_file import save_weights

TINY = "musk_tiny_patch16_64"
MPP = 0.499  # CMU-1-Small-Region's level-0 microns per pixel


def _cohort_slides(sample_slide, folder):
    """The real slide plus eight regions of it saved as PNG slides (a cohort of nine real-pixel cases)."""
    folder.mkdir()
    (folder / "cmu.svs").symlink_to(sample_slide)
    with Image.open(sample_slide) as slide:
        pixels = slide.convert("RGB")
    width, height = pixels.size
    crops = []
    for row in range(4):
        for col in range(2):
            box = (col * width // 2, row * height // 4, (col + 1) * width // 2, (row + 1) * height // 4)
            name = f"region{row}{col}"
            pixels.crop(box).save(folder / f"{name}.png")
            crops.append(name)
    return crops


def test_mil_trains_on_features_the_wsi_pipeline_extracted_from_the_real_slide(sample_slide, tmp_path, capsys):
    slides = tmp_path / "slides"
    crops = _cohort_slides(sample_slide, slides)
    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_weights(timm.create_model(TINY), str(weights))
    job = tmp_path / "job"
    model = ["--model", TINY, "--weights", str(weights), "--device", "cpu"]
    assert main(["wsi", "run", "--slides", str(slides), "--job_dir", str(job), "--mpp", str(MPP), "--patch_size", "128",
                 *model]) == 0  # fmt: skip
    status = pd.read_csv(job / "status.csv")
    assert set(status.status) == {"done"} and len(status) == 9
    features_dir = job / "features"
    full = read_patch_file(features_dir / "cmu.h5")
    assert full.features.shape == (len(full), 64) and len(full) > 50

    # cases labelled by how much tissue their region holds: a real property of the pixels
    sizes = {name: len(read_patch_file(features_dir / f"{name}.h5", arrays=())) for name in crops}
    median = np.median(list(sizes.values()))
    manifest = pd.DataFrame(
        {"slide_id": crops, "case_id": crops, "label": ["dense" if sizes[c] > median else "sparse" for c in crops]}
    )
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    run = tmp_path / "run"
    cohort = ["--manifest", str(tmp_path / "manifest.csv"), "--features_dir", str(features_dir)]
    assert main(["mil", "train", *cohort, "-o", str(run), "--folds", "2", "--epochs", "3", "--hidden", "32",
                 "--device", "cpu"]) == 0  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    for key in ("auroc", "balanced_acc", "f1"):
        assert len(results[key]["folds"]) == 2 and np.isfinite(results[key]["mean"])
    predictions = pd.read_csv(run / "predictions.csv")
    assert sorted(predictions.case_id) == sorted(crops)
    capsys.readouterr()

    maps = tmp_path / "maps"
    assert main(["mil", "heatmap", "--model_dir", str(run), "--features", str(features_dir / "cmu.h5"),
                 "--slides", str(slides / "cmu.svs"), "-o", str(maps), "--device", "cpu"]) == 0  # fmt: skip
    attention = read_patch_file(maps / "cmu_attention.h5")
    np.testing.assert_array_equal(attention.coords, full.coords)
    assert attention.arrays["attention"].sum() == pytest.approx(1.0, abs=1e-4)
    drawn = np.asarray(Image.open(maps / "cmu_attention.png").convert("RGB"), dtype=np.int16)
    with open_slide(slides / "cmu.svs") as slide:
        thumbnail = np.asarray(slide.thumbnail(2048), dtype=np.int16)
    assert drawn.shape == thumbnail.shape
    changed = np.abs(drawn - thumbnail).sum(-1) > 30
    # the patches cover the tissue, not the whole slide: part of the thumbnail is tinted, part left as it was
    assert 0.05 < changed.mean() < 0.95
