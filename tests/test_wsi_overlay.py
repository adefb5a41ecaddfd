"""musk.wsi.overlay: patches tinted at the right thumbnail pixels, overlaps averaged."""

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from musk.wsi.overlay import heatmap_overlay


def _grey(width=100, height=80):
    return Image.new("RGB", (width, height), (200, 200, 200))


def test_patches_land_on_their_scaled_footprint():
    # level 0 is 10x the thumbnail; a 200 px patch at (300, 100) covers thumbnail x 30..50, y 10..30
    out = np.asarray(heatmap_overlay(_grey(), [[300, 100]], [1.0], 200, (1000, 800), alpha=1.0, value_range=(0, 1)))
    expected = np.round(np.array(colormaps["jet"](1.0)[:3]) * 255)
    np.testing.assert_array_equal(out[10:30, 30:50], np.broadcast_to(expected, (20, 20, 3)))
    untouched = np.ones(out.shape[:2], bool)
    untouched[10:30, 30:50] = False
    assert (out[untouched] == 200).all()


def test_overlapping_patches_are_averaged_and_blended():
    out = heatmap_overlay(_grey(), [[0, 0], [100, 0]], [0.0, 1.0], 200, (1000, 800), alpha=0.5, value_range=(0, 1))
    pixel = np.asarray(out)[5, 15]  # inside both patches (x 10..20)
    expected = np.round((0.5 * 200 / 255 + 0.5 * np.array(colormaps["jet"](0.5)[:3])) * 255)
    np.testing.assert_allclose(pixel, expected, atol=1)


def test_no_patches_gives_the_thumbnail_and_mismatch_raises():
    assert np.asarray(heatmap_overlay(_grey(), np.zeros((0, 2)), [], 256, (1000, 800))).max() == 200
    with pytest.raises(ValueError, match="2 values for 1 patches"):
        heatmap_overlay(_grey(), [[0, 0]], [0.1, 0.2], 256, (1000, 800))
