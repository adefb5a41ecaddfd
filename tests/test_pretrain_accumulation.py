"""Gradient accumulation: a step of several micro-batches trains like one step over the large batch (the
masked-token losses normalised over the whole step, the contrastive negatives from the whole step), and the
contrastive features cached for a step equal the training forward's, drop path included."""

from __future__ import annotations

import pytest
import torch

import musk
from musk.pretrain import load_config, read_log, train_contrastive, train_mim, train_tokenizer
from musk.pretrain.export import musk_state_from_checkpoint
from musk.pretrain.models import ContrastiveModel
from pretrain_synthetic import make_corpus, make_images, make_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("accumulation-data")
    images = make_images(root / "images", 32, seed=21)
    vqkd = root / "vqkd"
    train_tokenizer(load_config("tokenizer", "tiny", {"images": [str(images)], "output_dir": str(vqkd), "steps": 2,
                                                      "cpu": True, "tensorboard": False}))  # fmt: skip
    return {"images": images, "vqkd": vqkd, "corpus": make_corpus(root / "corpus.txt", 120, seed=21),
            "pairs": make_pairs(root / "pairs", 32, seed=22)}  # fmt: skip


def _runs(train, stage: str, tmp_path, accumulations, **overrides) -> dict[int, tuple[list[dict], dict]]:
    """The same global batch of 8 for each number of accumulation steps: (log rows, final MUSK weights)."""
    runs = {}
    for accum in accumulations:
        out = tmp_path / f"accum{accum}"
        config = load_config(stage, "tiny", {"output_dir": str(out), "steps": 4, "batch_size": 8, "lr": 3e-3,
                                             "grad_accum": accum, "cpu": True, "tensorboard": False,
                                             "drop_path": 0.0, **overrides})  # fmt: skip
        train(config)
        runs[accum] = read_log(out), musk_state_from_checkpoint(out)
    return runs


def _assert_same_training(runs: dict, keys: tuple[str, ...]) -> None:
    (rows, weights), *others = runs.values()
    assert rows[-1]["loss"] != pytest.approx(rows[0]["loss"], rel=1e-3)  # the runs did train
    for other_rows, other_weights in others:
        for a, b in zip(rows, other_rows, strict=True):
            for key in keys:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
        for name, value in weights.items():
            if name.endswith("k_proj.A.bias") or name.endswith("k_proj.B.bias"):
                continue  # softmax ignores a key bias: its gradient is rounding noise, which Adam amplifies
            # equal up to rounding, which Adam turns into update differences where a gradient is ~0: the
            # largest stays under a tenth of one step's update (lr 3e-3), the mean under a thousandth (1e-7 to
            # 1e-6 as CPUs' kernels round differently)
            diff = (other_weights[name] - value).abs()
            assert diff.max() < 3e-4 and diff.mean() < 1e-6, (name, diff.max().item(), diff.mean().item())


def test_masked_modelling_with_accumulation_equals_the_large_batch(data, tmp_path, tokenizer_file):
    """Micro-batches of 8, 4 and 2 hold different numbers of masked patches and words: the step's losses
    and gradients are still the mean over all its masked tokens."""
    runs = _runs(train_mim, "mim", tmp_path, (1, 2, 4), images=[str(data["images"])],
                 texts=[str(data["corpus"])], tokenizer=str(tokenizer_file), visual_tokenizer=str(data["vqkd"]),
                 text_batch_size=8)  # fmt: skip
    _assert_same_training(runs, ("loss", "mim_loss", "mlm_loss", "mim_acc", "mlm_acc", "grad_norm"))


def test_contrastive_with_accumulation_equals_the_large_batch(data, tmp_path, tokenizer_file):
    """Each micro-batch's captions meet the whole step's images as negatives (in-batch chance 1/8, not 1/4)."""
    runs = _runs(train_contrastive, "contrastive", tmp_path, (1, 2), pairs=[str(data["pairs"])],
                 tokenizer=str(tokenizer_file))  # fmt: skip
    _assert_same_training(runs, ("loss", "clip_loss", "mlm_loss", "clip_acc", "temperature", "grad_norm"))


def test_cached_features_equal_the_training_forward_with_drop_path():
    """The engine caches each micro-batch's features without gradients, then replays the RNG state so that
    the training forward drops the same paths: the replayed features equal the cached ones, others do not."""
    from accelerate import Accelerator

    from musk.pretrain.engine import StageSetup, _set_rng_state, _step_context

    accelerator = Accelerator(cpu=True)
    model = ContrastiveModel(musk.create_model("musk_tiny_patch16_64", drop_path_rate=0.5), decoder_depth=1).train()
    g = torch.Generator().manual_seed(0)

    def batch():
        ids = torch.randint(4, 500, (2, 10), generator=g)
        return {"images": torch.randn(2, 3, 64, 64, generator=g), "text_ids": ids, "masked_ids": ids,
                "text_padding_mask": torch.zeros_like(ids), "text_labels": torch.full_like(ids, -100)}  # fmt: skip

    batches = [batch(), batch()]
    batches[1]["text_labels"][:, 2] = 7
    setup = StageSetup(model, batches=None, samples_per_step=4, cache_features=True)
    context, states = _step_context(accelerator, model, setup, batches)
    assert context.targets == {"mlm": 2.0} and context.micro_batches == 2
    image, text = context.features
    assert image.shape == text.shape == (4, model.musk.embed_dim)
    _set_rng_state(states[1], accelerator.device)
    replayed = model(batches[1], features_only=True)
    torch.testing.assert_close(replayed[0], image[2:], rtol=0, atol=0)
    torch.testing.assert_close(replayed[1], text[2:], rtol=0, atol=0)
    other = model(batches[1], features_only=True)  # another draw of drop path
    assert not torch.allclose(other[0], image[2:])
