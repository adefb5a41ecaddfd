"""Pretraining data: sources (image folders, WebDataset shards, text corpora, pair tables), the resumable
batch stream (same samples and masks whatever the process count, workers or resume point), the recipes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import musk
from musk.pretrain import load_config, recipe_names
from musk.pretrain.augment import PretrainAugment
from musk.pretrain.batching import DataPosition, MicroBatches, make_loader
from musk.pretrain.collate import ImageBatchMaker, PairBatchMaker, TextWindows
from musk.pretrain.config import STAGES
from musk.pretrain.data import ImageFolderSource, ShardSource, TextSource, image_source, pair_source, read_pair
from musk.pretrain.masking import BlockMaskGenerator, WholeWordMasker, word_start_table
from musk.pretrain.stages import build_teacher
from pretrain_synthetic import caption, make_corpus, make_images, make_pairs, make_shards


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("imgs") / "images", 24, seed=3)


def _maker():
    return ImageBatchMaker(PretrainAugment(64, fields=(1.0, 0.5)), BlockMaskGenerator(4, 6, min_block=2, max_block=6))


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_processes_and_accumulation_split_the_same_global_batches(images):
    source = ImageFolderSource.from_inputs(images)
    one = _take(MicroBatches(source, _maker(), 8, seed=5), 4)  # 3 batches per epoch: crosses an epoch
    for world, accum in [(2, 1), (2, 2), (1, 4)]:
        parts = {r: _take(MicroBatches(source, _maker(), 8, seed=5, rank=r, world=world, grad_accum=accum), 4 * accum)
                 for r in range(world)}  # fmt: skip
        for step in range(4):
            micro = [parts[r][step * accum + m] for m in range(accum) for r in range(world)]
            for key in ("images", "image_mask"):
                torch.testing.assert_close(torch.cat([b[key] for b in micro]), one[step][key], rtol=0, atol=0)
    assert one[3]["position"].tolist() == [1, 0, 0]  # epoch 1 began
    assert not torch.equal(one[0]["images"], one[3]["images"])  # a new order each epoch


def test_a_stream_resumes_at_its_position_and_workers_keep_the_order(images):
    source = ImageFolderSource.from_inputs(images)
    whole = _take(MicroBatches(source, _maker(), 8, seed=1), 6)
    resumed = _take(MicroBatches(source, _maker(), 8, seed=1, start=DataPosition(epoch=0, batch=2)), 4)
    for a, b in zip(whole[2:], resumed, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["position"], b["position"])
    loader = iter(make_loader(MicroBatches(source, _maker(), 8, seed=1), num_workers=2))
    for a in whole:
        b = next(loader)
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["image_mask"], b["image_mask"])


def test_too_little_data_for_one_batch_is_a_clear_error(images):
    stream = MicroBatches(ImageFolderSource.from_inputs(images), _maker(), 32, seed=0)
    with pytest.raises(ValueError, match="fewer samples than one global batch"):
        next(iter(stream))
    with pytest.raises(ValueError, match="multiple of 6"):
        MicroBatches(ImageFolderSource.from_inputs(images), _maker(), 8, seed=0, world=3, grad_accum=2)


def test_shards_read_only_the_needed_members_and_give_the_same_pixels(tmp_path):
    shards = make_shards(tmp_path / "shards", 10, per_shard=4)
    assert len(shards) == 3
    source = image_source([tmp_path / "shards"])
    assert isinstance(source, ShardSource)
    records = list(source.records(0, 0))
    assert sorted(r.key for r in records) == [f"sample{i:05d}" for i in range(10)]
    assert sorted(r.key for r in source.records(1, 0)) == sorted(r.key for r in records)
    assert [r.key for r in source.records(0, 0)] == [r.key for r in records]  # the seed fixes the order
    folder = make_pairs(tmp_path / "pairs", 10).parent  # the same motifs as the shards, as files
    for record in records:
        image, text = read_pair(record)
        i = int(record.key[-5:])
        assert text == caption(*_motif_pair(folder, i))
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(folder / f"pair_{i:04d}.png")))


def _motif_pair(folder, i):
    import csv

    from pretrain_synthetic import MOTIF_NAMES

    row = list(csv.DictReader(open(folder / "pairs.csv")))[i]
    words = row["caption"].split()
    return MOTIF_NAMES.index(words[-4]), MOTIF_NAMES.index(words[-2])


def test_text_corpora_lines_and_jsonl(tmp_path):
    txt = make_corpus(tmp_path / "a.txt", 20, seed=2)
    jsonl = make_corpus(tmp_path / "b.jsonl", 20, seed=2, jsonl=True)
    with open(txt, "a") as f:
        f.write("\n   \n")
    docs_txt = sorted(TextSource.from_inputs(txt).records(0, 0))
    assert docs_txt == sorted(TextSource.from_inputs(jsonl).records(0, 0))
    assert len(docs_txt) == 20
    both = list(TextSource.from_inputs(tmp_path, buffer=8).records(0, 0))
    assert sorted(both) == sorted(docs_txt * 2)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a 'text'"):
        list(TextSource.from_inputs(tmp_path / "bad.jsonl").records(0, 0))


def test_text_windows_skip_short_documents_and_split_long_ones(tokenizer_file):
    tok = musk.get_tokenizer(tokenizer_file)
    windows = TextWindows(tok, max_len=12, min_tokens=6)
    assert list(windows("lung")) == []
    long_doc = " ".join(["adenocarcinoma of the lung with lepidic growth"] * 4)
    body = tok.encode(long_doc)[1:-1]
    out = list(windows(long_doc))
    assert all(w[0] == tok.bos_token_id and w[-1] == tok.eos_token_id and len(w) <= 12 for w in out)
    kept = [i for w in out for i in w[1:-1]]
    assert kept == body[: len(kept)] and len(body) - len(kept) < 4  # only a short tail (< 6 tokens) dropped


def test_pair_tables_csv_and_jsonl_and_errors(tmp_path, tokenizer_file):
    csv_path = make_pairs(tmp_path / "pairs", 6)
    source = pair_source([csv_path])
    assert len(source) == 6
    rows = [json.dumps({"img": str(p), "text": c}) for p, c in source.pairs]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    other = pair_source(tmp_path / "pairs.jsonl", image_key="img", caption_key="text")
    assert sorted(map(str, other.pairs)) == sorted(map(str, source.pairs))
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: needs the columns 'image' and 'caption'"):
        pair_source(tmp_path / "pairs.jsonl")
    tok = musk.get_tokenizer(tokenizer_file)
    masker = WholeWordMasker(tok.mask_token_id, tok.vocab_size, tuple(tok.all_special_ids))
    maker = PairBatchMaker(PretrainAugment(64), tok, masker, word_start_table(tok), max_len=32)
    records = list(source.records(0, 0))[:4]
    batch = maker(records, [np.random.default_rng(i) for i in range(4)])
    assert batch["images"].shape == (4, 3, 64, 64)
    assert torch.equal(batch["text_ids"], tok([c for _, c in records], max_length=32)[0])
    chosen = batch["text_labels"] != -100
    assert chosen.any(dim=1).all() and torch.equal(batch["masked_ids"][~chosen], batch["text_ids"][~chosen])


def test_an_unreadable_image_is_named_and_replaced(images, tmp_path, caplog):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    records = [bad, *sorted(images.glob("*.png"))[:3]]
    with caplog.at_level(logging.WARNING, logger="musk"):
        batch = _maker()(records, [np.random.default_rng(0) for _ in records])
    assert batch["images"].shape == (4, 3, 64, 64)
    assert "broken.png" in caplog.text


@pytest.mark.parametrize("recipe", recipe_names())
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_shipped_recipe_parses(recipe, stage):
    config = load_config(stage, recipe)
    assert config.model in ("musk_tiny_patch16_64", "musk_large_patch16_384")
    if recipe == "large" and stage == "mim":  # the published values
        assert (config.mask_ratio, config.min_block, config.max_block, config.text_mask_ratio) == (0.4, 16, 100, 0.15)
        assert (config.lr, config.min_lr, config.weight_decay, config.drop_path) == (1e-4, 1e-5, 0.05, 0.1)
        assert BlockMaskGenerator.from_ratio(24, config.mask_ratio).num_masked == 230
    if recipe == "large" and stage == "contrastive":
        assert (config.beta2, config.layer_decay, config.drop_path, config.epochs, config.mlm_weight) == (
            0.95, 0.85, 0.2, 20, 0.1)  # fmt: skip


def test_overrides_are_typed_and_unknown_keys_are_named():
    config = load_config("mim", "tiny", {"lr": "3e-4", "images": "a,b", "cpu": "true", "max_grad_norm": "none"})
    assert config.lr == 3e-4 and config.images == ["a", "b"] and config.cpu is True and config.max_grad_norm is None
    with pytest.raises(ValueError, match=r"mim settings.*unknown setting\(s\) learning_rate"):
        load_config("mim", "tiny", {"learning_rate": "1"})
    with pytest.raises(ValueError, match="mim settings.*steps must be an integer"):
        load_config("mim", "tiny", {"steps": "many"})


def test_teacher_args_are_a_yaml_mapping_given_to_timm():
    config = load_config("tokenizer", "tiny", {"teacher_args": "{depth: 2, embed_dim: 32, num_heads: 2}"})
    assert config.teacher_args == {"depth": 2, "embed_dim": 32, "num_heads": 2}
    teacher = build_teacher(config.teacher, config.teacher_weights, config.img_size, config.teacher_args)
    assert len(teacher.blocks) == 2 and teacher.num_features == 32 and teacher.patch_embed.img_size == (64, 64)
    tiny = load_config("tokenizer", "tiny")  # timm's test_vit, made from a model every timm >= 0.9.16 has
    teacher = build_teacher(tiny.teacher, tiny.teacher_weights, tiny.img_size, tiny.teacher_args)
    assert (
        len(teacher.blocks) == 6
        and teacher.num_features == 64
        and not any(p.requires_grad for p in teacher.parameters())
    )
    with pytest.raises(ValueError, match="teacher_args must be a YAML mapping"):
        load_config("tokenizer", "tiny", {"teacher_args": "depth"})
