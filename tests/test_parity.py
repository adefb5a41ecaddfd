"""Parity with the upstream implementation: every array of goldens_seed0.npz, tiny and large.

Weights come from ``make_checkpoint.random_state_dict(config, 0)``; tolerance as stated in
``shared/reference/README.md``: ``max|ours - ref| <= 1e-4 * max(1, max|ref|)`` in fp32 on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import musk  # noqa: F401  (registers the architectures)
from musk.models import load_weights

ARCH = {"tiny": "musk_tiny_patch16_64", "large": "musk_large_patch16_384"}
INPUTS = {"text_ids", "text_padding_mask", "tiny/images", "large/images", "large/real_image_preprocessed"}


def assert_close(ours: torch.Tensor, ref: np.ndarray, key: str) -> None:
    ours = ours.detach().float().numpy()
    assert ours.shape == ref.shape, f"{key}: shape {ours.shape} vs reference {ref.shape}"
    err = float(np.abs(ours - ref).max())
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert err <= tol, f"{key}: max abs error {err:.3g} exceeds {tol:.3g}"


def seeded_model(config: str, arrays: dict):
    """The architecture with the given numpy state dict assigned, without a random init first."""
    with torch.device("meta"):
        model = timm.create_model(ARCH[config])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True, assign=True)
    return model.eval()


def run_case(model, case: dict, arrays, device: str = "cpu") -> torch.Tensor:
    flags = dict(return_global=case["return_global"], with_head=case["with_head"], out_norm=case["out_norm"])
    with torch.inference_mode():
        if case["input"] == "image":
            images = torch.from_numpy(arrays[f"{case['config']}/images"]).to(device)
            return model(image=images, ms_aug=case["ms_aug"], **flags)[0]
        n = case["n_sentences"]
        ids = torch.from_numpy(arrays["text_ids"][:n]).to(device)
        mask = torch.from_numpy(arrays["text_padding_mask"][:n]).to(device)
        return model(text_description=ids, padding_mask=mask, **flags)[1]


def cases_of(manifest, config: str, inputs=("image", "text")) -> list[dict]:
    return [c for c in manifest["cases"] if c["config"] == config and c["input"] in inputs and "checkpoint" not in c]


def test_goldens_are_all_covered(goldens):
    """Every output array in the reference file is checked by one of the tests below."""
    arrays, manifest = goldens
    covered = {c["key"] for c in manifest["cases"]} | {"tiny/interp/pos_A"}
    assert set(arrays.files) - INPUTS == covered


def test_tiny_every_mode_and_flag(goldens, make_checkpoint):
    arrays, manifest = goldens
    model = seeded_model("tiny", make_checkpoint.random_state_dict("tiny", 0))
    cases = cases_of(manifest, "tiny")
    assert len(cases) == 9
    for case in cases:
        assert_close(run_case(model, case, arrays), arrays[case["key"]], case["key"])


def test_tiny_joint_image_then_text(goldens, make_checkpoint):
    arrays, _ = goldens
    model = seeded_model("tiny", make_checkpoint.random_state_dict("tiny", 0))
    images = torch.from_numpy(arrays["tiny/images"])
    ids = torch.from_numpy(arrays["text_ids"][:2])
    mask = torch.from_numpy(arrays["text_padding_mask"][:2])
    with torch.inference_mode():
        out = model.forward_joint(images, ids, mask)
    assert_close(out, arrays["tiny/joint/encoder_out"], "tiny/joint/encoder_out")


def test_tiny_position_interpolation_from_32px(goldens, make_checkpoint, tmp_path):
    """A 32 px checkpoint (2x2 grid) loaded through a file into the 64 px model (4x4 grid)."""
    from safetensors.numpy import save_file

    arrays, manifest = goldens
    path = tmp_path / "tiny_img32.safetensors"
    save_file(make_checkpoint.random_state_dict("tiny_img32", 0), str(path))
    model = timm.create_model(ARCH["tiny"])
    load_weights(model, path)
    model.eval()
    assert_close(model.beit3.encoder.embed_positions.A.weight, arrays["tiny/interp/pos_A"], "tiny/interp/pos_A")
    (case,) = [c for c in manifest["cases"] if c.get("checkpoint") == "tiny_img32 loaded into tiny"]
    assert_close(run_case(model, case, arrays), arrays[case["key"]], case["key"])


@pytest.fixture(scope="module")
def large_model(large_random_state):
    model = seeded_model("large", large_random_state)
    assert sum(p.numel() for p in model.parameters()) == 675_188_737
    assert len(model.state_dict()) == 974
    return model


@pytest.mark.large
@pytest.mark.parametrize(
    "key",
    [
        "large/image/global=1,head=1,norm=1,ms_aug=0",
        "large/image/global=1,head=0,norm=0,ms_aug=0",
        "large/image/global=1,head=0,norm=0,ms_aug=1",
        "large/image/global=1,head=1,norm=1,ms_aug=1",
        "large/text/global=1,head=1,norm=1",
        "large/text/global=1,head=0,norm=0",
        "large/text/global=0,head=0,norm=0",
    ],
)
def test_large(goldens, large_model, key):
    arrays, manifest = goldens
    (case,) = [c for c in manifest["cases"] if c["key"] == key]
    assert_close(run_case(large_model, case, arrays), arrays[key], key)
