"""FSDP and DeepSpeed ZeRO-2 through `accelerate launch` on two CPU processes (gloo), with the committed
docs/accelerate/fsdp.yaml and deepspeed_zero2.yaml adapted to CPU: the same loss trajectory and retrieval
scores as one process with the same global batch, and checkpoints (FSDP FULL_STATE_DICT and
SHARDED_STATE_DICT, DeepSpeed) that export to weights ``musk.create_model`` loads strictly, equal to the
single process's. A DeepSpeed run resumed from its checkpoint continues the uninterrupted losses."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import musk
from musk.pretrain import export_weights, read_log
from musk.training.checkpoint import load_checkpoint
from pretrain_synthetic import make_pairs

pytest.importorskip("accelerate")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
KEYS = ("loss", "clip_loss", "mlm_loss", "clip_acc", "grad_norm", "lr")


def _contrastive(out: Path, data: dict, steps: int) -> list[str]:
    # min_lr = lr: a constant lr, so a 2-step run follows the first 2 steps of the 4-step one
    return ["-m", "musk", "pretrain", "contrastive", "--recipe", "tiny", "--output_dir", str(out),
            "--pairs", str(data["pairs"]), "--device", "cpu", "--steps", str(steps), "--batch_size", "8",
            "--set", f"tokenizer={data['tokenizer']}", "--set", f"eval_pairs={data['eval_pairs']}",
            "--set", "save_every=2", "--set", "min_lr=1e-3", "--set", "tensorboard=false"]  # fmt: skip


def _run(cmd: list[str], env: dict = ENV) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _launch(tmp_path: Path, example: str, args: list[str], **settings) -> subprocess.CompletedProcess:
    """``accelerate launch`` with docs/accelerate/<example> on 2 CPU processes in fp32, ``settings``
    updating its ``fsdp_config`` or ``deepspeed_config``."""
    config = yaml.safe_load((REPO / "docs" / "accelerate" / example).read_text())
    config.update(num_processes=2, mixed_precision="no")
    config["fsdp_config" if "fsdp_config" in config else "deepspeed_config"].update(settings)
    path = tmp_path / f"accelerate_{example}"
    path.write_text(yaml.safe_dump(config))
    launcher = Path(sys.executable).with_name("accelerate")
    return _run([str(launcher), "launch", "--config_file", str(path), *args])


def _fsdp(tmp_path: Path, state_dict_type: str, args: list[str]) -> subprocess.CompletedProcess:
    # no module-state sync on CPU (accelerate does it through a GPU); every process builds the same model
    return _launch(tmp_path, "fsdp.yaml", args, fsdp_state_dict_type=state_dict_type, fsdp_sync_module_states=False,
                   fsdp_cpu_ram_efficient_loading=False)  # fmt: skip


def _eval_rows(run: Path) -> list[dict]:
    with open(run / "eval.csv", newline="") as f:
        return list(csv.DictReader(f))


def _same_losses(expected: list[dict], got: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for a, b in zip(expected, got, strict=True):
        for key in KEYS:
            assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-5), (a["step"], key)


def _same_scores(expected: list[dict], got: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in expected] and list(got[0]) == list(expected[0])
    for a, b in zip(expected, got, strict=True):
        for key in a:
            assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-6), (a["step"], key)


def _same_weights(reference: Path, exported: Path) -> None:
    model = musk.create_model("musk_tiny_patch16_64", pretrained=exported)  # strict loading
    assert model.logit_scale.shape == ()  # the 1-element vector FSDP trained is a scalar again
    expected = load_file(str(reference))
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        if key.endswith(("k_proj.A.bias", "k_proj.B.bias")):
            continue  # softmax ignores a key bias: its gradient is rounding noise, which Adam amplifies
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def single(tmp_path_factory, tokenizer_file):
    """One process, 4 steps, checkpoints at steps 2 and 4 (exported)."""
    root = tmp_path_factory.mktemp("fsdp")
    data = {"pairs": make_pairs(root / "pairs", 32, seed=12), "eval_pairs": make_pairs(root / "held", 16, seed=13),
            "tokenizer": tokenizer_file}  # fmt: skip
    run = root / "single"
    _run([sys.executable, *_contrastive(run, data, 4)])
    exports = {
        s: export_weights(run / "checkpoints" / f"step_{s:08d}", root / f"single_{s}.safetensors") for s in (2, 4)
    }
    assert json.loads((run / "provenance.json").read_text())["distributed_type"] == "NO"
    return {"data": data, "run": run, "log": read_log(run), "exports": exports}


def test_fsdp_follows_one_process_and_resumes(single, tmp_path):
    """FULL_STATE_DICT: 2 steps, then the same command for 4 resumes at step 2; the 4 logged steps, the
    retrieval scores at both checkpoints (evaluated on a copy gathered from the shards) and the exported
    weights are those of one process."""
    run = tmp_path / "fsdp"
    _fsdp(tmp_path, "FULL_STATE_DICT", _contrastive(run, single["data"], 2))
    record = json.loads((run / "provenance.json").read_text())
    assert (record["distributed_type"], record["processes"]) == ("FSDP", 2)
    assert (run / "checkpoints" / "step_00000002" / "pytorch_model_fsdp.bin").is_file()  # FSDP's own saving path
    proc = _fsdp(tmp_path, "FULL_STATE_DICT", _contrastive(run, single["data"], 4))
    assert "resumed from" in proc.stderr

    _same_losses(single["log"], read_log(run))
    assert single["log"][-1]["loss"] != pytest.approx(single["log"][0]["loss"], rel=1e-3)  # it did train
    expected, got = _eval_rows(single["run"]), _eval_rows(run)
    assert [r["step"] for r in got] == ["2", "4"]
    _same_scores(expected, got)
    assert float(expected[-1]["image_to_text_R@1"]) > 1 / 16  # not a constant: retrieval above chance

    exported = export_weights(run / "checkpoints" / "step_00000004", tmp_path / "fsdp.safetensors")
    _same_weights(single["exports"][4], exported)


def test_sharded_fsdp_checkpoint_exports_but_does_not_resume(single, tmp_path):
    """SHARDED_STATE_DICT: every process writes its shard; the export merges them in one process. Resuming
    from it is refused (accelerate would load no optimizer moments into the fresh optimizer)."""
    run = tmp_path / "sharded"
    _fsdp(tmp_path, "SHARDED_STATE_DICT", _contrastive(run, single["data"], 2))
    checkpoint = run / "checkpoints" / "step_00000002"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and not list(checkpoint.glob("*.bin"))
    _same_losses(single["log"][:2], read_log(run))
    exported = tmp_path / "sharded.safetensors"
    _run([sys.executable, "-m", "musk", "pretrain", "export", str(run), "-o", str(exported)])
    _same_weights(single["exports"][2], exported)
    with pytest.raises(ValueError, match="SHARDED_STATE_DICT checkpoint: resuming from it would silently drop"):
        load_checkpoint(None, checkpoint)  # refused before accelerate is asked to load anything


def test_deepspeed_zero2_follows_one_process_and_resumes(single, tmp_path):
    """ZeRO-2 (DeepSpeed's CPU accelerator): 2 steps, then the same command for 4 resumes at step 2; the 4
    logged steps, the retrieval scores and the exported weights are those of one process."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install --no-build-isolation deepspeed")
    run = tmp_path / "zero2"
    _launch(tmp_path, "deepspeed_zero2.yaml", _contrastive(run, single["data"], 2))
    record = json.loads((run / "provenance.json").read_text())
    assert (record["distributed_type"], record["processes"]) == ("DEEPSPEED", 2)
    proc = _launch(tmp_path, "deepspeed_zero2.yaml", _contrastive(run, single["data"], 4))
    assert "resumed from" in proc.stderr

    _same_losses(single["log"], read_log(run))
    _same_scores(_eval_rows(single["run"]), _eval_rows(run))
    exported = export_weights(run / "checkpoints" / "step_00000004", tmp_path / "zero2.safetensors")
    _same_weights(single["exports"][4], exported)
