"""musk.load / musk.LoadedModel: one object with the model, tokenizer, transform, device, dtype and fingerprint."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import musk
from musk.models import WeightsUnavailableError
from weights_file import save_weights

TINY = "musk_tiny_patch16_64"


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(3)
    return musk.create_model(TINY)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, reference_model) -> Path:
    return save_weights(reference_model, tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def loaded(weights) -> musk.LoadedModel:
    return musk.load(TINY, weights=weights, device="cpu")


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> list[Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("patches")
    paths = []
    for k, size in enumerate([(90, 70), (64, 64), (120, 150)]):
        paths.append(folder / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_local_weights_fingerprint_is_the_files_sha256(loaded, weights):
    assert loaded.fingerprint == {"path": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert loaded.weights_sha256 == loaded.fingerprint["sha256"]
    assert loaded.architecture == TINY and loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert not loaded.model.training


def test_a_folder_and_a_file_name_the_same_weights(weights, loaded, tmp_path):
    shutil.copy(weights, tmp_path / "model.safetensors")
    folder_loaded = musk.load(TINY, weights=tmp_path, device="cpu")
    assert folder_loaded.fingerprint == {"path": str(tmp_path / "model.safetensors"), "sha256": loaded.weights_sha256}


def test_random_weights_are_seeded_and_fingerprinted_by_their_parameters():
    a, b, c = (musk.load(TINY, weights=w, seed=s) for w, s in (("none", 1), (None, 1), ("none", 2)))
    assert a.fingerprint["random"] is True and a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    saved = {k: v.float().numpy().tobytes() for k, v in sorted(a.model.state_dict().items())}
    digest = hashlib.sha256()
    for key, value in saved.items():
        digest.update(key.encode())
        digest.update(value)
    assert a.weights_sha256 == digest.hexdigest()


def test_hub_fingerprint_carries_repo_revision_and_file(monkeypatch, tmp_path, weights):
    revision = "0123456789abcdef0123456789abcdef01234567"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    repo = tmp_path / "hub" / "models--someone--musk-tiny"
    (repo / "blobs").mkdir(parents=True)
    shutil.copy(weights, repo / "blobs" / sha)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "model.safetensors").symlink_to(repo / "blobs" / sha)

    def cached(repo_id, filename, **kwargs):
        assert (repo_id, filename) == ("someone/musk-tiny", "model.safetensors")
        return str(repo / "snapshots" / revision / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", cached)
    loaded = musk.load(TINY, weights="hf_hub:someone/musk-tiny")
    assert loaded.fingerprint == {
        "path": str(repo / "snapshots" / revision / "model.safetensors"),
        "repo_id": "someone/musk-tiny",
        "revision": revision,
        "filename": "model.safetensors",
        "sha256": sha,
    }


def test_published_weights_come_from_the_registered_architecture(monkeypatch):
    asked = []

    def gated(repo_id, filename, *args, **kwargs):
        asked.append(repo_id)
        raise WeightsUnavailableError("gated")

    monkeypatch.setattr("musk.models.weights.download_from_hub", gated)
    with pytest.raises(WeightsUnavailableError):
        musk.load("musk_large_patch16_384")
    assert asked == ["xiangjx/musk"]
    with pytest.raises(WeightsUnavailableError, match="no published weights.*--weights none"):
        musk.load(TINY)  # the tiny architecture has none


def test_bad_options_fail_before_any_weights_are_read(monkeypatch, tmp_path, weights):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr("musk.loaded.create_model", refuse)
    with pytest.raises(ValueError, match="unknown MUSK architecture 'musk_huge'"):
        musk.load("musk_huge", weights=weights)
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        musk.load(TINY, weights=weights, precision="fp8")
    with pytest.raises(FileNotFoundError, match=r"tokenizer .*nowhere\.spm does not exist.*--tokenizer"):
        musk.load(TINY, weights=weights, tokenizer=tmp_path / "nowhere.spm")
    with pytest.raises(ValueError, match="unknown device"):
        musk.load(TINY, weights=weights, device="tpu")


def test_images_in_memory_and_on_disk_give_the_same_rows(loaded, reference_model, patches):
    pil = [Image.open(p).convert("RGB") for p in patches]
    arrays = [np.asarray(im) for im in pil]
    tensors = [loaded.transform(im) for im in pil]
    from_files = loaded.embed_images(patches)
    for items in (pil, arrays, tensors, [pil[0], str(patches[1]), tensors[2]]):
        result = loaded.embed_images(items)
        np.testing.assert_allclose(result.vectors, from_files.vectors, atol=1e-6)
    assert from_files.files == [str(p) for p in patches]
    assert loaded.embed_images(pil).files == ["<image 0>", "<image 1>", "<image 2>"]
    with torch.inference_mode():
        want = reference_model.encode_image(torch.stack(tensors))  # projected and normalised by default
        raw = reference_model.encode_image(torch.stack(tensors), with_head=False, normalize=False, ms_aug=True)
    np.testing.assert_allclose(from_files.vectors, want.numpy(), atol=1e-5)
    ms = loaded.embed_images(patches, with_head=False, normalize=False, ms_aug=True)
    np.testing.assert_allclose(ms.vectors, raw.numpy(), atol=1e-5)


def test_unreadable_files_are_listed_and_bad_in_memory_inputs_refused(loaded, patches, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    result = loaded.embed_images([patches[0], tmp_path / "broken.png", patches[1]])
    assert result.files == [str(patches[0]), str(patches[1])] and list(result.failed) == [str(tmp_path / "broken.png")]
    with pytest.raises(ValueError, match=r"images\[0\]: an array must be uint8"):
        loaded.embed_images([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"images\[1\]: a preprocessed tensor must have the model's input size"):
        loaded.embed_images([patches[0], torch.zeros(3, 32, 32)])
    with pytest.raises(TypeError, match=r"images\[0\]: expected a path"):
        loaded.embed_images([42])
    with pytest.raises(TypeError, match="must be a list"):
        loaded.embed_images(str(patches[0]))


def test_texts_embed_as_the_model_does(tokenizer_file, weights, reference_model):
    loaded = musk.load(TINY, weights=weights, tokenizer=tokenizer_file)
    texts = ["lung adenocarcinoma", "benign tissue with a much longer description " * 40, "stroma"]
    ids, mask = musk.get_tokenizer(tokenizer_file)(texts)
    with torch.inference_mode():
        want = reference_model.encode_text(ids, mask).numpy()
    np.testing.assert_allclose(loaded.embed_texts(texts, batch_size=2), want, atol=1e-5)
    for bad, error in (([], ValueError), (["ok", "  "], ValueError), ("one text", TypeError), ([3], TypeError)):
        with pytest.raises(error):
            loaded.embed_texts(bad)


def test_tokenizer_beside_local_weights_is_found(tmp_path, weights, tokenizer_file):
    shutil.copy(weights, tmp_path / "model.safetensors")
    shutil.copy(tokenizer_file, tmp_path / "tokenizer.spm")
    loaded = musk.load(TINY, weights=tmp_path)
    assert loaded.tokenizer.model_file == tmp_path / "tokenizer.spm"


def test_classify_equals_zero_shot_classify(tokenizer_file, weights, reference_model, patches):
    loaded = musk.load(TINY, weights=weights, tokenizer=tokenizer_file)
    classes = ["tumour", "stroma", "necrosis"]
    result = loaded.classify(patches, classes, batch_size=2)
    images = torch.stack([loaded.transform(musk.load_image(p)) for p in patches])
    want = musk.zero_shot_classify(reference_model, musk.get_tokenizer(tokenizer_file), images, classes)
    np.testing.assert_allclose(result.probabilities, want.numpy(), atol=1e-5)
    assert result.classes == classes and result.predictions == [classes[i] for i in want.argmax(1).tolist()]


def test_stored_features_project_to_what_the_head_gives(loaded, reference_model, patches):
    tensors = torch.stack([loaded.transform(musk.load_image(p)) for p in patches])
    with torch.inference_mode():
        cls = reference_model.encode_image(tensors, with_head=False, normalize=False)
        ms = reference_model.encode_image(tensors, with_head=False, normalize=False, ms_aug=True)
        proj = reference_model.encode_image(tensors, with_head=True, normalize=True)
    np.testing.assert_allclose(loaded.project_image_features(cls.numpy()), proj.numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded.project_image_features(ms), proj.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, 64\) cls or \(N, 128\) ms"):
        loaded.project_image_features(np.zeros((2, 100), dtype=np.float32))
