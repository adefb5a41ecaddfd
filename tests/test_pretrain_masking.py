"""Masking generators: block-wise image masks of the requested size and blocks; whole-word text masking
with BERT's 80/10/10 replacement, never touching special tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musk.pretrain.masking import BlockMaskGenerator, WholeWordMasker, word_start_table


@pytest.mark.parametrize(
    ("grid", "ratio", "min_block", "max_block"), [(24, 0.4, 16, 100), (14, 0.4, 16, None), (4, 0.4, 2, 6)]
)
def test_block_masks_have_the_requested_count_and_block_sizes(grid, ratio, min_block, max_block):
    gen = BlockMaskGenerator.from_ratio(grid, ratio, min_block=min_block, max_block=max_block)
    assert gen.num_masked == round(ratio * grid * grid)
    upper = max_block or gen.num_masked
    topped_up = []
    for seed in range(200):
        mask, blocks = gen.blocks(np.random.default_rng(seed))
        assert mask.sum() == gen.num_masked  # exactly, every time
        union = np.zeros_like(mask)
        for top, left, h, w in blocks:
            assert min_block <= h * w <= upper
            assert 0.3 - 0.15 <= h / w <= 1 / 0.3 + 1.5  # aspect ratio in range (up to rounding of h and w)
            assert top + h <= grid and left + w <= grid
            union[top : top + h, left : left + w] = True
        assert union.sum() <= gen.num_masked and (mask | union).sum() == mask.sum()  # blocks lie inside the mask
        topped_up.append(mask.sum() - union.sum())
        flat = gen(np.random.default_rng(seed))
        assert (
            flat.dtype == torch.bool
            and flat.shape == (grid * grid,)
            and torch.equal(flat, torch.from_numpy(mask.ravel()))
        )
    # single random patches only fill what no block could: on average less than one smallest block
    assert np.mean(topped_up) < min_block


def test_published_setting_masks_230_of_576_in_blocks():
    gen = BlockMaskGenerator.from_ratio(24, 0.4, min_block=16, max_block=100)
    assert gen.num_masked == 230
    masks = np.stack([gen.blocks(np.random.default_rng(s))[0] for s in range(300)])
    # block masks are spatially clustered: a masked patch's right neighbour is masked far more often than 40%
    both = (masks[:, :, :-1] & masks[:, :, 1:]).sum() / masks[:, :, :-1].sum()
    assert both > 0.7
    # every position gets masked sometimes (rectangles placed uniformly favour the centre, as in BEiT)
    freq = masks.mean(0)
    assert freq.min() > 0 and abs(freq.mean() - 230 / 576) < 1e-12


def test_block_mask_is_a_function_of_the_seed():
    gen = BlockMaskGenerator.from_ratio(14, 0.4)
    assert torch.equal(gen(np.random.default_rng(7)), gen(np.random.default_rng(7)))
    assert not torch.equal(gen(np.random.default_rng(7)), gen(np.random.default_rng(8)))


@pytest.mark.parametrize(
    "kwargs", [{"num_masked": 0}, {"num_masked": 17}, {"min_block": 7, "max_block": 3}, {"min_aspect": 0}]
)
def test_block_mask_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        BlockMaskGenerator(**{"grid": 4, "num_masked": 6, "min_block": 2, **kwargs})


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    from musk import get_tokenizer

    return get_tokenizer(tokenizer_file)


def test_word_starts_follow_the_sentencepiece_pieces(tokenizer):
    table = word_start_table(tokenizer)
    ids = tokenizer.encode("adenocarcinoma of the lung")
    starts = table[torch.tensor(ids)].tolist()
    pieces = [tokenizer.decode([i]) for i in ids]
    assert starts[0] and starts[-1]  # <s> and </s>
    # a new word starts exactly where the decoded text of the prefix gains a space
    for k in range(2, len(ids) - 1):
        gains_space = tokenizer.decode(ids[1 : k + 1]).count(" ") > tokenizer.decode(ids[1:k]).count(" ")
        assert starts[k] == gains_space, (k, pieces)
    assert sum(starts[1:-1]) == 4  # four words


def test_whole_word_masking_ratio_words_and_80_10_10(tokenizer):
    table = word_start_table(tokenizer)
    masker = WholeWordMasker(tokenizer.mask_token_id, tokenizer.vocab_size, tuple(tokenizer.all_special_ids))
    text = (
        "invasive ductal carcinoma of the breast with extensive lymphovascular invasion and metastatic deposits "
        "in three of twelve axillary lymph nodes ; oestrogen receptor positive , her2 negative"
    )
    ids, _ = tokenizer([text], max_length=64, padding="max_length")
    ids = ids[0]
    words = masker.words(ids, table)
    real = sum(map(len, words))
    specials = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    chosen_total, kinds = 0, {"mask": 0, "random": 0, "kept": 0}
    for seed in range(400):
        masked, labels = masker(ids, table, np.random.default_rng(seed))
        chosen = labels != -100
        assert not chosen[specials].any()  # <s>, </s>, padding never chosen
        assert torch.equal(labels[chosen], ids[chosen])  # the labels are the original tokens
        assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
        for word in words:  # whole words: all of a word's pieces or none
            assert chosen[word].all() or not chosen[word].any()
        n = int(chosen.sum())
        assert abs(n - 0.15 * real) <= max(len(w) for w in words)  # 15% up to one word
        chosen_total += n
        replaced = masked[chosen]
        kinds["mask"] += int((replaced == tokenizer.mask_token_id).sum())
        kinds["kept"] += int((replaced == ids[chosen]).sum())
        kinds["random"] += int(((replaced != tokenizer.mask_token_id) & (replaced != ids[chosen])).sum())
        assert (replaced >= 4).all() and (replaced < tokenizer.vocab_size).all()
    shares = {k: v / chosen_total for k, v in kinds.items()}
    sd = (0.1 * 0.9 / chosen_total) ** 0.5
    assert abs(shares["mask"] - 0.8) < 5 * (0.16 / chosen_total) ** 0.5
    assert abs(shares["random"] - 0.1) < 5 * sd + 0.002  # a random draw may hit the original token
    assert abs(shares["kept"] - 0.1) < 5 * sd + 0.002


def test_random_replacements_never_draw_the_mask_or_special_ids():
    masker = WholeWordMasker(mask_id=7, vocab_size=10, special_ids=(0, 1, 2, 3, 7), mask_prob=0.0, random_prob=1.0)
    ids = torch.tensor([0, 4, 5, 6, 8, 9, 4, 5, 6, 8, 9, 2])
    starts = torch.ones(10, dtype=torch.bool)
    seen = set()
    for seed in range(300):
        masked, labels = masker(ids, starts, np.random.default_rng(seed))
        seen |= set(masked[labels != -100].tolist())
    assert seen == {4, 5, 6, 8, 9}
