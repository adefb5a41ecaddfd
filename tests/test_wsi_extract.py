"""musk.wsi patch dataset and feature extraction: the model's own preprocessing, workers, the three kinds."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from musk import get_transform
from musk.wsi.dataset import PatchPreprocessing, SlidePatchDataset
from musk.wsi.extract import extract_slide_features, projected
from musk.wsi.patching import plan_patches
from musk.wsi.readers import open_slide
from musk.wsi.tissue import segment_tissue

TINY = "musk_tiny_patch16_64"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(11)
    return timm.create_model(TINY).eval()


def real_grid(slide, patch_size, magnification=20):
    with open_slide(slide) as reader:
        tissue = segment_tissue(reader.thumbnail(1024), reader.dimensions, reader.mpp)
        return plan_patches(reader, tissue, patch_size=patch_size, magnification=magnification)


def test_split_preprocessing_equals_get_transform_bit_for_bit(model, sample_slide):
    preprocessing = PatchPreprocessing(model)
    with open_slide(sample_slide) as reader:
        patches = [reader.read_region((900, 1400), 0, (side, side)) for side in (64, 256, 101)]
    for patch in patches:  # as large as the input, resized down, and an odd size
        pixels = preprocessing.pixels(patch)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 64, 64)
        torch.testing.assert_close(preprocessing(patch), get_transform(model)(patch), rtol=0, atol=0)
    batch = torch.stack([preprocessing.pixels(p) for p in patches])
    want = torch.stack([get_transform(model)(p) for p in patches])
    torch.testing.assert_close(preprocessing.normalise(batch), want, rtol=0, atol=0)


def test_dataset_items_are_read_resized_and_normalised_like_by_hand(model, sample_slide):
    grid = real_grid(sample_slide, 256)
    preprocessing = PatchPreprocessing(model)
    dataset = SlidePatchDataset(sample_slide, grid, preprocessing)
    with open_slide(sample_slide) as reader:
        for index in (0, len(grid.coords) - 1):
            x, y = grid.coords[index]
            patch = reader.read_region((x, y), 0, (256, 256))
            got = preprocessing.normalise(dataset[index][None])[0]
            torch.testing.assert_close(got, get_transform(model)(patch), rtol=0, atol=0)
            assert dataset[index].shape == (3, 64, 64) and dataset[index].dtype == torch.uint8
    dataset.close()


def test_patch_read_from_a_coarser_level_is_resized_to_patch_size(tmp_path, model):
    from wsi_synthetic import slide_pixels, write_pyramid

    pixels = slide_pixels((1024, 1024), [(0, 0, 1024, 1024)])
    slide = write_pyramid(tmp_path / "s.tif", pixels, mpp=0.25, levels=2)
    with open_slide(slide) as reader:
        tissue = segment_tissue(reader.thumbnail(512), reader.dimensions, reader.mpp)
        # 20x from a 40x slide, 96 px patches: 192 level-0 px, read as 96 px at level 1
        grid = plan_patches(reader, tissue, patch_size=96, magnification=20)
        level1 = reader.read_region((192, 0), 1, (96, 96))
    assert (grid.level, grid.read_size, grid.patch_size_level0) == (1, 96, 192)
    assert [192, 0] in grid.coords.tolist()
    dataset = SlidePatchDataset(slide, grid, PatchPreprocessing(model))
    index = grid.coords.tolist().index([192, 0])
    np.testing.assert_array_equal(np.asarray(dataset.read_patch(index)), np.asarray(level1))
    # a 40x slide at 30x: 128 level-0 px read at level 0 and resized down to 96
    with open_slide(slide) as reader:
        grid30 = plan_patches(reader, tissue, patch_size=96, magnification=30)
        raw = reader.read_region(tuple(grid30.coords[5]), 0, (128, 128))
    assert (grid30.level, grid30.read_size) == (0, 128)
    want = raw.resize((96, 96), Image.Resampling.BICUBIC, reducing_gap=None)
    read = SlidePatchDataset(slide, grid30, PatchPreprocessing(model)).read_patch(5)
    np.testing.assert_array_equal(np.asarray(read), np.asarray(want))


def test_extraction_kinds_and_workers(model, sample_slide):
    grid = real_grid(sample_slide, 512)
    grid.coords = grid.coords[:6]
    cls = extract_slide_features(model, sample_slide, grid, "cls", batch_size=4)
    with_workers = extract_slide_features(model, sample_slide, grid, "cls", batch_size=4, num_workers=2)
    np.testing.assert_array_equal(cls, with_workers)  # same patches in the same order
    for streams in (1, 3):  # one call per batch, and batches of 4 split 2 + 1 + 1
        in_streams = extract_slide_features(model, sample_slide, grid, "cls", batch_size=4, streams=streams)
        np.testing.assert_allclose(in_streams, cls, rtol=1e-5, atol=1e-6)
    ms = extract_slide_features(model, sample_slide, grid, "ms", batch_size=4)
    proj = extract_slide_features(model, sample_slide, grid, "proj", batch_size=4)
    assert cls.shape == (6, 64) and ms.shape == (6, 128) and proj.shape == (6, 64)
    np.testing.assert_allclose(np.linalg.norm(proj, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(ms[:, :64], cls, rtol=1e-4, atol=1e-5)  # the scale-1 half is the CLS token
    np.testing.assert_allclose(projected(model, cls, "cls").numpy(), proj, atol=1e-5)
    np.testing.assert_allclose(projected(model, ms, "ms").numpy(), proj, atol=1e-5)
    empty = grid
    empty.coords = grid.coords[:0]
    assert extract_slide_features(model, sample_slide, empty, "ms").shape == (0, 128)
    with pytest.raises(ValueError, match="unknown feature kind"):
        extract_slide_features(model, sample_slide, grid, "mean")
