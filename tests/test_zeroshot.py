"""Zero-shot library: class embeddings from prompt ensembles, probabilities, the one-call classifier."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import musk
from musk.tokenizer import MuskTokenizer
from musk.zeroshot import DEFAULT_TEMPLATES, class_embeddings, fill_template, probabilities, zero_shot_classify

TINY = "musk_tiny_patch16_64"
CLASSES = ["lung adenocarcinoma", "benign lung tissue", "lung squamous cell carcinoma"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(11)
    return timm.create_model(TINY).eval()


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    return MuskTokenizer(tokenizer_file)


def text_embedding(model, tokenizer, prompt: str) -> torch.Tensor:
    """One prompt on its own (no padding), projected and normalised."""
    ids, mask = tokenizer([prompt])
    with torch.inference_mode():
        return model.encode_text(ids, mask, with_head=True, normalize=True)[0]


def test_fill_template_accepts_both_placeholders():
    assert fill_template("an image of {}.", "necrosis") == "an image of necrosis."
    assert fill_template("an image of {c}.", "necrosis") == "an image of necrosis."
    assert fill_template("{0} or {{braces}}", "necrosis") == "necrosis or {braces}"
    assert fill_template("{c}, that is {c}", "tumor") == "tumor, that is tumor"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("an image", "must contain the class placeholder"),
        ("", "must contain the class placeholder"),
        ("{{}} literal braces", "must contain the class placeholder"),
        ("{x} of {}", "no other field"),
        ("{} and {1}", "no other field"),
        ("an image of {", "not a valid format string"),
    ],
)
def test_templates_without_the_one_placeholder_are_refused(template, message):
    """Without the placeholder every class would get the same prompt, and the same probability."""
    with pytest.raises(ValueError, match=message):
        fill_template(template, "tumor")


def test_class_embeddings_are_the_renormalised_mean_of_normalised_prompts(model, tokenizer):
    templates = ["{}.", "an H&E stained image of {}.", "a histopathology slide showing {c}, a common finding."]
    got = class_embeddings(model, tokenizer, CLASSES, templates)
    expected = []
    for name in CLASSES:
        per_prompt = torch.stack([text_embedding(model, tokenizer, t.format(name, c=name)) for t in templates])
        assert torch.allclose(per_prompt.norm(dim=-1), torch.ones(len(templates)), atol=1e-5)
        mean = per_prompt.mean(dim=0)
        expected.append(mean / mean.norm())
    expected = torch.stack(expected)
    assert got.shape == (len(CLASSES), model.embed_dim)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(CLASSES)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # the mean of unit vectors is shorter than 1: the renormalisation is what makes the rows unit vectors
    assert all(mean_norm < 0.999 for mean_norm in _mean_norms(model, tokenizer, templates))


def _mean_norms(model, tokenizer, templates):
    for name in CLASSES:
        per_prompt = torch.stack([text_embedding(model, tokenizer, fill_template(t, name)) for t in templates])
        yield float(per_prompt.mean(dim=0).norm())


def test_one_template_is_that_prompt_alone(model, tokenizer):
    got = class_embeddings(model, tokenizer, CLASSES, ["an image of {}."])
    for row, name in zip(got, CLASSES, strict=True):
        torch.testing.assert_close(row, text_embedding(model, tokenizer, f"an image of {name}."), atol=1e-5, rtol=1e-4)


def test_brace_styles_give_the_same_classes(model, tokenizer):
    plain = class_embeddings(model, tokenizer, CLASSES, ["an image of {}.", "{} tissue."])
    upstream = class_embeddings(model, tokenizer, CLASSES, ["an image of {c}.", "{c} tissue."])
    torch.testing.assert_close(plain, upstream)


def test_class_order_follows_the_names(model, tokenizer):
    forward = class_embeddings(model, tokenizer, CLASSES)
    backward = class_embeddings(model, tokenizer, CLASSES[::-1])
    torch.testing.assert_close(backward, forward.flip(0), atol=1e-5, rtol=1e-4)
    # and the classes really differ, so a mix-up of rows would show
    assert (forward[0] - forward[1]).abs().max() > 1e-3


def test_default_templates_are_used_and_fill(model, tokenizer):
    assert all("{}" in t for t in DEFAULT_TEMPLATES)
    torch.testing.assert_close(
        class_embeddings(model, tokenizer, CLASSES),
        class_embeddings(model, tokenizer, CLASSES, list(DEFAULT_TEMPLATES)),
    )


@pytest.mark.parametrize("classes, templates", [([], ["{}."]), (CLASSES, []), ((), ())])
def test_empty_classes_or_templates_are_refused(model, tokenizer, classes, templates):
    with pytest.raises(ValueError, match="at least one"):
        class_embeddings(model, tokenizer, classes, templates)


@pytest.mark.parametrize(
    ("classes", "templates", "error", "message"),
    [
        ("tumor", ["{}."], TypeError, "class_names must be a list"),
        (CLASSES, "an image of {}.", TypeError, "templates must be a list"),
        (["tumor", " "], ["{}."], ValueError, "must not be blank"),
        (["tumor", "stroma", "tumor"], ["{}."], ValueError, r"repeated: \['tumor'\]"),
        (CLASSES, ["{}.", "an image"], ValueError, "placeholder"),
    ],
)
def test_class_names_and_templates_are_checked(model, tokenizer, classes, templates, error, message):
    """One string would be read as one class per character; repeats and blanks give useless columns."""
    with pytest.raises(error, match=message):
        class_embeddings(model, tokenizer, classes, templates)
    with pytest.raises(error, match=message):
        zero_shot_classify(model, tokenizer, torch.zeros(1, 3, 64, 64), classes, templates)


def test_zero_shot_classify_refuses_a_batch_size_below_one(model, tokenizer):
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        zero_shot_classify(model, tokenizer, torch.zeros(2, 3, 64, 64), CLASSES, batch_size=0)


@pytest.fixture
def unit_vectors():
    g = torch.Generator().manual_seed(5)
    images = F.normalize(torch.randn(6, 64, generator=g), dim=-1)
    classes = F.normalize(torch.randn(4, 64, generator=g), dim=-1)
    return images, classes


def with_logit_scale(model, value: float):
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.logit_scale.fill_(value)
    return clone


def test_probabilities_use_exp_of_logit_scale(model, unit_vectors):
    images, classes = unit_vectors
    scaled = with_logit_scale(model, math.log(50.0))
    probs = probabilities(scaled, images, classes)
    by_hand = torch.exp(50.0 * (images @ classes.T))
    by_hand = by_hand / by_hand.sum(dim=1, keepdim=True)
    torch.testing.assert_close(probs, by_hand)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(images)))
    # the raw parameter (about 3.9 for 50) would give much flatter probabilities
    flat = (math.log(50.0) * images @ classes.T).softmax(dim=-1)
    assert not torch.allclose(probs, flat, atol=1e-3)


def test_logit_scale_sets_the_sharpness_not_the_ranking(model, unit_vectors):
    images, classes = unit_vectors
    soft = probabilities(with_logit_scale(model, math.log(2.0)), images, classes)
    sharp = probabilities(with_logit_scale(model, math.log(100.0)), images, classes)
    assert torch.equal(soft.argmax(dim=1), sharp.argmax(dim=1))
    assert (sharp.max(dim=1).values > soft.max(dim=1).values).all()
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(dim=1)  # noqa: E731
    assert (entropy(sharp) < entropy(soft)).all()


def test_probabilities_accept_other_dtypes_and_return_float32_on_cpu(model, unit_vectors):
    images, classes = unit_vectors
    probs = probabilities(model, images.double(), classes.half())
    assert probs.dtype == torch.float32 and probs.device.type == "cpu"
    torch.testing.assert_close(probs, probabilities(model, images, classes.half().float()))


def test_zero_shot_classify_equals_the_steps_it_combines(model, tokenizer):
    torch.manual_seed(2)
    images = torch.randn(5, 3, 64, 64)
    probs = zero_shot_classify(model, tokenizer, images, CLASSES)
    with torch.inference_mode():
        feats = model.encode_image(images, with_head=True, normalize=True)
    expected = probabilities(model, feats, class_embeddings(model, tokenizer, CLASSES))
    assert probs.shape == (5, len(CLASSES))
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    # neither batching nor the split of a batch over concurrent calls changes the answer
    for batch_size, streams in ((2, None), (5, 1), (5, 3)):
        again = zero_shot_classify(model, tokenizer, images, CLASSES, batch_size=batch_size, streams=streams)
        torch.testing.assert_close(again, probs, atol=1e-5, rtol=1e-4)


def test_zero_shot_classify_on_the_demo_image(model, tokenizer, demo_image):
    """The real demo image through the model's own preprocessing: one row of valid probabilities."""
    x = musk.get_transform(model)(musk.load_image(demo_image)).unsqueeze(0)
    probs = zero_shot_classify(model, tokenizer, x, CLASSES, templates=["{c}."])
    assert probs.shape == (1, len(CLASSES))
    assert torch.isfinite(probs).all() and (probs > 0).all()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
