"""musk wsi extract in real processes: killed mid-job and resumed, and two processes under accelerate on CPU,
each ending with the same bytes as one uninterrupted process."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from musk.wsi.h5 import read_patch_file
from weights_file import save_weights
from wsi_synthetic import slide_pixels, write_pyramid

TINY = "musk_tiny_patch16_64"
NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Four 40x slides (tissue in different places) and tiny weights."""
    root = tmp_path_factory.mktemp("procs")
    slides = root / "slides"
    slides.mkdir()
    for i, name in enumerate(NAMES):
        x = 128 * i
        squares = [(256 + x, 256, 1024 + x, 1024), (1280 - x // 2, 512, 1792 - x // 2, 1280)]
        write_pyramid(slides / f"{name}.tif", slide_pixels((2048, 1536), squares, seed=i), mpp=0.25, levels=3)
    torch.manual_seed(5)
    weights = root / "tiny.safetensors"
    save_weights(timm.create_model(TINY), str(weights))
    return slides, weights


def extract_args(slides: Path, weights: Path, job_dir: Path) -> list[str]:
    return ["wsi", "extract", "--slides", str(slides), "--job_dir", str(job_dir), "--model", TINY,
            "--weights", str(weights), "--patch_size", "128", "--mag", "40", "--batch_size", "16",
            "--device", "cpu"]  # fmt: skip


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def musk_process(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "musk", *args], env=environment(), **kwargs)


def feature_bytes(job_dir: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted((job_dir / "features").glob("*.h5"))}


def statuses(job_dir: Path) -> dict[str, str]:
    with open(job_dir / "status.csv", newline="") as f:
        return {row["slide"]: row["status"] for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """Features of one uninterrupted process."""
    slides, weights = setup
    job_dir = tmp_path_factory.mktemp("reference") / "job"
    proc = musk_process(extract_args(slides, weights, job_dir), stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert statuses(job_dir) == dict.fromkeys(NAMES, "done")
    return feature_bytes(job_dir)


def test_killed_job_resumes_to_identical_features(setup, reference, tmp_path):
    slides, weights = setup
    job_dir = tmp_path / "job"
    proc = musk_process(extract_args(slides, weights, job_dir), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list((job_dir / "features").glob("[!.]*.h5")):  # the first finished feature file
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    finished = list((job_dir / "features").glob("[!.]*.h5"))
    assert 1 <= len(finished) < len(NAMES), "the kill came too late to interrupt the job"
    for path in finished:  # whatever carries a final name is complete
        assert read_patch_file(path).features.shape[1] == 64
    resumed = musk_process(extract_args(slides, weights, job_dir), stderr=subprocess.PIPE, text=True)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert statuses(job_dir) == dict.fromkeys(NAMES, "done")
    assert feature_bytes(job_dir) == reference
    assert not list(job_dir.rglob(".*partial*"))


def test_two_accelerate_processes_write_the_same_files_as_one(setup, reference, tmp_path):
    """(accelerate 1.x's `--cpu --num_processes 2` starts one process; `--multi_gpu` with `--device cpu` starts two
    through torchrun, on gloo.)"""
    slides, weights = setup
    job_dir = tmp_path / "job"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), "-m", "musk"]  # fmt: skip
    proc = subprocess.run([*launcher, *extract_args(slides, weights, job_dir)], env=environment(), capture_output=True,
                          text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == {"done": len(NAMES)}
    ranks = {json.loads((job_dir / "status" / f"{n}.json").read_text())["process"] for n in NAMES}
    assert ranks == {0, 1}  # both processes took slides
    assert feature_bytes(job_dir) == reference
