"""Resumable, process-independent batching of a data source.

A source's records, in their order for an epoch, are cut into *global* batches (``global_batch`` records:
everything one optimizer step sees over all processes and accumulation steps). Global batch ``k`` is split into
``grad_accum x world`` micro-batches: micro-batch ``m`` of process ``r`` holds the records from
``(m * world + r) * b`` on (``b`` per micro-batch). So one process with the whole global batch and N processes with
their shares see the same records in each step, and every random choice is seeded by ``(seed, source, epoch,
batch, index in the global batch)``.

The position (epoch, global batches done in it) is all a checkpoint needs to resume the batching.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = ["DataPosition", "MicroBatches", "make_loader"]

logger = logging.getLogger(__name__)

#: ``make_batch(records, rngs) -> dict of tensors``: one seeded generator per record.
BatchMaker = Callable[[Sequence, Sequence[np.random.Generator]], dict]


@dataclass
class DataPosition:
    """Where the batching of a source stands: ``batch`` global batches of epoch ``epoch`` are done."""

    epoch: int = 0
    batch: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class MicroBatches(IterableDataset):
    """This process's micro-batches of a source, epoch after epoch, from ``start`` on (never ends).

    ``source.records(epoch, seed)`` lists the records; ``expand`` (optional) turns each record into zero or
    more samples (text windows); ``make_batch`` decodes a micro-batch. DataLoader workers take micro-batches
    in turn, and each yields ``position`` = (epoch, batch, micro-batch) with its tensors.
    """

    def __init__(
        self,
        source,
        make_batch: BatchMaker,
        global_batch: int,
        *,
        seed: int,
        source_id: int = 0,
        rank: int = 0,
        world: int = 1,
        grad_accum: int = 1,
        start: DataPosition | None = None,
        expand: Callable[[object], Iterator] | None = None,
    ):
        share = world * grad_accum
        if global_batch % share:
            raise ValueError(
                f"the global batch {global_batch} does not split into {world} processes x {grad_accum} "
                f"accumulation steps; choose a multiple of {share}"
            )
        self.source, self.make_batch, self.expand = source, make_batch, expand
        self.global_batch, self.micro = global_batch, global_batch // share
        self.seed, self.source_id, self.rank, self.world, self.grad_accum = seed, source_id, rank, world, grad_accum
        self.start = start or DataPosition()

    def _samples(self, epoch: int) -> Iterator:
        records = self.source.records(epoch, self.seed)
        if self.expand is None:
            return records
        return itertools.chain.from_iterable(map(self.expand, records))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, batch, turn = self.start.epoch, self.start.batch, 0
        while True:
            samples = self._samples(epoch)
            # skipping is cheap: records are light until make_batch decodes them
            for _ in itertools.islice(samples, batch * self.global_batch):
                pass
            produced = False
            while len(chunk := list(itertools.islice(samples, self.global_batch))) == self.global_batch:
                produced = True
                for m in range(self.grad_accum):
                    if turn % workers == worker:
                        yield self._micro_batch(chunk, epoch, batch, m)
                    turn += 1
                batch += 1
            if not produced and batch == 0:
                raise ValueError(
                    f"the data holds fewer samples than one global batch ({self.global_batch}); "
                    f"add data or lower the batch size"
                )
            epoch, batch = epoch + 1, 0

    def _micro_batch(self, chunk: list, epoch: int, batch: int, m: int) -> dict:
        lo = (m * self.world + self.rank) * self.micro
        rngs = [np.random.default_rng([self.seed, self.source_id, epoch, batch, i]) for i in range(lo, lo + self.micro)]
        out = self.make_batch(chunk[lo : lo + self.micro], rngs)
        out["position"] = torch.tensor([epoch, batch, m])
        return out


def make_loader(batches: MicroBatches, num_workers: int = 0) -> DataLoader:
    """A DataLoader over ready-made micro-batches, in order (workers take turns).

    Its own seed generator: starting the loader must not draw from the global RNG, whose state a resumed run
    restores (drop path, dead-code restarts) and which would otherwise be shifted."""
    return DataLoader(
        batches,
        batch_size=None,
        generator=torch.Generator().manual_seed(batches.seed),
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )
