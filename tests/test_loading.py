"""Checkpoint loading: local formats, strictness, position interpolation, and the hub (mocked or cached)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import save_file

import musk
from musk.files import file_sha256
from musk.models import CheckpointMismatchError, WeightsUnavailableError, load_weights

TINY = "musk_tiny_patch16_64"


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(3)
    return timm.create_model(TINY).eval()


@pytest.fixture(scope="module")
def state(source_model):
    return {k: v.clone() for k, v in source_model.state_dict().items()}


def same_weights(model, state) -> bool:
    return all(torch.equal(model.state_dict()[k].float(), v.float()) for k, v in state.items())


def hub_error(cls, message="simulated"):
    """A huggingface_hub exception without an HTTP response (their constructors differ across versions)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


@pytest.mark.parametrize(
    "name, wrap",
    [
        ("w.safetensors", None),
        ("w.pth", None),
        ("w.pt", "model"),
        ("w.bin", "module"),
        ("w.pth", "prefixed"),
        ("w.pth", "with_args"),
    ],
)
def test_local_formats_load(tmp_path, state, name, wrap):
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        payload = state
        if wrap in ("model", "module"):
            payload = {wrap: state, "epoch": 3}
        elif wrap == "prefixed":
            payload = {f"module.{k}": v for k, v in state.items()}
        elif wrap == "with_args":
            payload = {"model": state, "args": argparse.Namespace(lr=0.1)}
        torch.save(payload, path)
    model = timm.create_model(TINY)
    assert not same_weights(model, state)
    assert load_weights(model, path) == path
    assert same_weights(model, state)


def test_directory_and_create_model_from_file(tmp_path, state, source_model):
    save_file(state, str(tmp_path / "model.safetensors"))
    model = musk.create_model(TINY, pretrained=tmp_path, dtype=torch.float64)
    assert not any(p.is_meta for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert same_weights(model, state)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(x.double()).float(), source_model.encode_image(x))


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, state):
    broken = dict(state)
    del broken["vision_head.weight"]
    broken["extra.bias"] = torch.zeros(3)
    broken["beit3.text_embed.weight"] = torch.zeros(10, 64)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(timm.create_model(TINY), path)
    message = str(info.value)
    assert "missing 1: vision_head.weight" in message
    assert "unexpected 1: extra.bias" in message
    assert "beit3.text_embed.weight (10, 64) vs model (64010, 64)" in message


def test_checkpoint_of_another_model_lists_its_keys(tmp_path):
    other = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    path = tmp_path / "vit.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"missing \d+: .*unexpected \d+: .*blocks\.0\."):
        load_weights(timm.create_model(TINY), path)


def test_unreadable_and_absent_files(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointMismatchError, match="cannot read checkpoint .*corrupt.safetensors"):
        load_weights(timm.create_model(TINY), corrupt)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_weights(timm.create_model(TINY), tmp_path / "nope.pth")
    with pytest.raises(WeightsUnavailableError, match="no weights file in directory"):
        load_weights(timm.create_model(TINY), tmp_path)


def test_vision_positions_interpolated_from_another_grid(tmp_path, state):
    """A 128 px checkpoint (8x8 grid) loads into the 64 px model (4x4): first 3 rows kept, grid resized."""
    big = timm.create_model(TINY, img_size=128)
    sd = dict(state)
    sd["beit3.encoder.embed_positions.A.weight"] = big.state_dict()["beit3.encoder.embed_positions.A.weight"]
    path = tmp_path / "big.safetensors"
    save_file(sd, str(path))
    model = timm.create_model(TINY)
    load_weights(model, path)
    table = model.beit3.encoder.embed_positions.A.weight.detach()
    source = sd["beit3.encoder.embed_positions.A.weight"]
    assert table.shape == (19, 64)
    torch.testing.assert_close(table[:3], source[:3])
    grid = source[3:].reshape(8, 8, 64)
    # a smooth downscale of the grid: each output is close to the mean of its 2x2 source block
    block_means = grid.reshape(4, 2, 4, 2, 64).mean(dim=(1, 3)).reshape(16, 64)
    assert torch.nn.functional.cosine_similarity(table[3:], block_means).mean() > 0.5


def test_non_square_position_table_is_refused(tmp_path, state):
    sd = dict(state)
    sd["beit3.encoder.embed_positions.A.weight"] = torch.zeros(10, 64)
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointMismatchError, match="square grids"):
        load_weights(timm.create_model(TINY), path)


# ---- the hub, mocked ----------------------------------------------------------------------------------


def test_hub_download_goes_through_the_standard_cache(monkeypatch, tmp_path, state):
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(path)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    monkeypatch.setattr("musk.models.weights._hub_reachable", True)  # an online hub
    model = musk.create_model(TINY, pretrained="hf_hub:someone/musk-tiny", cache_dir=tmp_path / "cache")
    assert same_weights(model, state)
    assert calls == [("someone/musk-tiny", "model.safetensors", {"cache_dir": tmp_path / "cache"})]


def test_pretrained_true_uses_the_registered_hub_id(monkeypatch):
    seen = []

    def fake_download(repo_id, filename, **kwargs):
        seen.append(repo_id)
        raise hub_error(__import__("huggingface_hub").utils.GatedRepoError)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    with pytest.raises(WeightsUnavailableError):
        timm.create_model("musk_large_patch16_384", pretrained=True, depth=1, vocab_size=10)
    assert seen == ["xiangjx/musk"]
    with pytest.raises(WeightsUnavailableError, match="no published weights"):
        musk.create_model(TINY, pretrained=True)


@pytest.mark.parametrize(
    "error, phrase",
    [
        ("GatedRepoError", "no access to the gated repository xiangjx/musk"),
        ("RepositoryNotFoundError", "not found, or it is gated"),
        ("EntryNotFoundError", "has no file model.safetensors"),
        ("LocalEntryNotFoundError", "hub is unreachable (or offline mode is on)"),
    ],
)
def test_hub_failures_say_how_to_get_access(monkeypatch, error, phrase):
    import huggingface_hub

    cls = getattr(huggingface_hub.utils, error)

    def fake_download(repo_id, filename, **kwargs):
        raise hub_error(cls)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    with pytest.raises(WeightsUnavailableError) as info:
        musk.create_model(TINY, pretrained="hf_hub:xiangjx/musk")
    message = str(info.value)
    assert phrase in message
    assert "request access at https://huggingface.co/xiangjx/musk" in message
    assert "HF_TOKEN" in message and "--weights PATH" in message


# ---- the hub cache, for real, offline ----------------------------------------------------------------

TRIDENT_STYLE = textwrap.dedent(
    """
    import sys, torch
    from musk import utils, modeling
    from timm.models import create_model
    model = create_model("musk_tiny_patch16_64")
    utils.load_model_and_may_interpolate("hf_hub:xiangjx/musk", model, 'model|module', '')
    model.eval()
    x = torch.load(sys.argv[1])
    with torch.inference_mode():
        out = model(image=x, with_head=False, out_norm=False, ms_aug=False, return_global=True)[0]
    torch.save(out, sys.argv[2])
    """
)


def fake_hub_cache(root, repo_id, filename, payload: bytes):
    """The huggingface_hub cache layout: refs/main -> snapshot folder, file linked to a sha256-named blob."""
    import hashlib

    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    sha = hashlib.sha256(payload).hexdigest()
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / sha).write_bytes(payload)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    os.symlink(f"../../blobs/{sha}", snapshot / filename)
    return snapshot / filename, sha


def run_offline(script, cache, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True)


def test_trident_style_loading_from_the_hub_cache_offline(tmp_path, state, source_model):
    weights = tmp_path / "w.safetensors"
    save_file(state, str(weights))
    cache = tmp_path / "hf" / "hub"
    cached, sha = fake_hub_cache(cache, "xiangjx/musk", "model.safetensors", weights.read_bytes())
    assert file_sha256(cached) == sha  # the blob name is the hash: read for free
    x = torch.randn(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    proc = run_offline(TRIDENT_STYLE, cache, tmp_path / "x.pt", tmp_path / "out.pt")
    assert proc.returncode == 0, proc.stderr
    with torch.inference_mode():
        expected = source_model(image=x, with_head=False, out_norm=False, return_global=True)[0]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected)


def test_offline_without_the_file_gives_the_clear_error(tmp_path):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    proc = run_offline(TRIDENT_STYLE, cache, tmp_path / "x.pt", tmp_path / "out.pt")
    assert proc.returncode != 0
    assert "WeightsUnavailableError" in proc.stderr
    assert "offline mode is on" in proc.stderr and "request access at" in proc.stderr
