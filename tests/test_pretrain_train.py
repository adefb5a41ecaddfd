"""The pretraining stages end to end on the tiny recipe and generated data with learnable structure:
stage 0 -> its codes feed stage 1 -> stage 2 -> export; losses fall, accuracies rise above chance; the
exported weights load strictly into the inference model with equal embeddings."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import musk
from musk.cli import main
from musk.pretrain import export_weights, load_config, read_log, train_contrastive, train_mim, train_tokenizer
from musk.pretrain.export import musk_state_from_checkpoint
from musk.pretrain.retrieval import retrieval_recall
from musk.pretrain.vqkd import load_visual_tokenizer
from pretrain_synthetic import make_corpus, make_images, make_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain-data")
    return {
        "images": make_images(root / "images", 64, seed=0),
        "corpus": make_corpus(root / "corpus.txt", 300, seed=0),
        "pairs": make_pairs(root / "pairs", 64, seed=1, single=True),
        "held_out": make_pairs(root / "held_out", 24, seed=9, single=True),
        "root": root,
    }


def _mean(rows, key, sl):
    return float(np.mean([r[key] for r in rows[sl]]))


@pytest.fixture(scope="module")
def stage0(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage0")
    config = load_config("tokenizer", "tiny", {"images": [str(data["images"])], "output_dir": str(out),
                                              "steps": 16, "cpu": True, "tensorboard": False})  # fmt: skip
    train_tokenizer(config)
    return out


@pytest.fixture(scope="module")
def stage1(data, stage0, tmp_path_factory, tokenizer_file):
    out = tmp_path_factory.mktemp("stage1")
    config = load_config("mim", "tiny", {
        "images": [str(data["images"])], "texts": [str(data["corpus"])], "tokenizer": str(tokenizer_file),
        "visual_tokenizer": str(stage0), "output_dir": str(out), "steps": 60, "lr": 5e-3, "text_batch_size": 32,
        "cpu": True,
    })  # fmt: skip
    train_mim(config)
    return out


@pytest.fixture(scope="module")
def stage2(data, stage1, tmp_path_factory, tokenizer_file):
    out = tmp_path_factory.mktemp("stage2")
    config = load_config("contrastive", "tiny", {
        "pairs": [str(data["pairs"])], "eval_pairs": [str(data["held_out"])], "tokenizer": str(tokenizer_file),
        "weights": str(stage1),
        "output_dir": str(out), "steps": 30, "lr": 3e-3, "cpu": True,
    })  # fmt: skip
    train_contrastive(config)
    return out


def test_stage0_tokenizer_learns_the_teacher_features_and_uses_several_codes(stage0):
    rows = read_log(stage0)
    assert len(rows) == 16
    assert _mean(rows, "cosine_loss", slice(-4, None)) < 0.8 * _mean(rows, "cosine_loss", slice(0, 4))
    assert rows[-1]["codes_used"] >= 4
    tokenizer = load_visual_tokenizer(stage0)
    codes = torch.linalg.vector_norm(tokenizer.codebook.codes, dim=-1)
    torch.testing.assert_close(codes, torch.ones_like(codes))  # l2-normalised codebook


def _code_baseline(stage0, images) -> float:
    """Share of the most frequent code over all patches: what always guessing one code scores."""
    from PIL import Image

    from musk.pretrain.augment import PretrainAugment

    tokenizer = load_visual_tokenizer(stage0)
    aug = PretrainAugment(64, train=False)
    x = torch.stack([aug(Image.open(p), np.random.default_rng(0)) for p in sorted(images.glob("*.png"))])
    codes = tokenizer.encode(x).flatten().tolist()
    return Counter(codes).most_common(1)[0][1] / len(codes)


def _unigram(tokenizer_file, corpus) -> tuple[float, float]:
    """(entropy, share of the most frequent token) of the corpus tokens: the loss and accuracy of a model
    that predicts from token frequencies alone, without reading the context."""
    tok = musk.get_tokenizer(tokenizer_file)
    ids = [i for line in corpus.read_text().splitlines() for i in tok.encode(line)[1:-1]]
    p = np.array(list(Counter(ids).values())) / len(ids)
    return float(-(p * np.log(p)).sum()), float(p.max())


def test_stage1_masked_modelling_learns_images_and_text(stage0, stage1, data, tokenizer_file):
    rows = read_log(stage1)
    assert [r["step"] for r in rows] == list(range(1, 61))
    first, last = slice(0, 5), slice(-10, None)
    assert _mean(rows, "loss", last) < _mean(rows, "loss", first) - 5.0
    assert _mean(rows, "mim_loss", last) < _mean(rows, "mim_loss", first) - 1.0
    # masked patches: well above always guessing the most frequent code
    assert _mean(rows, "mim_acc", last) > _code_baseline(stage0, data["images"]) + 0.1
    # masked words: better than token frequencies alone (the model reads the context)
    entropy, majority = _unigram(tokenizer_file, data["corpus"])
    assert _mean(rows, "mlm_loss", last) < entropy - 0.2
    assert _mean(rows, "mlm_acc", last) > majority + 0.02
    assert {"lr", "data_s", "compute_s", "samples_per_s", "grad_norm"} <= set(rows[0])
    assert rows[0]["lr"] < rows[5]["lr"] and rows[-1]["lr"] == pytest.approx(1e-4, rel=0.05)  # warm-up, cosine
    assert (stage1 / "tensorboard").is_dir() and any((stage1 / "tensorboard").iterdir())
    assert (stage1 / "config.yaml").is_file() and (stage1 / "provenance.json").is_file()


def test_stage2_contrastive_aligns_images_and_captions(stage2):
    rows = read_log(stage2)
    first, last = slice(0, 5), slice(-5, None)
    assert _mean(rows, "clip_loss", last) < _mean(rows, "clip_loss", first) - 0.5
    assert _mean(rows, "clip_acc", last) > 2 / 16  # in-batch chance is 1/16
    assert _mean(rows, "mlm_loss", last) < _mean(rows, "mlm_loss", first)
    for r in rows:
        assert r["loss"] == pytest.approx(r["clip_loss"] + 0.1 * r["mlm_loss"], rel=1e-5)


def test_export_loads_strictly_and_gives_the_trained_embeddings(stage2, tmp_path, tokenizer_file):
    out = tmp_path / "musk_pretrained.safetensors"
    assert main(["pretrain", "export", str(stage2), "-o", str(out)]) == 0
    exported = load_file(str(out))
    assert not any(k.startswith(("decoder", "mlm_head", "mim_head", "musk.")) for k in exported)
    model = musk.create_model("musk_tiny_patch16_64", pretrained=out)  # strict
    trained = musk.create_model("musk_tiny_patch16_64")
    trained.load_state_dict(musk_state_from_checkpoint(stage2), strict=True)
    trained.eval()
    images = torch.randn(3, 3, 64, 64)
    ids, padding = musk.get_tokenizer(tokenizer_file)(["a tile with a checkerboard", "red"], max_length=32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), trained.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(model.encode_text(ids, padding), trained.encode_text(ids, padding), rtol=0, atol=0)
    # the trained weights differ from a random start: the export carries the training
    key = "beit3.encoder.layers.0.ffn.A.fc1.weight"
    assert not torch.equal(exported[key], musk.create_model("musk_tiny_patch16_64").state_dict()[key])


def test_export_refuses_a_wrong_architecture(stage2, tmp_path):
    with pytest.raises(musk.CheckpointMismatchError, match="does not fit musk_large_patch16_384"):
        export_weights(stage2, tmp_path / "x.safetensors", model="musk_large_patch16_384")
    assert not (tmp_path / "x.safetensors").exists()


def test_retrieval_recall_equals_a_hand_count():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
    text[:10] = image[:10] * 3  # ten easy pairs
    out = retrieval_recall(image, text, ks=(1, 5))
    sims = (image @ text.T).numpy()
    for k in (1, 5):
        i2t = np.mean([sum(sims[i, j] > sims[i, i] for j in range(30)) < k for i in range(30)])
        t2i = np.mean([sum(sims[j, i] > sims[i, i] for j in range(30)) < k for i in range(30)])
        assert out[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert out[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    assert out["image_to_text_R@5"] >= out["image_to_text_R@1"] > 0.2  # the easy pairs are found


def test_stage2_scores_held_out_retrieval_at_each_checkpoint(stage2, data, tokenizer_file):
    import csv

    from musk.pretrain.data import pair_source
    from musk.pretrain.retrieval import RetrievalEvaluator

    rows = list(csv.DictReader(open(stage2 / "eval.csv")))
    assert [int(r["step"]) for r in rows] == [20, 30]  # save_every 20, and the end
    # the last row is the final model's retrieval, recomputed here from its checkpoint
    model = musk.create_model("musk_tiny_patch16_64")
    model.load_state_dict(musk_state_from_checkpoint(stage2 / "checkpoints" / "step_00000030"), strict=True)
    tok = musk.get_tokenizer(tokenizer_file)
    again = RetrievalEvaluator(pair_source(data["held_out"]), tok, 64, max_len=32)(model)
    assert set(again) == set(rows[-1]) - {"step"}
    for key, value in again.items():
        assert float(rows[-1][key]) == pytest.approx(value, abs=1e-6)
    assert again["mean_recall"] == pytest.approx(np.mean([v for k, v in again.items() if "_R@" in k]))
    assert float(rows[-1]["image_to_text_R@1"]) > 1 / 6  # six kinds of caption: chance for a distinct match


def test_bf16_autocast_follows_the_fp32_run(data, stage0, tmp_path, tokenizer_file):
    """`musk pretrain mim --precision bf16` on CPU: accelerate's autocast runs the matmuls in bf16 while the
    weights, the optimizer and the losses stay fp32; the first steps track the fp32 run to bf16 precision.
    (bf16 in a process of its own: accelerate's precision is fixed once per process.)"""
    settings = {"tokenizer": tokenizer_file, "visual_tokenizer": stage0, "text_batch_size": 8, "lr": 1e-3,
                "tensorboard": "false"}  # fmt: skip
    rows = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        args = ["pretrain", "mim", "--recipe", "tiny", "-o", str(out), "--images", str(data["images"]),
                "--texts", str(data["corpus"]), "--steps", "3", "--batch_size", "8", "--device", "cpu",
                "--precision", precision, *(f"--set={k}={v}" for k, v in settings.items())]  # fmt: skip
        if precision == "fp32":
            assert main(args) == 0
        else:
            proc = subprocess.run([sys.executable, "-m", "musk", *args], capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        rows[precision] = read_log(out)
        assert {v.dtype for v in musk_state_from_checkpoint(out).values()} == {torch.float32}
        mode = json.loads((out / "provenance.json").read_text())["mixed_precision"]
        assert mode == ("no" if precision == "fp32" else "bf16")
    for a, b in zip(rows["fp32"], rows["bf16"], strict=True):
        for key in ("mim_loss", "mlm_loss"):
            assert b[key] == pytest.approx(a[key], rel=2e-2), (a["step"], key)
        assert b["mim_loss"] != a["mim_loss"]  # bf16 arithmetic did happen


def test_model_selection_keeps_and_exports_the_best_checkpoint(data, stage1, tmp_path, tokenizer_file, monkeypatch):
    """Scripted held-out scores: the best checkpoint survives the rotation (keep 1), a resumed run remembers
    it, and exporting the run writes its weights."""
    from musk.pretrain.retrieval import RetrievalEvaluator

    scores = iter([0.2, 0.5, 0.3, 0.4, 0.45, 0.49])
    monkeypatch.setattr(RetrievalEvaluator, "__call__", lambda self, model: {"mean_recall": next(scores)})
    out = tmp_path / "run"
    settings = {"pairs": [str(data["pairs"])], "eval_pairs": [str(data["held_out"])], "tokenizer": str(tokenizer_file),
                "weights": str(stage1), "output_dir": str(out), "lr": 3e-3, "cpu": True, "tensorboard": False,
                "save_every": 1, "keep_checkpoints": 1}  # fmt: skip
    train_contrastive(load_config("contrastive", "tiny", {**settings, "steps": 4}))
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step_00000002", "step_00000004"]
    train_contrastive(load_config("contrastive", "tiny", {**settings, "steps": 6}))  # resumes at step 4
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step_00000002", "step_00000006"]  # 0.45 and 0.49 do not beat step 2's 0.5
    state = json.loads((out / "checkpoints" / "step_00000006" / "trainer_state.json").read_text())
    assert state["best"] == {"step": 2, "metric": "mean_recall", "score": 0.5}
    exported = load_file(str(export_weights(out, tmp_path / "best.safetensors")))
    best = musk_state_from_checkpoint(out / "checkpoints" / "step_00000002")
    last = musk_state_from_checkpoint(out / "checkpoints" / "step_00000006")
    key = "beit3.encoder.layers.0.ffn.A.fc1.weight"
    assert torch.equal(exported[key], best[key]) and not torch.equal(exported[key], last[key])


def test_model_selection_refuses_an_unknown_metric(data, tmp_path, tokenizer_file):
    config = load_config("contrastive", "tiny", {"pairs": [str(data["pairs"])], "eval_pairs": [str(data["held_out"])],
                                                 "tokenizer": str(tokenizer_file), "output_dir": str(tmp_path),
                                                 "steps": 1, "cpu": True, "select_by": "R@1"})  # fmt: skip
    with pytest.raises(ValueError, match="select_by 'R@1': choose from mean_recall, image_to_text_R@1"):
        train_contrastive(config)
