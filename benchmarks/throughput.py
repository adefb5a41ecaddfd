"""Inference throughput of MUSK on this machine, as a fraction of the measured fp32 matmul peak.

    python benchmarks/throughput.py --model musk_large_patch16_384 --batch_size 4 --threads 2

Prints images/s, texts/s, the model's achieved GFLOP/s against a plain matmul's GFLOP/s measured in
the same run (so a busy machine affects both), and the process's peak resident memory.
Each batch runs as the package runs it (``musk.streams``): by default one concurrent call per thread on a
part of the batch; ``--streams 1`` measures one call over the whole batch with all threads.
FLOPs are counted analytically (2 per multiply-add) for the patch projection, every linear layer,
and the two attention products; elementwise work is not counted.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import timm
import torch

import musk  # noqa: F401  (registers the architectures)
from musk.runtime import DTYPES
from musk.streams import default_streams, run_in_streams


def matmul_peak_gflops(n: int, repeats: int, dtype: torch.dtype) -> float:
    """Best GFLOP/s of an (n x n) @ (n x n) matmul into a preallocated output.

    A fresh 16 MB output is a new mapping for glibc's allocator whose page faults would be timed as matmul.
    """
    a, b, out = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def encoder_flops(cfg, tokens: int) -> float:
    """FLOPs of the multiway encoder over one sequence of ``tokens`` tokens."""
    d, f = cfg.embed_dim, cfg.ffn_dim
    linear = 2 * tokens * (4 * d * d + 2 * d * f)
    attention = 2 * 2 * tokens * tokens * d
    return cfg.depth * (linear + attention)


def image_flops(cfg) -> float:
    patches = cfg.num_patches
    embed = 2 * patches * d_in(cfg) * cfg.embed_dim
    return embed + encoder_flops(cfg, patches + 1) + 2 * cfg.embed_dim**2


def d_in(cfg) -> int:
    return cfg.in_chans * cfg.patch_size**2


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="musk_large_patch16_384")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--text_len", type=int, default=100, help="tokens per text (100 = upstream padding)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--matmul_n", type=int, default=2048)
    ap.add_argument("--streams", type=int, default=None, help="concurrent calls per batch (default: --threads)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    streams = default_streams("cpu") if args.streams is None else args.streams
    dtype = DTYPES[args.precision]
    model = timm.create_model(args.model).eval().to(dtype)
    cfg = model.config
    rss_model = peak_rss_gib()
    images = torch.randn(args.batch_size, 3, cfg.img_size, cfg.img_size, dtype=dtype)
    ids = torch.randint(4, 64000, (args.batch_size, args.text_len))
    ids[:, 0], ids[:, -1] = 0, 2

    def encode_images() -> torch.Tensor:
        return run_in_streams(model.encode_image, images, streams)

    def encode_texts() -> torch.Tensor:
        return run_in_streams(model.encode_text, ids, streams)

    with torch.inference_mode():
        encode_images()  # warm-up
        encode_texts()
        image_times, fractions, peaks = [], [], []
        for _ in range(args.iters):
            # the peak is sampled right before and after each pass, so both see the same machine load
            before = matmul_peak_gflops(args.matmul_n, 3, dtype)
            image_times.append(_timed(encode_images))
            peak = max(before, matmul_peak_gflops(args.matmul_n, 3, dtype))
            peaks.append(peak)
            fractions.append(image_flops(cfg) * args.batch_size / image_times[-1] / 1e9 / peak)
        text_times = [_timed(encode_texts) for _ in range(args.iters)]

    t_img = statistics.median(image_times)
    t_txt = statistics.median(text_times)
    achieved = image_flops(cfg) * args.batch_size / t_img / 1e9
    print(f"model {args.model}, {args.precision}, batch {args.batch_size}, {args.threads} threads, {streams} streams")
    print(f"images/s            {args.batch_size / t_img:8.3f}   (median of {args.iters}, {t_img:.2f} s per batch)")
    print(f"texts/s             {args.batch_size / t_txt:8.3f}   ({args.text_len} tokens each)")
    print(f"model GFLOP/s       {achieved:8.1f}   ({image_flops(cfg) / 1e9:.1f} GFLOP per image)")
    n = args.matmul_n
    print(f"matmul peak GFLOP/s {statistics.median(peaks):8.1f}   (median; {n}x{n} matmul, best of 6 around each pass)")
    fraction, best = statistics.median(fractions), max(fractions)
    print(f"fraction of peak    {fraction:8.1%}   (median of per-pass ratios; best {best:.1%})")
    print(f"peak RSS            {peak_rss_gib():8.2f} GiB   (after building the model: {rss_model:.2f} GiB)")


if __name__ == "__main__":
    main()
