"""musk.transforms: preprocessing derived from pretrained_cfg, checked against upstream's tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from musk.images import load_image
from musk.models.musk import MUSK
from musk.transforms import get_transform, resolve_data_config

TINY = dict(embed_dim=64, depth=2, num_heads=4, ffn_dim=256, patch_size=16)


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def expected(image: Image.Image, resized: tuple[int, int], crop: int, mean, std, resample) -> np.ndarray:
    """Resize to ``resized`` (w, h), centre crop ``crop`` (even margins), normalise: written out by hand."""
    image = image.resize(resized, resample)
    left, top = (resized[0] - crop) // 2, (resized[1] - crop) // 2
    pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    return ((pixels - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)


def test_musk_transform_reproduces_upstream_preprocessing(demo_image):
    golden = np.load(shared_path("reference", "goldens_seed0.npz"))["large/real_image_preprocessed"]
    model = MUSK(**TINY, img_size=384)  # the published input size; the transform reads it from the model
    ours = get_transform(model)(load_image(demo_image))
    assert ours.shape == (3, 384, 384) and ours.dtype == torch.float32
    diff = float(np.abs(ours.numpy() - golden.reshape(ours.shape)).max())
    print(f"max |ours - upstream golden| = {diff:.3g}")
    assert diff <= 1e-6


def test_model_and_its_cfg_give_the_same_transform():
    model = MUSK(**TINY, img_size=64)
    image = random_image(150, 100)
    from_model, from_cfg = get_transform(model)(image), get_transform(model.pretrained_cfg)(image)
    assert from_model.shape == (3, 64, 64)
    assert torch.equal(from_model, from_cfg)
    # MUSK: shorter side to 64 bicubic, centre crop 64, mean = std = 0.5.
    want = expected(image, (96, 64), 64, (0.5,) * 3, (0.5,) * 3, Image.Resampling.BICUBIC)
    np.testing.assert_allclose(from_model.numpy(), want, atol=1e-6)


@pytest.mark.parametrize("size", [(300, 200), (200, 300)])
def test_non_square_image_keeps_aspect_ratio_and_crops_the_centre(size):
    cfg = MUSK(**TINY, img_size=64).pretrained_cfg
    image = random_image(*size)
    out = get_transform(cfg)(image).numpy()
    resized = (96, 64) if size[0] > size[1] else (64, 96)
    want = expected(image, resized, 64, (0.5,) * 3, (0.5,) * 3, Image.Resampling.BICUBIC)
    np.testing.assert_allclose(out, want, atol=1e-6)
    # A squash (resize both sides to 64) would lose the aspect ratio and give a different tensor.
    squashed = expected(image, (64, 64), 64, (0.5,) * 3, (0.5,) * 3, Image.Resampling.BICUBIC)
    assert np.abs(out - squashed).max() > 0.1


def test_crop_pct_interpolation_mean_and_std_come_from_the_cfg():
    cfg = {
        "input_size": (3, 56, 56),
        "interpolation": "bilinear",
        "crop_pct": 0.875,  # resize the shorter side to floor(56 / 0.875) = 64, then crop 56
        "crop_mode": "center",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    image = random_image(120, 96)
    out = get_transform(cfg)(image).numpy()
    assert out.shape == (3, 56, 56)
    want = expected(image, (80, 64), 56, cfg["mean"], cfg["std"], Image.Resampling.BILINEAR)
    np.testing.assert_allclose(out, want, atol=1e-5)
    bicubic = get_transform({**cfg, "interpolation": "bicubic"})(image).numpy()
    assert np.abs(out - bicubic).max() > 0.01


def test_squash_mode_resizes_both_sides():
    cfg = {**MUSK(**TINY, img_size=32).pretrained_cfg, "crop_mode": "squash", "crop_pct": 0.5}
    image = random_image(90, 40)
    out = get_transform(cfg)(image).numpy()
    want = expected(image, (64, 64), 32, (0.5,) * 3, (0.5,) * 3, Image.Resampling.BICUBIC)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_resolve_data_config_normalises_types():
    resolved = resolve_data_config({**MUSK(**TINY, img_size=64).pretrained_cfg, "input_size": [3, 64, 64]})
    assert resolved == {
        "input_size": (3, 64, 64),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"mean": None}, KeyError, "mean"),
        ({"crop_mode": "border"}, ValueError, "crop_mode"),
        ({"std": (0.5, 0.5)}, ValueError, "one value per channel"),
        ({"interpolation": "fancy"}, ValueError, "interpolation"),
        ({"input_size": (3, 64, 32)}, ValueError, "square"),
        ({"crop_pct": 0}, ValueError, "crop_pct"),
    ],
)
def test_bad_cfg_is_reported(change, error, match):
    cfg = {**MUSK(**TINY, img_size=64).pretrained_cfg, **change}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(error, match=match):
        get_transform(cfg)


def test_object_without_cfg_is_rejected():
    with pytest.raises(TypeError, match="pretrained_cfg"):
        get_transform(torch.nn.Linear(2, 2))
