"""musk.wsi.h5: the patch file contract (coords, features, attributes), atomic writes, clear errors."""

import h5py
import numpy as np
import pytest

from musk.wsi.h5 import read_patch_file, write_patch_file
from musk.wsi.patching import PatchGrid


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


def test_geometry_is_on_coords_and_encoder_facts_on_features_as_trident_reads_them(tmp_path):
    geometry = {"name": "s", "patch_size": 384, "patch_size_level0": 768, "target_magnification": 20.0,
                "level0_magnification": 40.0, "level0_mpp": 0.25, "level0_width": 4000, "level0_height": 3000,
                "overlap": 0, "min_tissue": 0.5}  # fmt: skip
    ours = {"patch_level": 1, "read_size": 384, "zeroshot_classes": '["tumor"]'}
    encoder = {"encoder": "musk", "weights_sha256": "ab12", "feature_kind": "cls", "precision": "fp32",
               "package_version": "0.1"}  # fmt: skip
    attrs = {**geometry, **ours, **encoder}
    path = write_patch_file(tmp_path / "s.h5", np.zeros((2, 2)), {"features": np.zeros((2, 4))}, attrs)
    with h5py.File(path) as f:
        assert dict(f.attrs) == attrs  # the root keeps every attribute
        assert dict(f["coords"].attrs) == geometry  # no patch_level: CLAM would read patch_size pixels there
        assert dict(f["features"].attrs) == encoder
    coords_only = write_patch_file(tmp_path / "c.h5", np.zeros((2, 2)), attrs=geometry)
    with h5py.File(coords_only) as f:
        assert dict(f["coords"].attrs) == geometry and "features" not in f


def test_files_with_root_attributes_only_still_read(tmp_path):
    attrs = {"name": "old", "patch_size": 256, "patch_size_level0": 512, "patch_level": 0, "read_size": 512,
             "target_magnification": 20.0, "overlap": 0, "min_tissue": 0.5, "feature_kind": "cls"}  # fmt: skip
    with h5py.File(tmp_path / "old.h5", "w") as f:  # as written before the dataset attributes
        f["coords"] = np.array([[0, 0], [512, 0]], dtype=np.int64)
        f["features"] = np.ones((2, 3), dtype=np.float32)
        f.attrs.update(attrs)
    old = read_patch_file(tmp_path / "old.h5")
    assert old.attrs == attrs and old.features.shape == (2, 3)
    grid = PatchGrid.from_attrs(old.coords, old.attrs)
    assert grid.patch_size_level0 == 512 and grid.level == 0 and grid.target_magnification == 20.0
