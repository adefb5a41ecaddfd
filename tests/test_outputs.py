"""Writing results: atomic files, JSON records, file hashes and the provenance record."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

import musk
from musk.files import atomic_dir, atomic_path, file_sha256, write_json, write_safetensors
from musk.provenance import provenance
from weights_file import save_weights


class Boom(RuntimeError):
    pass


def test_atomic_path_failure_leaves_nothing_under_the_final_name(tmp_path):
    target = tmp_path / "out" / "features.npz"
    seen = []
    with pytest.raises(Boom), atomic_path(target) as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half written")
        raise Boom
    assert not target.exists()
    assert not seen[0].exists()
    assert list(target.parent.iterdir()) == []  # no leftover temporary file either


def test_atomic_path_writes_beside_the_target_and_renames_on_success(tmp_path):
    target = tmp_path / "deep" / "er" / "result.csv"  # parent folders are created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent  # same filesystem: the rename is atomic
        assert tmp != target and tmp.exists() and not target.exists()
        assert tmp.name.startswith(".") and tmp.suffix == ".csv"  # hidden while partial, same extension
        tmp.write_text("a,b\n")
    assert target.read_text() == "a,b\n"
    assert not tmp.exists()
    assert [p.name for p in target.parent.iterdir()] == ["result.csv"]


def test_atomic_path_replaces_an_existing_file_only_on_success(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("new but broken")
        raise Boom
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_atomic_path_names_do_not_collide(tmp_path):
    target = tmp_path / "x.txt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer block finishes last and wins
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)], ids=["umask022", "umask002"])
def test_atomic_outputs_get_ordinary_permissions(tmp_path, umask, mode):
    """A private temporary file (0o600) renamed into place would hide every output from the lab's group.
    safetensors' own save_file creates such a file."""
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "i": torch.tensor([1, 2])}
    old = os.umask(umask)
    try:
        write_json(tmp_path / "record.json", {"a": 1})
        write_safetensors(tensors, tmp_path / "w.safetensors", metadata={"format": "pt"})
    finally:
        os.umask(old)
    for name in ("record.json", "w.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json", "w.safetensors"]
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())


def test_atomic_dir_replaces_the_folder_whole_and_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
        (tmp / "b.txt").write_text("first")
        assert not target.exists()
    with pytest.raises(RuntimeError, match="killed"), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "first", "b.txt": "first"}
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("second")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "second"}  # b.txt went with the old one
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no partial or old folder left


def test_write_json_round_trips_and_overwrites(tmp_path):
    data = {"config": {"batch_size": 8, "images": ["a.png", "b.png"], "ms_aug": False}, "n": None, "x": 0.25}
    path = tmp_path / "sub" / "record.json"
    write_json(path, data)
    assert json.loads(path.read_text()) == data
    assert path.read_text().endswith("\n")
    write_json(path, {"path": Path("/data/w.safetensors")})  # non-JSON values are written as strings
    assert json.loads(path.read_text()) == {"path": "/data/w.safetensors"}


def test_write_json_failure_keeps_the_previous_record(tmp_path):
    path = tmp_path / "record.json"
    write_json(path, {"ok": True})
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        write_json(path, {"loop": loop})
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


@pytest.mark.parametrize("size", [0, 1, 3_000_001])
def test_file_sha256_matches_hashlib(tmp_path, size):
    payload = os.urandom(size)
    path = tmp_path / "weights.bin"
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(payload).hexdigest()


def test_file_sha256_hashes_a_blobs_folder_file_not_named_by_a_hash(tmp_path):
    (tmp_path / "blobs").mkdir()
    path = tmp_path / "blobs" / "model.safetensors"
    path.write_bytes(b"weights")
    assert file_sha256(path) == hashlib.sha256(b"weights").hexdigest()


def test_file_sha256_of_a_hub_cache_file_is_its_blob_name(tmp_path):
    """In the huggingface cache the snapshot entry links to a blob named by the content's sha256."""
    payload = b"\x01\x02" * 1000
    sha = hashlib.sha256(payload).hexdigest()
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / sha).write_bytes(payload)
    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    os.symlink(f"../../blobs/{sha}", snapshot / "model.safetensors")
    assert file_sha256(snapshot / "model.safetensors") == sha


def test_provenance_records_config_versions_and_weights(tmp_path):
    weights = tmp_path / "w.safetensors"
    save_weights(timm.create_model("musk_tiny_patch16_64"), weights)
    config = {"model": "musk_tiny_patch16_64", "batch_size": 4}
    record = provenance(config, weights)
    assert record["config"] == config
    assert record["versions"]["musk-pathology"] == musk.__version__
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["timm"] == timm.__version__
    assert record["weights"] == {"path": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert "T" in record["created"] and record["created"].endswith("+00:00")  # ISO 8601, UTC
    json.dumps(record)  # serialisable as it is
    assert "weights" not in provenance(config)
