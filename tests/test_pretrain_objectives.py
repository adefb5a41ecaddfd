"""Pretraining objectives: the CLIP loss against a hand computation, features gathered across two real
processes with their gradients, the masked-token loss normalised over all processes, the caption decoder."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import musk
from musk.pretrain.models import CaptionDecoder, ContrastiveModel, MaskedModellingModel
from musk.pretrain.objectives import StepContext, clip_loss, gather_with_grad, masked_token_loss

LABELS = torch.tensor([0, -100, 2, 3, -100, -100, -100, 1])


def _features(seed: int, n: int = 6, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return image, text


def _hand_clip(image: np.ndarray, text: np.ndarray, scale: float) -> float:
    """Symmetric InfoNCE written out with loops."""
    n = len(image)
    total = 0.0
    for i in range(n):
        row = [scale * float(image[i] @ text[j]) for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row))) / n / 2
        col = [scale * float(text[i] @ image[j]) for j in range(n)]
        total += -(col[i] - math.log(sum(math.exp(v) for v in col))) / n / 2
    return total


def test_clip_loss_equals_a_hand_computation():
    image, text = _features(0)
    logit_scale = torch.tensor(math.log(1 / 0.07))
    out = clip_loss(image, text, logit_scale)
    expected = _hand_clip(image.double().numpy(), text.double().numpy(), 1 / 0.07)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["clip_loss"] == pytest.approx(expected, rel=1e-5)
    assert out["temperature"] == pytest.approx(0.07, rel=1e-5)
    # matched features: the diagonal wins both ways
    perfect = clip_loss(image, image, logit_scale)
    assert perfect["clip_acc"] == 1.0 and perfect["loss"] < out["loss"]


def test_clip_temperature_is_capped_at_100():
    image, text = _features(1)
    capped = clip_loss(image, text, torch.tensor(math.log(1000.0)))
    assert capped["loss"].item() == pytest.approx(
        _hand_clip(image.double().numpy(), text.double().numpy(), 100.0), rel=1e-5
    )


def test_masked_token_loss_is_the_mean_over_masked_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 5, generator=g)
    labels = torch.tensor([0, -100, 2, 3, -100, 4, 1, -100, 0, 2])
    out = masked_token_loss(logits, labels, "mlm")
    keep = labels != -100
    log_probs = torch.log_softmax(logits[keep].double(), -1)
    expected = -log_probs[torch.arange(int(keep.sum())), labels[keep]].mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["mlm_acc"] == pytest.approx((logits[keep].argmax(-1) == labels[keep]).float().mean().item())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accumulate(rank: int, world: int, micro: int = 2) -> dict:
    """One step of ``micro`` micro-batches on this process (rows of micro-batch m: (m * world + rank) * b ...):
    the summed gradients of the shares and the summed metrics."""
    image, text = _features(4, n=8)
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    b = len(image) // (world * micro)
    step = StepContext(micro, features=(image.detach(), text.detach()), targets={"mlm": float((LABELS != -100).sum())})
    sums = {"clip_loss": 0.0, "clip_acc": 0.0, "temperature": 0.0, "mlm_loss": 0.0}
    for m in range(micro):
        rows = slice((m * world + rank) * b, (m * world + rank + 1) * b)
        context = replace(step, index=m)
        out = clip_loss(image[rows], text[rows], scale, context)
        token = masked_token_loss(logits[rows], LABELS[rows], "mlm", context)
        (out["loss"] + token["loss"]).backward()
        for key in sums:
            sums[key] += {**out, **token}[key]
    return {**sums, "image_grad": image.grad, "text_grad": text.grad, "scale_grad": scale.grad,
            "token_grad": logits.grad}  # fmt: skip


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image, text = _features(0)
        n = len(image) // world
        image = image[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        text = text[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
        out = clip_loss(image, text, scale)
        out["loss"].backward()
        # the token loss: uneven masked counts per process, still the global mean
        g = torch.Generator().manual_seed(3)
        logits = torch.randn(8, 5, generator=g)[rank * 4 : (rank + 1) * 4].requires_grad_(True)
        labels = LABELS[rank * 4 : (rank + 1) * 4]
        token = masked_token_loss(logits, labels, "mlm")
        token["loss"].backward()
        gathered = gather_with_grad(image.detach())
        torch.save({"image_grad": image.grad, "text_grad": text.grad, "scale_grad": scale.grad,
                    "clip_loss": out["clip_loss"], "local_loss": out["loss"].item(), "gathered": gathered,
                    "token_loss": token["mlm_loss"], "token_grad": logits.grad,
                    "accumulated": _accumulate(rank, world)},
                   os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What two real gloo processes computed (:func:`_worker`)."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_gather_with_gradients_across_two_processes_matches_one_process(ranks):
    """Two real gloo processes holding half of the batch each: under DDP's gradient averaging they follow
    the gradient of one process holding the whole batch (negatives from the global batch)."""

    image, text = _features(0)
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    single = clip_loss(image, text, scale)
    single["loss"].backward()

    assert torch.equal(ranks[0]["gathered"], image.detach())  # all rows, in rank order
    assert ranks[0]["clip_loss"] == pytest.approx(single["loss"].item(), rel=1e-5)
    assert np.mean([r["local_loss"] for r in ranks]) == pytest.approx(single["loss"].item(), rel=1e-5)
    # DDP averages over the processes: (1/2) x the gradient each process holds for its own rows
    image_grad = torch.cat([r["image_grad"] for r in ranks]) / 2
    text_grad = torch.cat([r["text_grad"] for r in ranks]) / 2
    torch.testing.assert_close(image_grad, image.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text_grad, text.grad, rtol=1e-5, atol=1e-6)
    assert np.mean([r["scale_grad"].item() for r in ranks]) == pytest.approx(scale.grad.item(), rel=1e-4)

    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    labels = LABELS
    whole = masked_token_loss(logits, labels, "mlm")
    whole["loss"].backward()
    assert ranks[0]["token_loss"] == pytest.approx(whole["mlm_loss"], rel=1e-6)
    token_grad = torch.cat([r["token_grad"] for r in ranks]) / 2
    torch.testing.assert_close(token_grad, logits.grad, rtol=1e-5, atol=1e-7)


def test_accumulated_micro_batches_on_two_processes_give_the_large_batch_gradient(ranks):
    """Two processes x two micro-batches, the step's features cached: the summed shares are the loss, the
    metrics and (after DDP's averaging) the gradients of one process holding the whole step."""
    ranks = [r["accumulated"] for r in ranks]
    whole = _accumulate(rank=0, world=1, micro=1)  # no accumulation, one process
    alone = clip_loss(*_features(4, n=8), torch.tensor(math.log(1 / 0.07)))
    assert whole["clip_loss"] == pytest.approx(alone["clip_loss"], rel=1e-6)
    for key in ("clip_loss", "clip_acc", "temperature", "mlm_loss"):
        for r in ranks:
            assert r[key] == pytest.approx(whole[key], rel=1e-5), key
    for key in ("image_grad", "text_grad", "token_grad"):  # each process holds the gradient of its rows
        torch.testing.assert_close((ranks[0][key] + ranks[1][key]) / 2, whole[key], rtol=1e-5, atol=1e-7)
    assert (ranks[0]["scale_grad"] + ranks[1]["scale_grad"]).item() / 2 == pytest.approx(
        whole["scale_grad"].item(), rel=1e-4
    )


def test_caption_decoder_reads_the_image():
    decoder = CaptionDecoder(16, 4, depth=2).eval()
    text = torch.randn(2, 5, 16)
    image = torch.randn(2, 9, 16)
    out = decoder(text, image)
    assert out.shape == (2, 5, 16)
    assert not torch.allclose(out, decoder(text, torch.randn(2, 9, 16)))
    # text rows do not see each other's images
    other = image.clone()
    other[1] = torch.randn(9, 16)
    torch.testing.assert_close(decoder(text, other)[0], out[0])


def _tiny():
    return musk.create_model("musk_tiny_patch16_64").train()


def test_pretraining_models_back_propagate_into_every_trained_parameter():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 500, (4, 12), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, 3:6] = ids[:, 3:6]
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, :6] = True
    batch = {"images": torch.randn(4, 3, 64, 64, generator=g), "image_mask": mask,
             "codes": torch.randint(0, 32, (4, 16), generator=g), "text_ids": ids,
             "text_padding_mask": torch.zeros_like(ids), "text_labels": labels, "masked_ids": ids}  # fmt: skip
    stage1 = MaskedModellingModel(_tiny(), 32)
    out = stage1(batch)
    assert out["total_loss"] == pytest.approx(out["mim_loss"] + out["mlm_loss"], rel=1e-6)
    assert out["mim_loss"] == pytest.approx(math.log(32), rel=0.2)  # near uniform at initialisation
    out["loss"].backward()
    missing = [n for n, p in stage1.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []

    stage2 = ContrastiveModel(_tiny(), decoder_depth=1, mlm_weight=0.1)
    out = stage2(batch)
    assert out["total_loss"] == pytest.approx(out["clip_loss"] + 0.1 * out["mlm_loss"], rel=1e-6)
    out["loss"].backward()
    missing = [n for n, p in stage2.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # DDP needs every trained parameter in the loss: what a stage does not use, it does not train
    frozen = {n for n, p in stage1.named_parameters() if not p.requires_grad}
    assert frozen == {"musk.vision_head.weight", "musk.language_head.weight", "musk.logit_scale"}
    assert {n for n, p in stage2.named_parameters() if not p.requires_grad} == {"musk.beit3.vision_embed.mask_token"}


def test_layer_decay_groups_and_the_schedule():
    from musk.training.optim import param_groups
    from musk.training.schedule import warmup_cosine

    model = ContrastiveModel(_tiny(), decoder_depth=1)
    groups = param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())

    def lr(name):
        return lr_of[id(named[name])]

    assert lr("musk.beit3.text_embed.weight") == (0.5**3, 0.05)  # embeddings: depth 2 + 1 halvings
    assert lr("musk.beit3.encoder.embed_positions.A.weight") == (0.5**3, 0.0)  # positions: no weight decay
    assert lr("musk.beit3.encoder.layers.0.self_attn.q_proj.A.weight") == (0.25, 0.05)
    assert lr("musk.beit3.encoder.layers.1.ffn.B.fc1.bias") == (0.5, 0.0)
    assert lr("decoder.blocks.0.ffn.0.weight") == (1.0, 0.05) and lr("musk.logit_scale") == (1.0, 0.0)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    # warm-up rises linearly, then a cosine falls to the floor
    assert [round(warmup_cosine(s, 3, 13, 0.1), 4) for s in (0, 1, 2)] == [0.25, 0.5, 0.75]
    assert warmup_cosine(3, 3, 13, 0.1) == 1.0 and warmup_cosine(8, 3, 13, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(13, 3, 13, 0.1) == pytest.approx(0.1)
