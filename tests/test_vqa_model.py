"""The VQA model: the joint forward it runs matches the reference, the head reads the first joint token,
question padding changes nothing, layer-wise lr decay and the schedule."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

import musk
from conftest import shared_path
from musk.training.optim import build_optimizer, layer_index, param_groups
from musk.training.schedule import warmup_cosine
from musk.vqa.model import MuskVQA
from test_parity import assert_close, seeded_model


@pytest.fixture(scope="module")
def goldens():
    return np.load(shared_path("reference", "goldens_seed0.npz"))


def test_joint_forward_matches_the_reference_encoder_output(goldens, make_checkpoint):
    vqa = MuskVQA(seeded_model("tiny", make_checkpoint.random_state_dict("tiny", 0)), num_answers=5).eval()
    images = torch.from_numpy(goldens["tiny/images"])
    ids = torch.from_numpy(goldens["text_ids"][:2])
    mask = torch.from_numpy(goldens["text_padding_mask"][:2])
    with torch.inference_mode():
        joint = vqa.joint_tokens(images, ids, mask)
        logits = vqa(images, ids, mask)
        assert_close(joint, goldens["tiny/joint/encoder_out"], "tiny/joint/encoder_out")
        # the answer logits are the classifier over the pooled first joint token, nothing else
        torch.testing.assert_close(logits, vqa.classifier(vqa.pooler(joint[:, 0])))
    assert logits.shape == (2, 5)


def test_head_shape_and_frozen_unused_parameters():
    vqa = MuskVQA(musk.create_model("musk_tiny_patch16_64"), num_answers=7)
    assert [type(m).__name__ for m in vqa.pooler] == ["LayerNorm", "Linear", "Tanh"]
    assert [type(m).__name__ for m in vqa.classifier] == ["Linear", "LayerNorm", "GELU", "Linear"]
    assert vqa.classifier[-1].out_features == 7 and vqa.classifier[0].out_features == 128
    frozen = {n for n, p in vqa.named_parameters() if not p.requires_grad}
    assert frozen == {
        "backbone.vision_head.weight",
        "backbone.language_head.weight",
        "backbone.logit_scale",
        "backbone.beit3.vision_embed.mask_token",
    }
    # every trainable parameter gets a gradient (what DistributedDataParallel needs)
    ids, mask = torch.tensor([[0, 100, 200, 2, 1]]), torch.tensor([[0, 0, 0, 0, 1]])
    vqa(torch.randn(1, 3, 64, 64), ids, mask).sum().backward()
    assert all(p.grad is not None for p in vqa.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="num_answers"):
        MuskVQA(musk.create_model("musk_tiny_patch16_64"), num_answers=0)


def test_question_padding_does_not_change_the_answer():
    vqa = MuskVQA(musk.create_model("musk_tiny_patch16_64"), num_answers=4).eval()
    tokenizer_path = shared_path("assets", "tokenizer.spm")
    tokenizer = musk.get_tokenizer(tokenizer_path)
    images = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        short = vqa(images, *tokenizer(["is there necrosis?"]))
        padded = vqa(images, *tokenizer(["is there necrosis?"], max_length=40, padding="max_length"))
        other = vqa(images, *tokenizer(["what stain is used?"]))
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(short, other, atol=1e-4)  # the question is read


def test_layer_wise_lr_decay_groups():
    vqa = MuskVQA(musk.create_model("musk_tiny_patch16_64"), num_answers=3)  # depth 2
    assert layer_index("backbone.beit3.text_embed.weight", 2, "backbone.") == 0
    assert layer_index("backbone.beit3.encoder.embed_positions.A.weight", 2, "backbone.") == 0
    assert layer_index("backbone.beit3.encoder.layers.1.ffn.A.fc1.weight", 2, "backbone.") == 2
    assert layer_index("backbone.beit3.encoder.layer_norm.A.weight", 2, "backbone.") == 3
    assert layer_index("classifier.0.weight", 2, "backbone.") == 3
    groups = param_groups(vqa, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lrs = {g["layer"]: g["lr"] for g in groups}
    assert lrs == pytest.approx({0: 1e-3 * 0.125, 1: 1e-3 * 0.25, 2: 1e-3 * 0.5, 3: 1e-3})
    for g in groups:
        no_decay = any(
            p.ndim <= 1 or "embed_positions" in n or "cls_token" in n
            for n, p in zip(g["names"], g["params"], strict=True)
        )
        assert g["weight_decay"] == (0.0 if no_decay else 0.05)
    trainable = sum(p.numel() for p in vqa.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable
    opt = build_optimizer(vqa, 1e-3, 0.05, 0.5)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["initial_lr"] == opt.param_groups[0]["lr"]
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(vqa, 1e-3, 0.05, 1.5)


def test_warmup_then_cosine():
    factors = [warmup_cosine(s, 10, 110) for s in range(120)]
    assert factors[0] < factors[5] < factors[9] < 1.0  # warm-up rises
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5)  # half-way through the cosine
    assert factors[110] == pytest.approx(0.0, abs=1e-12) and factors[119] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_model_files_have_ordinary_permissions(tmp_path, tokenizer_file, umask):
    """Every file of a saved model, the weights too (safetensors writes its files 0o600), is 0o666 less the
    umask, like any other output: a lab's group can read the model."""
    from musk.vqa import AnswerVocab, load_vqa_model, save_vqa_model

    vqa = MuskVQA(musk.create_model("musk_tiny_patch16_64"), num_answers=2)
    vocab = AnswerVocab.build(["yes", "no"])
    previous = os.umask(umask)
    try:
        out = save_vqa_model(vqa, vocab, tmp_path / "model", tokenizer=musk.get_tokenizer(tokenizer_file),
                             max_question_length=16)  # fmt: skip
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == dict.fromkeys(["model.safetensors", "answers.json", "tokenizer.spm", "config.json"], 0o666 & ~umask)
    assert load_vqa_model(out).vocab.answers == vocab.answers
