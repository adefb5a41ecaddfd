"""Behaviour of the model API on the tiny architecture: modes, flags, errors, dtypes, threads, training."""

from __future__ import annotations

import threading

import pytest
import timm
import torch
import torch.nn.functional as F

import musk
from musk.models import MuskConfig

TINY = "musk_tiny_patch16_64"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return musk.create_model(TINY)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def text():
    ids = torch.tensor([[0, 100, 200, 300, 2], [0, 400, 2, 1, 1]])
    mask = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]])
    return ids, mask


def test_timm_registration_and_pretrained_cfg():
    large = timm.models.get_pretrained_cfg("musk_large_patch16_384").to_dict()
    assert large["hf_hub_id"] == "xiangjx/musk"
    assert large["input_size"] == (3, 384, 384)
    assert large["interpolation"] == "bicubic" and large["crop_pct"] == 1.0
    assert large["mean"] == large["std"] == (0.5, 0.5, 0.5)
    assert "musk_large_patch16_384" in timm.list_models("musk_*")
    model = timm.create_model(TINY)
    assert model.pretrained_cfg["input_size"] == (3, 64, 64)
    assert model.config == MuskConfig(embed_dim=64, depth=2, num_heads=4, ffn_dim=256, img_size=64)


def test_timm_kwargs_reach_the_config():
    model = timm.create_model(TINY, vocab_size=1000, drop_path_rate=0.2)
    assert model.beit3.text_embed.num_embeddings == 1000
    assert model.beit3.encoder.layers[1].drop_path.drop_prob == pytest.approx(0.2)


def test_create_model_eval_mode_device_dtype():
    model = musk.create_model(TINY, dtype=torch.bfloat16)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_image_outputs_and_flags(model, images):
    with torch.inference_mode():
        tokens = model.forward_features(images)
        cls, _ = model(image=images, with_head=False, out_norm=False)
        projected = model.encode_image(images)
        all_projected, _ = model(image=images, return_global=False, with_head=True, out_norm=False)
        expected_projected = F.normalize(model.vision_head(tokens[:, 0]), dim=-1)
        expected_all = model.vision_head(tokens)
    assert tokens.shape == (3, 17, 64)
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(projected, expected_projected)
    torch.testing.assert_close(all_projected, expected_all)
    assert torch.allclose(projected.norm(dim=-1), torch.ones(3))


def test_text_outputs_and_padding(model, text):
    ids, mask = text
    with torch.inference_mode():
        emb = model.encode_text(ids, mask, with_head=False, normalize=False)
        alone = model.encode_text(ids[1:, :3], with_head=False, normalize=False)
        tokens = model.forward_text_features(ids, mask)
    # padding is invisible to the real tokens: the padded row equals the same text without padding
    torch.testing.assert_close(emb[1:], alone, atol=1e-5, rtol=1e-5)
    assert tokens.shape == (2, 5, 64)
    assert emb.shape == (2, 64)


def test_joint_mode_routes_experts_by_position(model, images, text):
    ids, mask = text
    with torch.inference_mode():
        joint = model.forward_joint(images[:2], ids, mask)
    assert joint.shape == (2, 17 + 5, 64)
    # text attends to the image: the text part differs from a text-only pass
    with torch.inference_mode():
        text_only = model.forward_text_features(ids, mask)
    assert not torch.allclose(joint[:, 17:], text_only, atol=1e-3)


def test_wrong_image_size_names_the_expected_size(model):
    with pytest.raises(ValueError, match=r"\(batch, 3, 64, 64\).*got \(2, 3, 32, 32\)"):
        model.encode_image(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="3, 64, 64"):
        model.encode_image(torch.zeros(3, 64, 64))


def test_integer_images_are_refused_and_other_float_types_cast(model, images):
    """Raw uint8 pixels mean the preprocessing was skipped; float64 (from numpy) is just another float."""
    expected = r"float images normalised by musk.get_transform\(model\), got dtype torch.uint8"
    with pytest.raises(ValueError, match=expected):
        model.encode_image(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with torch.inference_mode():
        want = model.encode_image(images)
        torch.testing.assert_close(model.encode_image(images.double()), want)
        torch.testing.assert_close(model.encode_image(images.half()), model.encode_image(images.half().float()))


def test_empty_batch_in_every_image_mode(model):
    empty = torch.zeros(0, 3, 64, 64)
    with torch.inference_mode():
        assert model.encode_image(empty).shape == (0, 64)
        assert model.encode_image(empty, with_head=False, ms_aug=True).shape == (0, 128)
        assert model.encode_image(empty, ms_aug=True).shape == (0, 64)


def test_unknown_architecture_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown MUSK architecture 'vit_base_patch16_224'.*musk_tiny_patch16_64"):
        musk.create_model("vit_base_patch16_224")
    with pytest.raises(ValueError, match="'musk_huge'"):
        musk.create_model("musk_huge", pretrained="hf_hub:xiangjx/musk")


def test_ms_aug_shapes_and_head_at_any_width(model, images):
    with torch.inference_mode():
        plain = model.encode_image(images, with_head=False, normalize=False)
        multi = model.encode_image(images, with_head=False, normalize=False, ms_aug=True)
        headed = model.encode_image(images, with_head=True, normalize=False, ms_aug=True)
        expected_headed = model.vision_head(plain)
    assert multi.shape == (3, 128)
    torch.testing.assert_close(multi[:, :64], plain)
    # the head projects the first D columns (the scale-1 CLS), whatever D is
    torch.testing.assert_close(headed, expected_headed)
    with pytest.raises(ValueError, match="return_global"):
        model(image=images, ms_aug=True, return_global=False)
    with pytest.raises(ValueError, match="multiple"):
        model(image=images, ms_aug=True, scales=(1, 1.5))


def test_multiscale_tiles_are_the_upscaled_quadrants(model, images):
    """Scale 2 = mean CLS of the four 64 px quadrants of the 128 px bicubic upscale."""
    big = F.interpolate(images, size=(128, 128), mode="bicubic", align_corners=False)
    quads = [big[..., i : i + 64, j : j + 64] for i in (0, 64) for j in (0, 64)]
    with torch.inference_mode():
        expected = torch.stack([model.forward_features(q)[:, 0] for q in quads]).mean(0)
        multi = model.multiscale_cls(images)
    torch.testing.assert_close(multi[:, 64:], expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_masked_positions_use_the_mask_token(model, images):
    masked = torch.zeros(3, 16, dtype=torch.bool)
    masked[:, :5] = True
    emb = model.beit3.vision_embed(images, masked)
    torch.testing.assert_close(emb[:, 1:6], model.beit3.vision_embed.mask_token.expand(3, 5, -1))
    torch.testing.assert_close(emb[:, 6:], model.beit3.vision_embed(images)[:, 6:])


def test_text_longer_than_the_position_table_is_refused(model):
    with pytest.raises(ValueError, match="position rows"):
        model.encode_text(torch.zeros(1, 1023, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precisions_track_fp32(model, images, text, dtype):
    half = musk.create_model(TINY, dtype=dtype)
    half.load_state_dict(model.state_dict())
    ids, mask = text
    with torch.inference_mode():
        ref_img = model.encode_image(images)
        ref_txt = model.encode_text(ids, mask)
        img = half.encode_image(images.to(dtype))
        txt = half.encode_text(ids, mask)
    assert img.dtype == dtype
    assert F.cosine_similarity(img.float(), ref_img).min() > 0.99
    assert F.cosine_similarity(txt.float(), ref_txt).min() > 0.99


def test_concurrent_calls_in_threads_give_the_single_thread_answers(model, images, text):
    """Image, text and joint calls interleaved from several threads: no shared routing state."""
    ids, mask = text
    with torch.inference_mode():
        expected = {
            "image": model.encode_image(images),
            "text": model.encode_text(ids, mask),
            "joint": model.forward_joint(images[:2], ids, mask),
        }
    calls = {
        "image": lambda: model.encode_image(images),
        "text": lambda: model.encode_text(ids, mask),
        "joint": lambda: model.forward_joint(images[:2], ids, mask),
    }
    errors = []

    def worker(kind):
        with torch.inference_mode():
            for _ in range(10):
                if not torch.allclose(calls[kind](), expected[kind], atol=1e-6):
                    errors.append(kind)

    threads = [threading.Thread(target=worker, args=(k,)) for k in list(calls) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_gradient_checkpointing_gives_the_same_gradients(images, text):
    ids, mask = text
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(TINY).train()
        model.set_grad_checkpointing(checkpointing)
        img = model.encode_image(images[:2])
        txt = model.encode_text(ids, mask)
        (img @ txt.T).logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].numel() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_drop_path_only_in_training(images):
    model = timm.create_model(TINY, drop_path_rate=0.5)
    with torch.no_grad():
        model.eval()
        a, b = model.encode_image(images), model.encode_image(images)
        model.train()
        c = model.encode_image(images)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_every_parameter_is_initialised():
    """Built on meta and initialised once: norms are exactly 1/0, every weight matrix is a 0.02 normal."""
    model = timm.create_model(TINY, vocab_size=5000)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if name == "logit_scale":
            assert p.item() == pytest.approx(2.6593, abs=1e-4)  # log(1 / 0.07)
        elif "layer_norm" in name or "_ln." in name or "layernorm" in name:
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.25), name
            assert p.abs().max().item() <= 0.04 + 1e-6, name  # truncated at two standard deviations
    with torch.device("meta"):
        assert all(p.is_meta for p in timm.create_model(TINY).parameters())


def test_empty_and_overlong_text_encode(model, tokenizer_file):
    """Empty text is <s></s>; a text far past 100 tokens is cut to 100 and still ends with </s>."""
    tokenizer = musk.MuskTokenizer(tokenizer_file)
    ids, mask = tokenizer(["", "carcinoma " * 2000, "tumour"])
    assert ids.shape == (3, 100)
    assert ids[0, :2].tolist() == [0, 2] and mask[0].sum() == 98
    assert ids[1, -1] == 2 and mask[1].sum() == 0
    with torch.inference_mode():
        emb = model.encode_text(ids, mask)
        alone = model.encode_text(*tokenizer([""]))
    assert torch.isfinite(emb).all() and emb.shape == (3, 64)
    torch.testing.assert_close(emb[0], alone[0], atol=1e-5, rtol=1e-5)  # padding to 100 changes nothing


def test_cpu_feed_forward_blocks_give_the_whole_batch_answer(monkeypatch, model):
    """The CPU path splits tokens into equal blocks; the result is the one-pass result."""
    from musk.models import layer

    ffn = model.beit3.encoder.layers[0].ffn.A
    x = torch.randn(3, 17, 64)
    with torch.inference_mode():
        whole = ffn._mlp(x)
        monkeypatch.setattr(layer, "CPU_BLOCK_VALUES", 7 * 256)  # 7 tokens a block at most: 51 -> 8 blocks
        blocked = ffn(x)
    assert blocked.shape == whole.shape
    torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=1e-6)
