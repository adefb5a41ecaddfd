"""musk.wsi readers, tissue segmentation and patching on synthetic pyramids (known tissue) and the real slide."""

import numpy as np
import openslide
import pytest
from PIL import Image
from skimage.filters import threshold_otsu

from musk.wsi.patching import plan_patches
from musk.wsi.readers import ImageSlideReader, OpenSlideReader, SlideError, open_slide
from musk.wsi.tissue import TissueMask, contour_overlay, otsu_threshold, segment_tissue
from wsi_synthetic import slide_pixels, write_pyramid

# Level-0 squares of the 40x synthetic slide (0.25 mpp): 768 x 768 and 512 x 768 pixels of tissue.
SQUARES_40X = [(256, 256, 1024, 1024), (1280, 512, 1792, 1280)]
SIZE_40X = (2048, 1536)


@pytest.fixture(scope="module")
def pixels_40x():
    return slide_pixels(SIZE_40X, SQUARES_40X)


@pytest.fixture(scope="module")
def slide_40x(tmp_path_factory, pixels_40x):
    return write_pyramid(tmp_path_factory.mktemp("s40") / "s40.tif", pixels_40x, mpp=0.25, levels=3)


@pytest.fixture(scope="module")
def slide_20x(tmp_path_factory, pixels_40x):
    """The same tissue scanned at 20x: every other pixel of the 40x slide, 0.5 mpp."""
    return write_pyramid(tmp_path_factory.mktemp("s20") / "s20.tif", pixels_40x[::2, ::2].copy(), mpp=0.5, levels=2)


def expected_coords(squares, size, patch, step):
    """Grid corners (row-major) whose patch lies wholly inside one tissue square: the squares are aligned to
    the grids used here, so every other patch holds no tissue or at most half."""
    coords = []
    for y in range(0, size[1] - patch + 1, step):
        for x in range(0, size[0] - patch + 1, step):
            if any(x0 <= x and x + patch <= x1 and y0 <= y and y + patch <= y1 for x0, y0, x1, y1 in squares):
                coords.append((x, y))
    return np.array(coords, dtype=np.int64).reshape(-1, 2)


def tissue_of(reader, thumbnail_size=2048):
    return segment_tissue(reader.thumbnail(thumbnail_size), reader.dimensions, reader.mpp)


# ---- readers ------------------------------------------------------------------------------------------------
def test_synthetic_pyramid_reads_back_exactly_through_openslide(slide_40x, pixels_40x):
    with open_slide(slide_40x) as reader:
        assert isinstance(reader, OpenSlideReader)
        assert reader.dimensions == SIZE_40X and reader.level_count == 3
        assert reader.level_downsamples == (1.0, 2.0, 4.0)
        assert reader.mpp == pytest.approx(0.25) and reader.magnification == pytest.approx(40)
        region = reader.read_region((300, 200), 0, (50, 40))
        assert region.mode == "RGB" and region.size == (50, 40)
        np.testing.assert_array_equal(np.asarray(region), pixels_40x[200:240, 300:350])
        level1 = np.asarray(Image.fromarray(pixels_40x).resize((1024, 768), Image.Resampling.BOX))
        np.testing.assert_array_equal(np.asarray(reader.read_region((600, 400), 1, (32, 16))), level1[200:216, 300:332])
        assert reader.best_level_for_downsample(2.0) == 1
        assert reader.best_level_for_downsample(3.9) == 1
        assert reader.best_level_for_downsample(100) == 2
        assert reader.best_level_for_downsample(0.5) == 0
        assert reader.thumbnail(512).size == (512, 384)


def test_real_slide_geometry_and_pixels_match_openslide(sample_slide):
    raw = openslide.OpenSlide(str(sample_slide))
    with open_slide(sample_slide) as reader:
        assert reader.dimensions == (2220, 2967) and reader.level_count == 1
        assert reader.mpp == pytest.approx(0.499) and reader.magnification == 20
        got = np.asarray(reader.read_region((1000, 1500), 0, (64, 48)))
        want = np.asarray(raw.read_region((1000, 1500), 0, (64, 48)).convert("RGB"))
        np.testing.assert_array_equal(got, want)
        # beyond the scanned area OpenSlide gives transparent pixels: they become white glass
        edge = np.asarray(reader.read_region((2200, 2950), 0, (40, 40)))
        assert (edge[20:, :] == 255).all() and (edge[:, 20:] == 255).all()
        assert reader.mpp == pytest.approx(float(raw.properties["openslide.mpp-x"]))
    with open_slide(sample_slide, mpp=0.25) as reader:  # an explicit mpp overrides the metadata
        assert reader.mpp == 0.25 and reader.magnification == 40


def test_slide_without_resolution_needs_mpp(tmp_path, pixels_40x):
    path = write_pyramid(tmp_path / "nompp.tif", pixels_40x[:512, :512].copy(), mpp=None, levels=1)
    with pytest.raises(SlideError, match=r"nompp\.tif has no resolution metadata.*--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as reader:
        assert reader.mpp == 0.5 and reader.magnification == 20


def test_corrupt_and_missing_files_name_the_file(tmp_path, sample_slide):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 20)
    with pytest.raises(SlideError, match=r"broken\.svs"):
        open_slide(bad)
    with pytest.raises(FileNotFoundError, match=r"gone\.svs"):
        open_slide(tmp_path / "gone.svs")
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(sample_slide.read_bytes()[:200_000])
    with pytest.raises(SlideError, match=r"truncated\.svs"):
        with open_slide(truncated) as reader:
            reader.read_region((0, 0), 0, reader.dimensions)


def test_plain_image_reader_pads_with_white(tmp_path, pixels_40x):
    path = tmp_path / "patch.png"
    Image.fromarray(pixels_40x[:300, :400]).save(path)
    with pytest.raises(SlideError, match="--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as reader:
        assert isinstance(reader, ImageSlideReader) and reader.dimensions == (400, 300)
        region = np.asarray(reader.read_region((380, 290), 0, (30, 20)))
        np.testing.assert_array_equal(region[:10, :20], pixels_40x[290:300, 380:400])
        assert (region[10:] == 255).all() and (region[:, 20:] == 255).all()


# ---- tissue -------------------------------------------------------------------------------------------------
def test_otsu_threshold_matches_scikit_image():
    rng = np.random.default_rng(0)
    for seed in range(4):
        values = np.concatenate([rng.normal(30 + seed, 8, 4000), rng.normal(150, 25, 900 * (seed + 1))])
        values = values.clip(0, 255).astype(np.uint8)
        assert otsu_threshold(values) == int(threshold_otsu(values))


def test_segmentation_finds_the_tissue_squares(slide_40x):
    with open_slide(slide_40x) as reader:
        thumbnail = reader.thumbnail(1024)  # 2 level-0 pixels per mask pixel
        tissue = segment_tissue(thumbnail, reader.dimensions, reader.mpp)
    want = np.zeros((768, 1024), dtype=bool)
    for x0, y0, x1, y1 in SQUARES_40X:
        want[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = True
    assert tissue.scale == (2.0, 2.0)
    assert (tissue.mask != want).sum() < 0.002 * want.sum()  # at most a ragged pixel along the edges
    overlay = np.asarray(contour_overlay(thumbnail, tissue.mask))
    assert (overlay[256, 128:134] == (0, 200, 0)).all(axis=1).any()  # the outline of the first square
    assert (overlay[384, 300] == np.asarray(thumbnail)[384, 300]).all()  # inside: untouched


def test_small_specks_dropped_small_holes_filled_empty_glass_empty():
    mpp, size = 0.5, (400, 400)  # a mask pixel is 0.25 um^2 with a full-size thumbnail
    squares = [(50, 50, 350, 350), (370, 370, 380, 380)]  # tissue, and a 10 px speck (25 um^2)
    pixels = slide_pixels(size, squares)
    pixels[150:160, 150:160] = 238  # a 100 px hole inside the tissue
    pixels[200:340, 200:340] = 238  # a 19600 px lumen (4900 um^2 < 5000: filled)
    tissue = segment_tissue(Image.fromarray(pixels), size, mpp, min_area_um2=100, max_hole_um2=1000)
    assert tissue.mask[155, 155]  # small hole filled
    assert not tissue.mask[270, 270]  # 4900 um^2 lumen > 1000 um^2: stays out
    assert not tissue.mask[375, 375]  # speck dropped
    assert tissue.mask[100, 100]
    empty = segment_tissue(Image.fromarray(slide_pixels(size, [])), size, mpp)
    assert not empty.mask.any()


def test_tissue_fraction_equals_brute_force_and_mask_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    mask = rng.random((60, 80)) > 0.6
    tissue = TissueMask(mask, (800, 600))  # 10 level-0 pixels per mask pixel
    level0 = np.kron(mask, np.ones((10, 10), dtype=bool))  # the mask at level-0 resolution
    coords = np.array([[0, 0], [30, 40], [750, 550], [400, 100], [123, 337]])
    got = tissue.tissue_fraction(coords, 50)
    for (x, y), fraction in zip(coords[:4], got[:4], strict=True):  # on the mask's pixel grid: exact
        assert fraction == pytest.approx(level0[y : y + 50, x : x + 50].mean())
    assert got[4] == pytest.approx(level0[337:387, 123:173].mean(), abs=0.15)  # off the grid: nearest pixels
    tissue.save(tmp_path / "m.png")
    np.testing.assert_array_equal(TissueMask.load(tmp_path / "m.png", (800, 600)).mask, mask)


# ---- patching -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("magnification", "size0", "level", "count"),
    [(20, 256, 1, 3 * 3 + 2 * 3), (40, 128, 0, 6 * 6 + 4 * 6), (10, 512, 2, 1)],
)
def test_patch_counts_on_the_40x_pyramid(slide_40x, magnification, size0, level, count):
    with open_slide(slide_40x) as reader:
        grid = plan_patches(reader, tissue_of(reader), patch_size=128, magnification=magnification)
        attrs = grid.attrs(reader, "s40")
    assert (grid.patch_size_level0, grid.level, grid.read_size) == (size0, level, 128)
    assert len(grid.coords) == count
    np.testing.assert_array_equal(grid.coords, expected_coords(SQUARES_40X, SIZE_40X, size0, size0))
    assert attrs["patch_size_level0"] == size0 and attrs["level0_magnification"] == 40
    assert attrs["target_magnification"] == magnification and attrs["level0_width"] == 2048


def test_20x_slide_gives_the_same_patches_at_half_the_coordinates(slide_20x, slide_40x):
    with open_slide(slide_20x) as reader:
        grid20 = plan_patches(reader, tissue_of(reader), patch_size=128, magnification=20)
        with pytest.raises(ValueError, match="20x.*40x would upsample"):
            plan_patches(reader, tissue_of(reader), patch_size=128, magnification=40)
    with open_slide(slide_40x) as reader:
        grid40 = plan_patches(reader, tissue_of(reader), patch_size=128, magnification=20)
        by_mpp = plan_patches(reader, tissue_of(reader), patch_size=128, magnification=None, mpp=0.5)
    assert (grid20.patch_size_level0, grid20.level) == (128, 0) and len(grid20.coords) == 15
    np.testing.assert_array_equal(grid20.coords * 2, grid40.coords)
    np.testing.assert_array_equal(by_mpp.coords, grid40.coords)
    assert by_mpp.target_mpp == 0.5 and by_mpp.target_magnification is None


def test_overlap_and_min_tissue(slide_40x):
    with open_slide(slide_40x) as reader:
        tissue = tissue_of(reader)
        overlapping = plan_patches(reader, tissue, patch_size=128, magnification=40, overlap=64, min_tissue=0.6)
        assert len(overlapping.coords) == 11 * 11 + 7 * 11  # (768 - 128) / 64 + 1 = 11 corners along 768 px
        np.testing.assert_array_equal(overlapping.coords, expected_coords(SQUARES_40X, SIZE_40X, 128, 64))
        # 10x patches of 512 px: only (512, 512) lies wholly in tissue
        any_tissue = plan_patches(reader, tissue, patch_size=128, magnification=10, min_tissue=0.0)
        fractions = tissue.tissue_fraction(any_tissue.coords, 512)
        assert (fractions > 0).all() and len(any_tissue.coords) > 1
        full = plan_patches(reader, tissue, patch_size=128, magnification=10, min_tissue=0.99)  # corners round off
        np.testing.assert_array_equal(full.coords, [[512, 512]])
        with pytest.raises(ValueError, match="overlap"):
            plan_patches(reader, tissue, patch_size=128, overlap=128)


def test_empty_slide_gives_no_patches(tmp_path):
    path = write_pyramid(tmp_path / "glass.tif", slide_pixels((1024, 768), []), mpp=0.5, levels=2)
    with open_slide(path) as reader:
        grid = plan_patches(reader, tissue_of(reader), patch_size=128)
    assert grid.coords.shape == (0, 2) and grid.coords.dtype == np.int64


def test_real_slide_patches_are_tissue_on_the_grid(sample_slide):
    with open_slide(sample_slide) as reader:
        tissue = tissue_of(reader, 1024)
        grid = plan_patches(reader, tissue, patch_size=256, magnification=20, min_tissue=0.5)
        everything = plan_patches(reader, tissue, patch_size=256, magnification=20, min_tissue=0.0)
    assert 0.2 < tissue.mask.mean() < 0.6  # CMU-1-Small-Region: a piece of tissue with glass around it
    assert grid.patch_size_level0 == 256 and len(grid.coords) > 10
    assert (grid.coords % 256 == 0).all()
    assert (grid.coords[:, 0] + 256 <= 2220).all() and (grid.coords[:, 1] + 256 <= 2967).all()
    assert (tissue.tissue_fraction(grid.coords, 256) >= 0.5).all()
    assert len(everything.coords) > len(grid.coords)


def test_arguments_are_checked_before_dividing(slide_40x):
    with open_slide(slide_40x) as reader:
        with pytest.raises(ValueError, match="thumbnail size must be at least 1 pixel, got 0"):
            reader.thumbnail(0)
        thumbnail = reader.thumbnail(256)
        with pytest.raises(ValueError, match="mpp must be positive, got 0"):
            segment_tissue(thumbnail, reader.dimensions, 0)
        tissue = segment_tissue(thumbnail, reader.dimensions, reader.mpp)
        with pytest.raises(ValueError, match="magnification/mpp must be positive, got 0"):
            plan_patches(reader, tissue, magnification=0)
        with pytest.raises(ValueError, match="magnification/mpp must be positive, got 0"):
            plan_patches(reader, tissue, magnification=None, mpp=0)
