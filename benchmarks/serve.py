"""``musk serve`` against the library in the same run: embedding throughput, search latency, overload.

    python benchmarks/serve.py                                   # the tiny model, random weights
    python benchmarks/serve.py --model musk_large_patch16_384 --weights /path/model.safetensors --device cuda
    python benchmarks/serve.py --index INDEX_DIR ...             # + text-search latency through the service
    python benchmarks/serve.py --vectors 1000000 --tokenizer tokenizer.spm   # ... on a random 1 M-vector index

1. Image embedding throughput through the service (8 concurrent clients, base64 JPEG or PNG files over loopback
   HTTP) against direct ``embed_images`` calls on the same images as files, in this process, in interleaved
   rounds of the same run: the median ratio is the service's efficiency. The clients share the machine's cores
   with the service, as they would not in use.
2. With ``--index``: p50/p95 latency of a text search through the service (one client at a time).
3. Overload: requests offered at 4x the measured capacity for a bounded time; the answers' status codes (only
   200, 429 and 503 are acceptable) and the service's health afterwards.

The service runs as a real ``musk serve`` process on a free loopback port; all traffic stays on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import musk  # noqa: F401  (registers the architectures)
from musk import load
from musk.models.weights import weights_option

JSON = {"Content-Type": "application/json"}
QUERIES = ["tumour budding at the invasive front", "mitotic figures", "lymphocytic infiltrate", "necrosis", "fat"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="musk_tiny_patch16_64")
    p.add_argument("--weights", default="none")
    p.add_argument("--tokenizer", default=None, help="tokenizer.spm (needed for --index with random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--index", default=None, help="an index folder: also measure text-search latency")
    p.add_argument("--vectors", type=int, default=0, help="without --index: build an index of this many random vectors")
    p.add_argument("--images", type=int, default=512, help="images embedded per measurement")
    p.add_argument("--image_size", type=int, default=224, help="side of the PNGs sent")
    p.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="files sent (patches are JPEG in slides)")
    p.add_argument("--per_request", type=int, default=4, help="images per request")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=32, help="direct batch size = the service's --max_batch")
    p.add_argument("--rounds", type=int, default=3, help="interleaved direct/service measurements")
    p.add_argument("--searches", type=int, default=200)
    p.add_argument("--overload_s", type=float, default=10.0, help="seconds of 4x overload (0: none)")
    return p.parse_args()


def make_images(count: int, side: int, folder: Path, suffix: str) -> list[Path]:
    """Image files (``.png`` or ``.jpg``, quality 90) of smooth random colour fields (they compress like tissue,
    unlike white noise)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        path = folder / f"img{i:05d}{suffix}"
        Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def start_service(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "musk", "serve", "--port", str(port), "--model", args.model, "--weights",
               args.weights, "--device", args.device, "--max_batch", str(args.batch_size)]  # fmt: skip
    command += ["--timeout_s", "3600"]  # a large model on a CPU may take minutes per round of 8 clients
    command += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    command += ["--index", args.index] if args.index else []
    env = {k: v for k, v in os.environ.items() if k != "MUSK_API_KEY"}
    proc = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        if proc.poll() is not None:
            sys.exit(f"musk serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit("musk serve did not become ready")


def synthetic_index(lm, vectors: int, folder: Path) -> Path:
    """An index of ``vectors`` random unit vectors (as ``proj`` features) in 100 slides, built by musk.search."""
    from musk.search import build_index
    from musk.wsi.h5 import write_patch_file

    rng = np.random.default_rng(0)
    features = folder / "features"
    features.mkdir()
    per_slide = -(-vectors // 100)
    for slide in range(100):
        n = min(per_slide, vectors - slide * per_slide)
        values = rng.standard_normal((n, lm.embed_dim)).astype(np.float32)
        values /= np.linalg.norm(values, axis=1, keepdims=True)
        coords = np.stack([(np.arange(n) % 1000) * 256, (np.arange(n) // 1000) * 256], 1)
        attrs = {"name": f"slide{slide:03d}", "patch_size": 256, "patch_size_level0": 256, "target_magnification": 20.0,
                 "level0_magnification": 20.0, "encoder": lm.architecture, "weights_sha256": lm.weights_sha256,
                 "feature_kind": "proj"}  # fmt: skip
        write_patch_file(features / f"slide{slide:03d}.h5", coords, {"features": values}, attrs)
    build_index([features], folder / "index", lm)
    return folder / "index"


def direct_rate(lm, paths: list[Path], batch_size: int) -> float:
    lm.embed_images(paths[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    lm.embed_images(paths, batch_size=batch_size)
    return len(paths) / (time.perf_counter() - start)


def service_rate(url: str, bodies: list[tuple[int, bytes]], clients: int) -> float:
    """Images per second with ``clients`` threads each sending its share of ``bodies`` (image count, JSON) one
    after another, over one kept-alive connection each. The standard library's client: it costs the shared
    cores a sixth of the CPU per request that httpx's does (0.3 against 1.9 ms for 4 images), and what is measured
    is the service."""
    host, port = url.removeprefix("http://").split(":")
    shares = [bodies[i::clients] for i in range(clients)]

    def work(share: list[tuple[int, bytes]]) -> int:
        done = 0
        connection = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            for count, body in share:
                connection.request("POST", "/v1/embeddings", body, JSON)
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200:
                    raise RuntimeError(f"the service answered {response.status}: {answer[:300]!r}")
                done += count
        finally:
            connection.close()
        return done

    with ThreadPoolExecutor(clients) as pool:
        work(shares[0][:1])  # warm-up
        start = time.perf_counter()
        total = sum(pool.map(work, shares))
    return total / (time.perf_counter() - start)


def search_latency(url: str, count: int) -> tuple[float, float]:
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/search", json={"text": QUERIES[0], "k": 20}).raise_for_status()
        for i in range(count):
            start = time.perf_counter()
            client.post("/v1/search", json={"text": QUERIES[i % len(QUERIES)], "k": 20}).raise_for_status()
            times.append(time.perf_counter() - start)
    quantiles = statistics.quantiles(times, n=20)
    return statistics.median(times) * 1000, quantiles[18] * 1000


def overload(url: str, bodies: list[tuple[int, bytes]], rate: float, seconds: float) -> collections.Counter:
    """Requests offered at ``rate`` per second for ``seconds`` (open loop: nobody waits for an answer before
    sending the next; bounded in count), their status codes."""

    async def offer() -> collections.Counter:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

            async def send(body: bytes):
                try:
                    return (await client.post("/v1/embeddings", content=body, headers=JSON)).status_code
                except httpx.TransportError as e:
                    return type(e).__name__

            start, tasks = time.perf_counter(), []
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(send(bodies[i % len(bodies)][1])))
            return collections.Counter(await asyncio.gather(*tasks))

    return asyncio.run(offer())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="musk-serve-bench-") as tmp:
        paths = make_images(args.images, args.image_size, Path(tmp), ".jpg" if args.format == "jpeg" else ".png")
        encoded = [{"image": base64.b64encode(p.read_bytes()).decode()} for p in paths]
        chunks = [encoded[i : i + args.per_request] for i in range(0, len(encoded), args.per_request)]
        bodies = [(len(c), json.dumps({"model": args.model, "input": c}).encode()) for c in chunks]  # encoded once
        lm = load(args.model, weights=weights_option(args.weights), device=args.device, tokenizer=args.tokenizer)
        if args.vectors and not args.index:
            args.index = str(synthetic_index(lm, args.vectors, Path(tmp)))
        proc, url = start_service(args, Path(tmp) / "serve.log")
        try:
            run_measurements(args, lm, paths, bodies, url, proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
        for line in (Path(tmp) / "serve.log").read_text().splitlines():
            if "concurrent model calls" in line:  # the engine's choice of streams (musk.serve.engine)
                print("service:", line.split(":", 2)[-1].strip())


def run_measurements(args, lm, paths, bodies, url, pid: int) -> None:
    size = sum(p.stat().st_size for p in paths) / len(paths) / 1024
    print(f"{args.model} on {args.device}, {len(paths)} {args.format.upper()} files of {args.image_size} px "
          f"({size:.0f} KiB each), {os.cpu_count()} CPUs")  # fmt: skip
    ratios, served = [], []
    for round_ in range(args.rounds):  # interleaved: a change in the machine's load hits both sides
        cpu = time.process_time()
        direct = direct_rate(lm, paths, args.batch_size)
        direct_cpu = (time.process_time() - cpu) / (len(paths) + args.batch_size)
        cpu = cpu_seconds(pid)
        served.append(service_rate(url, bodies, args.clients))
        served_cpu = (cpu_seconds(pid) - cpu) / (len(paths) + args.per_request)
        ratios.append(served[-1] / direct)
        print(f"round {round_ + 1}: direct embed_images {direct:7.1f} images/s ({1000 * direct_cpu:.2f} CPU ms/image); "
              f"service, {args.clients} clients x {args.per_request} images/request, {served[-1]:7.1f} images/s "
              f"({1000 * served_cpu:.2f} CPU ms/image in its process): {ratios[-1]:.1%}")  # fmt: skip
    print(f"service / direct throughput: median {statistics.median(ratios):.1%} over {args.rounds} rounds")
    if args.index:
        p50, p95 = search_latency(url, args.searches)
        print(f"text search through the service, {args.vectors or 'the index'} vectors: p50 {p50:.1f} ms, "
              f"p95 {p95:.1f} ms ({args.searches} queries, one at a time)")  # fmt: skip
    if args.overload_s > 0:
        overload_report(url, bodies, statistics.median(served) / args.per_request, args.overload_s)


def overload_report(url: str, bodies: list[tuple[int, bytes]], capacity: float, seconds: float) -> None:
    statuses = overload(url, bodies, 4 * capacity, seconds)
    healthy = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    print(f"overload at 4x capacity ({4 * capacity:.0f} requests/s for {seconds:g} s): {dict(statuses)}")
    unexpected = {code: n for code, n in statuses.items() if code not in (200, 429, 503)}
    print(f"answers other than 200/429/503: {unexpected or 'none'}; healthy afterwards: {healthy}")


if __name__ == "__main__":
    main()
