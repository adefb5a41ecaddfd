"""musk.wsi.h5: the patch file contract (coords, features, attributes), atomic writes, clear errors."""

import h5py
import numpy as np
import pytest

from musk.wsi.h5 import read_patch_file, write_patch_file


def test_round_trip_keeps_types_shapes_and_attributes(tmp_path):
    coords = np.array([[0, 0], [384, 0], [0, 768]])
    features = np.arange(3 * 5, dtype=np.float64).reshape(3, 5)
    attrs = {"patch_size": 384, "level0_mpp": 0.25, "name": "slide-1", "encoder": "musk", "target_mpp": None}
    path = write_patch_file(tmp_path / "s.h5", coords, {"features": features, "probs": np.eye(3)}, attrs)
    with h5py.File(path) as f:  # what CLAM/TRIDENT readers see
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (3, 2)
        assert f["features"].dtype == np.float32 and f["features"].shape == (3, 5)
        assert "target_mpp" not in f.attrs
    back = read_patch_file(path)
    np.testing.assert_array_equal(back.coords, coords)
    np.testing.assert_array_equal(back.features, features.astype(np.float32))
    np.testing.assert_array_equal(back.arrays["probs"], np.eye(3))
    assert back.attrs == {k: v for k, v in attrs.items() if v is not None}
    assert isinstance(back.attrs["name"], str) and isinstance(back.attrs["patch_size"], int)
    assert len(read_patch_file(path, arrays=()).arrays) == 0


def test_empty_slide_gives_empty_arrays(tmp_path):
    path = write_patch_file(tmp_path / "empty.h5", np.zeros((0, 2)), {"features": np.zeros((0, 1024))})
    back = read_patch_file(path)
    assert back.coords.shape == (0, 2) and back.features.shape == (0, 1024) and len(back) == 0


def test_rows_must_match_coordinates(tmp_path):
    with pytest.raises(ValueError, match="'features' has 2 rows but there are 3 coordinates"):
        write_patch_file(tmp_path / "s.h5", np.zeros((3, 2)), {"features": np.zeros((2, 4))})
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = write_patch_file(tmp_path / "s.h5", np.ones((1, 2)))
    with pytest.raises(TypeError):
        write_patch_file(path, np.zeros((2, 2)), attrs={"bad": {"a dict": "h5 cannot store"}})
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]
    np.testing.assert_array_equal(read_patch_file(path).coords, np.ones((1, 2)))


def test_read_errors_name_the_file_and_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        read_patch_file(tmp_path / "nowhere.h5")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an h5 file at all")
    with pytest.raises(ValueError, match="corrupt.h5 is not a readable h5 file"):
        read_patch_file(corrupt)
    coords_only = write_patch_file(tmp_path / "coords.h5", np.zeros((2, 2)))
    with pytest.raises(KeyError, match="no 'features' dataset"):
        _ = read_patch_file(coords_only).features
    with pytest.raises(ValueError, match="no 'attention' dataset"):
        read_patch_file(coords_only, arrays=("attention",))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["feats"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="no 'coords' dataset .*feats"):
        read_patch_file(tmp_path / "other.h5")
