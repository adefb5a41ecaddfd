"""Aggregators, fusion, saved models, report embedding and attention drawing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from musk.mil import ABMIL, MeanPool, MILModel, TransformerMIL, chunk_ids, embed_reports, load_mil_models
from musk.mil.heatmap import draw_attention, write_attention_file
from musk.mil.saved import save_mil_model
from musk.wsi.h5 import read_patch_file


@pytest.mark.parametrize("cls", [ABMIL, MeanPool, TransformerMIL])
def test_aggregators_are_permutation_invariant_and_weights_sum_to_one(cls):
    torch.manual_seed(0)
    agg = cls(12, hidden=16).eval()
    x = torch.randn(30, 12)
    perm = torch.randperm(30)
    emb, weights = agg(x)
    emb_p, weights_p = agg(x[perm])
    assert emb.shape == (16,) and weights.shape == (30,)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5) and (weights >= 0).all()
    torch.testing.assert_close(emb_p, emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights_p, weights[perm], atol=1e-6, rtol=1e-5)


def test_abmil_embedding_is_the_attention_weighted_patch_embedding():
    agg = ABMIL(6, hidden=8).eval()
    x = torch.randn(10, 6)
    emb, weights = agg(x)
    torch.testing.assert_close(emb, (weights[:, None] * agg.embed(x)).sum(0))
    mean_emb, mean_weights = MeanPool(6, hidden=8).eval()(x)
    assert torch.allclose(mean_weights, torch.full((10,), 0.1))


@pytest.mark.parametrize("fusion", ["none", "concat", "gated", "text_only"])
def test_fusion_uses_what_it_says(fusion):
    torch.manual_seed(0)
    model = MILModel(3, feature_dim=12, text_dim=5, fusion=fusion, hidden=8).eval()
    torch.nn.init.normal_(model.head.weight)  # it starts at zero
    x, text = torch.randn(20, 12), torch.randn(5)
    out, weights = model(x if fusion != "text_only" else None, text if fusion != "none" else None)
    assert out.shape == (3,)
    assert (weights is None) == (fusion == "text_only")
    changed_text = model(x if fusion != "text_only" else None, text + 1 if fusion != "none" else None)[0]
    assert torch.equal(changed_text, out) == (fusion == "none")
    if fusion != "text_only":
        assert not torch.equal(model(x + 1, text if fusion != "none" else None)[0], out)
    if fusion in ("concat", "gated"):
        with pytest.raises(ValueError, match="reads the report"):
            model(x, None)


def test_saved_model_round_trip(tmp_path):
    model = MILModel(2, feature_dim=12, text_dim=5, model="transmil", fusion="gated", hidden=8).eval()
    config = {"task": "classification", "classes": ["a", "b"], "out_dim": 2, "feature_dim": 12, "text_dim": 5}
    config |= {"model": "transmil", "fusion": "gated", "hidden": 8, "dropout": 0.25}
    save_mil_model(model, tmp_path / "fold_0", config)
    save_mil_model(model, tmp_path / "fold_1", config)
    loaded = load_mil_models(tmp_path)
    assert [m.path.name for m in loaded] == ["fold_0", "fold_1"]
    x, text = torch.randn(7, 12), torch.randn(5)
    torch.testing.assert_close(loaded[0].model(x, text)[0], model(x, text)[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no MIL model"):
        load_mil_models(tmp_path / "empty")


def test_long_reports_are_chunked_and_pooled(tokenizer_file):
    import musk
    from musk.tokenizer import MuskTokenizer

    tokenizer = MuskTokenizer(tokenizer_file)
    text = " ".join(["invasive ductal carcinoma with lymphovascular invasion"] * 30)
    chunks = chunk_ids(tokenizer, text, 100)
    inner = tokenizer.encode(text)[1:-1]
    assert len(chunks) == -(-len(inner) // 98) > 1
    assert all(len(c) <= 100 and c[0] == 0 and c[-1] == 2 for c in chunks)
    assert [t for c in chunks for t in c[1:-1]] == inner
    model = musk.create_model("musk_tiny_patch16_64").eval()
    vectors = embed_reports([text, "benign"], model, tokenizer, batch_size=3)
    with torch.inference_mode():
        each = [model.encode_text(torch.tensor([c]), with_head=True, normalize=True)[0] for c in chunks]
    expected = torch.nn.functional.normalize(torch.stack(each).mean(0), dim=0)
    np.testing.assert_allclose(vectors[0], expected.numpy(), atol=1e-5)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0])


def test_attention_file_and_overlay(tmp_path):
    coords = np.array([[0, 0], [256, 0], [0, 256], [256, 256]])
    attention = np.array([0.1, 0.6, 0.2, 0.1], np.float32)
    path = write_attention_file(tmp_path / "a.h5", coords, attention, {"patch_size_level0": 256, "name": "s"})
    back = read_patch_file(path)
    np.testing.assert_array_equal(back.coords, coords)
    np.testing.assert_allclose(back.arrays["attention"], attention)
    np.testing.assert_allclose(back.arrays["attention_rank"], [0, 1, 0.5, 0])
    assert back.attrs["name"] == "s"
    image = draw_attention(Image.new("RGB", (64, 64), "white"), coords, attention, 256, (512, 512), alpha=1.0)
    pixels = np.asarray(image).astype(int)
    top_right, top_left = pixels[10, 48], pixels[10, 10]
    assert top_right[0] > 100 and top_right[1] < 30 and top_right[2] < 30  # highest: red end of the map
    assert top_left[2] > 100 and top_left[0] < 30 and top_left[1] < 30  # lowest: blue end


def test_proportional_hazards_share_one_risk_and_survive_saving(tmp_path):
    from musk.mil.losses import hazards_to_risk

    torch.manual_seed(0)
    model = MILModel(4, feature_dim=12, hidden=8, proportional=True).eval()
    torch.nn.init.normal_(model.head.weight)  # it starts at zero: every case the same risk
    model.set_output_bias(torch.tensor([-2.0, -1.0, 0.0, 1.0]))
    bags = [torch.randn(n, 12) for n in (5, 9, 14)]
    logits = torch.stack([model(x)[0] for x in bags])
    assert logits.shape == (3, 4)
    eta = logits[:, 0] + 2.0  # every bin's logit is one risk score plus the bin's intercept
    torch.testing.assert_close(logits, eta[:, None] + torch.tensor([-2.0, -1.0, 0.0, 1.0]))
    order = torch.argsort(eta)
    assert torch.equal(torch.argsort(hazards_to_risk(logits)), order)  # the risk ranks cases as eta does
    config = {"task": "survival", "classes": [], "out_dim": 4, "feature_dim": 12, "text_dim": None, "model": "abmil"}
    config |= {"fusion": "none", "hidden": 8, "dropout": 0.25, "survival_loss": "nll", "proportional": True}
    save_mil_model(model, tmp_path, config)
    loaded = load_mil_models(tmp_path)[0].model
    torch.testing.assert_close(torch.stack([loaded(x)[0] for x in bags]), logits)


def test_linear_model_is_standardised_mean_features_and_refuses_gated_fusion():
    model = MILModel(1, feature_dim=3, text_dim=2, model="linear", fusion="concat").eval()
    with torch.no_grad():
        model.aggregator.standardise.mean.copy_(torch.tensor([1.0, 0.0, 0.0]))
        model.aggregator.standardise.scale.copy_(torch.tensor([2.0, 1.0, 1.0]))
        model.head.weight.copy_(torch.tensor([[1.0, 2.0, 0.0, 0.5, 0.0]]))
        model.head.bias.fill_(0.25)
    x, text = torch.tensor([[3.0, 1.0, 5.0], [5.0, 3.0, -5.0]]), torch.tensor([2.0, 7.0])
    out, weights = model(x, text)
    # mean feature (4, 2, 0), standardised (1.5, 2, 0); report (2, 7)
    assert out.item() == pytest.approx(1.5 + 2 * 2 + 0.5 * 2 + 0.25)
    assert weights.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="use fusion 'concat', not 'gated'"):
        MILModel(1, feature_dim=3, text_dim=2, model="linear", fusion="gated")


def test_a_standardising_model_applies_its_training_scale_everywhere_and_keeps_it(tmp_path):
    """Patch features enter as (x - mean) / scale: in forward, in the attention drawn on heatmaps, after saving;
    the head starts at zero, so every case starts with the same outputs."""
    from musk.mil.heatmap import patch_attention

    torch.manual_seed(0)
    mean, scale = torch.linspace(-3, 3, 12), torch.linspace(0.5, 4, 12)
    model = MILModel(2, feature_dim=12, hidden=8, standardise=True).eval()
    bags = [mean + scale * torch.randn(n, 12) for n in (5, 9)]
    assert torch.equal(model(bags[0])[0], model(bags[1])[0])  # zero head: only the bias
    torch.nn.init.normal_(model.head.weight)
    model.set_feature_scale(mean, scale)
    plain = MILModel(2, feature_dim=12, hidden=8).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("feature_norm")})
    for x in bags:
        expected = plain((x - mean) / scale)
        torch.testing.assert_close(model(x)[0], expected[0])
        torch.testing.assert_close(model(x)[1], expected[1])
    config = {"task": "classification", "classes": ["a", "b"], "out_dim": 2, "feature_dim": 12, "text_dim": None}
    config |= {"model": "abmil", "fusion": "none", "hidden": 8, "dropout": 0.25, "standardise": True}
    save_mil_model(model, tmp_path, config)
    loaded = load_mil_models(tmp_path)
    torch.testing.assert_close(loaded[0].model(bags[0])[0], model(bags[0])[0])
    np.testing.assert_allclose(patch_attention(loaded, bags[1].numpy()), model(bags[1])[1].detach().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="does not standardise"):
        plain.set_feature_scale(mean, scale)
