"""``musk serve`` as a real process on a free loopback port, for the service's tests and benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = "musk_tiny_patch16_64"
#: Seconds a service gets to load the tiny model and answer /readyz (a loaded 2-core machine is slow).
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """A running ``python -m musk serve``; ``url`` is its base address, ``log`` its output file."""

    def __init__(self, args: list[str], log: Path, api_key: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.api_key = api_key
        paths = [p for p in (os.environ.get("PYTHONPATH"), str(REPO / "src")) if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        env.pop("MUSK_API_KEY", None)
        if api_key:
            env["MUSK_API_KEY"] = api_key  # as documented: the key through the environment, not argv
        command = [sys.executable, "-m", "musk", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=options.pop("timeout", 120), **options)

    def wait_ready(self) -> ServiceProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"musk serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"musk serve was not ready within {START_TIMEOUT_S} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not stop in ``timeout`` s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def tiny_service_args(tokenizer: Path, *extra: str) -> list[str]:
    return ["--model", TINY, "--weights", "none", "--device", "cpu", "--tokenizer", str(tokenizer), *extra]


def slide_patches(slide: Path, count: int, size: int = 96) -> list[Image.Image]:
    """``count`` RGB regions of the real slide, along its diagonal."""
    import openslide

    with openslide.OpenSlide(str(slide)) as s:
        width, height = s.dimensions
        return [
            s.read_region((i * (width - size) // count, i * (height - size) // count), 0, (size, size)).convert("RGB")
            for i in range(count)
        ]


def vectors_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def build_test_index(folder: Path, sample_slide: Path, tokenizer: Path) -> Path:
    """A real index of two slides (a copy of the sample slide and a link to it) made by ``musk wsi run`` and
    ``musk.search.build_index`` with the tiny model's seed-0 random weights; returns the index folder."""
    import shutil

    from musk import load
    from musk.cli import main
    from musk.search import build_index

    slides = folder / "slides"
    slides.mkdir()
    shutil.copy(sample_slide, slides / "cmu-a.svs")
    (slides / "cmu-b.svs").symlink_to(sample_slide)
    job = folder / "job"
    model = ["--model", TINY, "--weights", "none", "--device", "cpu", "--features", "cls"]
    assert main(["wsi", "run", "--slides", str(slides), "--job_dir", str(job), *model]) == 0
    cases = folder / "cases.csv"
    cases.write_text("slide,case,label\ncmu-a,case-1,tumor\ncmu-b,case-2,normal\n")
    lm = load(TINY, weights=None, device="cpu", tokenizer=tokenizer, seed=0)
    build_index([job], folder / "index", lm, cases=cases)
    return folder / "index"
