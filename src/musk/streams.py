"""Inference over a batch as several concurrent model calls on CPU, each with its own small thread team.

One call with N intra-op threads synchronises the N threads after every operator and runs the attention
kernel's small matrix products poorly in parallel. N calls on 1/N of the batch with one thread each keep
every core busy on its own work (the "streams" of CPU serving stacks); on the 2-core development machine
this raised the large model's share of the fp32 matmul peak by 3-6 points, to 84-89 %
(``benchmarks/throughput.py``).
The model is safe to call from several threads, so the parts need no copies of it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["default_streams", "run_in_streams"]


def default_streams(device: torch.device | str) -> int:
    """One stream per intra-op thread on CPU; a single call elsewhere (a GPU schedules its own work)."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def run_in_streams(
    fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, streams: int | None = None
) -> torch.Tensor:
    """``fn(batch)`` computed as up to ``streams`` concurrent calls on consecutive parts, joined in order
    (default: :func:`default_streams` of the batch's device).

    The process's intra-op threads are shared out among the calls and restored afterwards, so other
    PyTorch work started from another thread meanwhile runs with the smaller count. Each call sees the
    caller's grad and inference mode. With one stream, or at most one row, ``fn`` runs once in this thread.
    """
    streams = default_streams(batch.device) if streams is None else streams
    if streams < 1:
        raise ValueError(f"streams must be at least 1, got {streams}")
    parts = batch.tensor_split(max(1, min(streams, len(batch))))
    if len(parts) == 1:
        return fn(batch)
    threads = torch.get_num_threads()
    per_call = max(1, threads // len(parts))
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def call(part: torch.Tensor) -> torch.Tensor:
        torch.set_num_threads(per_call)  # thread counts are per thread in OpenMP; set it in every worker
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(part)

    try:
        with ThreadPoolExecutor(len(parts), thread_name_prefix="musk-stream") as pool:
            outputs = list(pool.map(call, parts))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(outputs)
