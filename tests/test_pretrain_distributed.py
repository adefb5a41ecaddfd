"""Real processes: a run killed with SIGKILL resumes from its last checkpoint and reproduces the losses of
an uninterrupted run; two processes under `accelerate launch` give the loss trajectory of one process with
the same global batch. Both through the `musk pretrain` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from musk.cli import main
from musk.pretrain import read_log
from pretrain_synthetic import make_corpus, make_images, make_pairs

pytest.importorskip("accelerate")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-data")
    images = make_images(root / "images", 32, seed=11)
    tokenizer = root / "vqkd"
    status = main(["pretrain", "tokenizer", "--recipe", "tiny", "--images", str(images), "-o", str(tokenizer),
                   "--steps", "3", "--device", "cpu", "--set", "tensorboard=false"])  # fmt: skip
    assert status == 0 and (tokenizer / "visual_tokenizer.safetensors").is_file()
    return {"images": images, "corpus": make_corpus(root / "corpus.jsonl", 100, seed=11, jsonl=True),
            "pairs": make_pairs(root / "pairs", 32, seed=12), "vqkd": tokenizer}  # fmt: skip


def _mim_command(data, out: Path, tokenizer_file) -> list[str]:
    return [sys.executable, "-m", "musk", "pretrain", "mim", "--recipe", "tiny", "--output_dir", str(out),
            "--images", str(data["images"]), "--texts", str(data["corpus"]), "--device", "cpu", "--steps", "6",
            "--set", f"tokenizer={tokenizer_file}", "--set", f"visual_tokenizer={data['vqkd']}",
            "--set", "save_every=2", "--set", "drop_path=0.1", "--set", "tensorboard=false",
            "--batch_size", "8", "--set", "text_batch_size=8"]  # fmt: skip


def test_killed_run_resumes_with_the_uninterrupted_losses(data, tmp_path, tokenizer_file):
    whole = tmp_path / "whole"
    proc = subprocess.run(_mim_command(data, whole, tokenizer_file), capture_output=True, text=True, env=ENV,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    victim = subprocess.Popen(_mim_command(data, killed, tokenizer_file), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=ENV)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step_00000002").exists():
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    still_running = victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert still_running and victim.returncode == -signal.SIGKILL
    steps_before = [r["step"] for r in read_log(killed)]
    assert max(steps_before) < 6  # killed part-way

    proc = subprocess.run(_mim_command(data, killed, tokenizer_file), capture_output=True, text=True, env=ENV,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    expected, resumed = read_log(whole), read_log(killed)
    assert [r["step"] for r in resumed] == list(range(1, 7))  # rows past the checkpoint were replaced
    for a, b in zip(expected, resumed, strict=True):
        for key in ("loss", "mim_loss", "mlm_loss", "mim_acc", "mlm_acc", "lr", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (a["step"], key)
    assert not list((killed / "checkpoints").glob(".*partial"))  # no half-written checkpoint left behind


def _contrastive(out: Path, data, tokenizer_file) -> list[str]:
    return ["-m", "musk", "pretrain", "contrastive", "--recipe", "tiny", "--output_dir", str(out),
            "--pairs", str(data["pairs"]), "--device", "cpu", "--steps", "4", "--batch_size", "8",
            "--set", f"tokenizer={tokenizer_file}", "--set", "tensorboard=false"]  # fmt: skip


def test_two_processes_follow_the_single_process_losses(data, tmp_path, tokenizer_file):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): each process holds half of every
    global batch (in one micro-batch, or two accumulated); the contrastive negatives are gathered with
    gradients (and cached over the accumulated step), the MLM loss is averaged over the masked tokens of
    both processes and micro-batches. (accelerate 1.x's `--cpu --num_processes 2` starts one process only.)"""
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, *_contrastive(single, data, tokenizer_file)], capture_output=True,
                          text=True, env=ENV, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    launcher = Path(sys.executable).with_name("accelerate")
    env = {**ENV, "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    one = read_log(single)
    assert json.loads((single / "provenance.json").read_text())["processes"] == 1
    assert one[-1]["loss"] != pytest.approx(one[0]["loss"], rel=1e-3)  # the runs did train
    for accum in (1, 2):  # 2 processes x 4 samples, then 2 processes x 2 accumulation steps x 2 samples
        double = tmp_path / f"double-accum{accum}"
        cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               *_contrastive(double, data, tokenizer_file), "--set", f"grad_accum={accum}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((double / "provenance.json").read_text())["processes"] == 2
        two = read_log(double)
        assert len(one) == len(two) == 4
        for a, b in zip(one, two, strict=True):
            for key in ("loss", "clip_loss", "mlm_loss", "clip_acc", "grad_norm"):
                assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-5), (accum, a["step"], key)
