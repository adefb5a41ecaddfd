"""The model, the CLI and a pretraining stage on a CUDA GPU, in fp32, fp16 and bf16.

Skipped on machines without CUDA (the development machine has none). On a GPU machine:
``.venv/bin/python -m pytest tests/test_cuda.py -q`` runs these checks in a few minutes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import musk
from musk.cli import main
from pretrain_synthetic import make_corpus, make_images
from test_parity import assert_close, cases_of, run_case, seeded_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

TINY = "musk_tiny_patch16_64"


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """Parity is stated for full fp32: no TF32 in matmuls or the patch convolution."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.fixture(scope="module")
def large_cuda(large_random_state):
    return seeded_model("large", large_random_state).cuda()


@pytest.mark.large
def test_large_goldens_in_fp32_on_cuda(goldens, large_cuda):
    arrays, manifest = goldens
    cases = cases_of(manifest, "large")
    assert cases
    for case in cases:
        assert_close(run_case(large_cuda, case, arrays, "cuda").cpu(), arrays[case["key"]], case["key"])


@pytest.mark.large
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_half_precisions_track_fp32_on_cuda(large_cuda, large_random_state, dtype):
    half = seeded_model("large", large_random_state).to("cuda", dtype)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 384, 384, generator=g).cuda()
    ids = torch.randint(4, 60000, (2, 20), generator=g).cuda()
    mask = torch.zeros_like(ids)
    mask[1, 12:] = 1
    with torch.inference_mode():
        for ms_aug in (False, True):
            ref = large_cuda.encode_image(images, ms_aug=ms_aug)
            out = half.encode_image(images.to(dtype), ms_aug=ms_aug)
            assert out.dtype == dtype and out.device.type == "cuda"
            assert F.cosine_similarity(out.float(), ref).min() > 0.995, ms_aug
        ref = large_cuda.encode_text(ids, mask)
        out = half.encode_text(ids, mask)
        assert F.cosine_similarity(out.float(), ref).min() > 0.995
        joint = half.forward_joint(images.to(dtype), ids, mask)
        assert torch.isfinite(joint).all()


def test_create_model_places_every_tensor_on_the_gpu():
    model = musk.create_model(TINY, device="cuda", dtype=torch.float16)
    assert {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()} == {"cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_gradient_checkpointing_under_bf16_autocast_gives_the_same_gradients():
    torch.manual_seed(0)
    model = musk.create_model(TINY, device="cuda").train()
    images = torch.randn(4, 3, 64, 64, device="cuda")
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.encode_image(images).float().square().sum()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_embed_command_on_cuda(demo_image, make_checkpoint, tmp_path, precision):
    from safetensors.numpy import save_file

    weights = tmp_path / "tiny.safetensors"
    save_file(make_checkpoint.random_state_dict("tiny", 0), str(weights))
    embeddings = {}
    for device, mode in (("cuda", precision), ("cpu", "fp32")):
        out = tmp_path / f"{device}.npz"
        assert main(["embed", str(demo_image), "--model", TINY, "--weights", str(weights), "-o", str(out),
                     "--device", device, "--precision", mode]) == 0  # fmt: skip
        embeddings[device] = np.load(out)["embeddings"].astype(np.float32)
    a, b = embeddings["cuda"], embeddings["cpu"]
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pretraining_stages_on_cuda(tmp_path, tokenizer_file, precision):
    """Stage 0 then stage 1 on the GPU under autocast (fp16 with accelerate's loss scaler): finite losses,
    fp32 weights."""
    from musk.pretrain import read_log
    from musk.pretrain.export import musk_state_from_checkpoint

    images = make_images(tmp_path / "images", 32, seed=0)
    corpus = make_corpus(tmp_path / "corpus.txt", 60, seed=0)
    common = ["--recipe", "tiny", "--device", "cuda", "--precision", precision, "--steps", "4", "--batch_size", "8",
              "--set", "tensorboard=false"]  # fmt: skip
    vqkd = tmp_path / "vqkd"
    assert main(["pretrain", "tokenizer", "--images", str(images), "-o", str(vqkd), *common]) == 0
    stage1 = tmp_path / "stage1"
    assert main(["pretrain", "mim", "--images", str(images), "--texts", str(corpus), "-o", str(stage1), *common,
                 "--set", f"tokenizer={tokenizer_file}", "--set", f"visual_tokenizer={vqkd}"]) == 0  # fmt: skip
    rows = read_log(stage1)
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) for r in rows)
    assert {v.dtype for v in musk_state_from_checkpoint(stage1).values()} == {torch.float32}
