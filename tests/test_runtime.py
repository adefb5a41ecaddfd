"""musk.runtime: --precision choices turned into accelerate's mixed-precision modes; devices."""

import pytest
import torch

from musk.runtime import accelerate_mixed_precision

CPU_MODES = [("fp32", "no"), ("fp16", "fp16"), ("bf16", "bf16"), ("auto", "no")]


@pytest.mark.parametrize(("precision", "expected"), CPU_MODES)
def test_modes_on_cpu(precision, expected):
    assert accelerate_mixed_precision(precision, cpu=True) == expected


def test_auto_on_a_gpu_machine_prefers_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert accelerate_mixed_precision("auto", cpu=False) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert accelerate_mixed_precision("auto", cpu=False) == "bf16"
    assert accelerate_mixed_precision("auto", cpu=True) == "no"
