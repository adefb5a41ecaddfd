"""musk.training: the precision rule of training loops and model selection."""

from __future__ import annotations

import math

import pytest
import torch

from musk.training.precision import TrainingPrecision
from musk.training.selection import ModelSelection


def test_selection_keeps_the_best_and_stops_after_patience():
    selection = ModelSelection(mode="max", patience=2)
    improved = [selection.update(epoch, value) for epoch, value in enumerate([0.5, 0.7, 0.6, 0.7, 0.65], 1)]
    assert improved == [True, True, False, False, False]
    assert (selection.best, selection.best_epoch, selection.should_stop) == (0.7, 2, True)
    lowest = ModelSelection(mode="min")
    assert [lowest.update(e, v) for e, v in enumerate([3.0, math.nan, 2.0, 2.5], 1)] == [True, False, True, False]
    assert lowest.best_epoch == 3 and not lowest.should_stop  # patience 0: never stops


def test_selection_state_survives_a_resume():
    first = ModelSelection(mode="min", patience=3)
    for epoch, value in enumerate([1.0, 0.8, 0.9], 1):
        first.update(epoch, value)
    resumed = ModelSelection(mode="min", patience=3)
    resumed.load_state_dict(first.state_dict())
    assert resumed.update(4, 0.95) is False and resumed.stale == 2 and resumed.best_epoch == 2
    with pytest.raises(ValueError, match="mode must be"):
        ModelSelection(mode="best")


def _fp16_gradient(scaled: bool) -> torch.Tensor:
    weight = torch.nn.Parameter(torch.ones(4, 1))
    precision = TrainingPrecision("fp16", "cpu")
    with precision.autocast():
        out = torch.full((1, 4), 1e-4) @ weight  # a matmul: computed in fp16 under autocast
        assert out.dtype == torch.float16
        loss = out.float().sum() * 1e-4  # (losses run in fp32) d loss / d weight = 1e-8: below fp16 subnormals
    if scaled:
        precision.backward(loss)
        precision.scaler.unscale_(torch.optim.SGD([weight], lr=1.0))
    else:
        loss.backward()
    return weight.grad


def test_fp16_training_scales_the_loss_so_small_gradients_survive():
    assert torch.count_nonzero(_fp16_gradient(scaled=False)) == 0  # the plain fp16 backward underflows
    torch.testing.assert_close(_fp16_gradient(scaled=True), torch.full((4, 1), 1e-8), rtol=1e-2, atol=0)
    weight = torch.nn.Parameter(torch.zeros(2))
    precision = TrainingPrecision("fp16", "cpu")
    precision.backward((weight * 3.0).sum())
    precision.step(torch.optim.SGD([weight], lr=1.0), [weight], max_grad_norm=1.0)
    torch.testing.assert_close(weight.detach(), torch.full((2,), -(0.5**0.5)))  # clipped after unscaling
    assert TrainingPrecision("bf16", "cpu").scaler.is_enabled() is False
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainingPrecision("auto", "cpu")
