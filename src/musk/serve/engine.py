"""The model behind the routes: inputs decoded and preprocessed off the event loop, then batched on one worker."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import numpy as np
import torch
from PIL import Image

from ..streams import default_streams
from ..zeroshot import class_prompts
from .batcher import Batcher, Closed, QueueFull
from .errors import Unavailable
from .images import decode_base64, open_image
from .settings import ServeSettings

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Class embeddings kept for repeated zero-shot requests (a LIMS sends the same classes every time).
CLASS_CACHE_SIZE = 64


class Engine:
    """One loaded model (``musk.load``'s object) serving every request through a :class:`Batcher`."""

    def __init__(self, lm, settings: ServeSettings):
        self.lm = lm
        self.settings = settings
        self.batcher = Batcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        self._decoders = anyio.CapacityLimiter(max(2, os.cpu_count() or 1))
        self.cores = default_streams(lm.device)  # read before the count is set to one below
        cpu = torch.device(lm.device).type == "cpu"
        measure = cpu and self.cores > 1 and not settings.streams
        self.model_ms = model_cost_ms(lm, settings.max_batch) if measure else None
        self.decode_ms: float | None = None  # CPU ms per image of decoding, a running mean over the requests
        self._one_stream = False
        self._streams_used: int | None = None
        if cpu:
            # One intra-op thread for the process (the count is process-wide): image batches run as ``streams``
            # concurrent one-thread calls (musk.streams), and the decoders' small tensor work does not start
            # thread teams that spin on the cores the model needs.
            torch.set_num_threads(1)
        self._classes: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._in_flight = 0  # items admitted and not yet answered (changed on the event loop only)

    def image_streams(self) -> int:
        """Concurrent model calls for the next image batch: ``--streams`` when given; else on CPU one per core until
        decoding an image costs twice what the model does, then a single call until the model costs more than
        decoding again (the decoders then need the other cores, and more calls of a cheap model only queue with
        them for the GIL; the gap between the two thresholds keeps the choice from flapping)."""
        if self.settings.streams:
            return self.settings.streams
        if self.model_ms is not None and self.decode_ms is not None:
            if self.decode_ms > 2 * self.model_ms:
                self._one_stream = True
            elif self.decode_ms < self.model_ms:
                self._one_stream = False
        return 1 if self._one_stream else self.cores

    def close(self, timeout: float | None = None) -> None:
        self.batcher.close(timeout)

    @contextmanager
    def admit(self, items: int) -> Iterator[None]:
        """Room for a request's ``items`` from before they are decoded until they are answered: past
        ``max_queue`` items in flight, 429 at once (so an overload is refused before it costs any work)."""
        if self._in_flight + items > self.settings.max_queue:
            raise Unavailable(429, f"the service is busy ({self._in_flight} items in flight); retry later")
        self._in_flight += items
        try:
            yield
        finally:
            self._in_flight -= items

    # ---- inputs ----------------------------------------------------------------------------------------
    async def images(self, encoded: Sequence[str], field: str) -> list[torch.Tensor]:
        """Base64 images -> preprocessed tensors (the model's own transform), decoded in worker threads: one
        thread per CPU core at most for a request (a thread hop per image costs more than it saves)."""

        def decode(first: int, texts: Sequence[str]) -> list[torch.Tensor]:
            start = time.thread_time()
            tensors = [self.lm.transform(self._decode(text, f"{field}[{first + i}]")) for i, text in enumerate(texts)]
            self._count_decoding(1000 * (time.thread_time() - start) / len(texts))
            return tensors

        step = max(1, -(-len(encoded) // int(self._decoders.total_tokens)))
        parts = [(first, encoded[first : first + step]) for first in range(0, len(encoded), step)]
        done = await asyncio.gather(*(anyio.to_thread.run_sync(decode, *p, limiter=self._decoders) for p in parts))
        return [tensor for part in done for tensor in part]

    async def picture(self, encoded: str, field: str) -> Image.Image:
        """A base64 image as an RGB PIL image, decoded in a worker thread."""
        return await anyio.to_thread.run_sync(self._decode, encoded, field, limiter=self._decoders)

    def _count_decoding(self, ms_per_image: float) -> None:
        old = self.decode_ms
        self.decode_ms = ms_per_image if old is None else old + (ms_per_image - old) / 16

    def _decode(self, encoded: str, what: str) -> Image.Image:
        return open_image(decode_base64(encoded, what), self.settings.max_image_pixels, what)

    # ---- model work -----------------------------------------------------------------------------------
    async def embed_images(
        self, tensors: list[torch.Tensor], *, with_head: bool, normalize: bool, ms_aug: bool
    ) -> np.ndarray:
        rows = await self._wait(self._submit(("image", with_head, normalize, ms_aug), tensors))
        return np.asarray(rows)

    async def embed_texts(self, texts: Sequence[str], *, with_head: bool, normalize: bool) -> np.ndarray:
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"input[{i}] is empty or blank")
        rows = await self._wait(self._submit(("text", with_head, normalize), list(texts)))
        return np.asarray(rows)

    async def class_vectors(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """(C, D) class embeddings of a prompt ensemble, computed once per classes and templates."""
        class_prompts(class_names, templates)  # bad names or templates: 400 before the queue
        key = (tuple(class_names), tuple(templates))
        if key in self._classes:
            self._classes.move_to_end(key)
            return self._classes[key]
        vectors = await self.call(lambda: self.lm.class_embeddings(list(class_names), list(templates)))
        self._classes[key] = vectors
        while len(self._classes) > CLASS_CACHE_SIZE:
            self._classes.popitem(last=False)
        return vectors

    async def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the model's worker, between batches (for work that uses the model, such as a search)."""
        return await self._wait(self._submit(None, fn))

    def _run_batch(self, key: tuple, items: list) -> np.ndarray:
        kind, with_head, normalize, *rest = key
        options = {"with_head": with_head, "normalize": normalize, "batch_size": self.settings.max_batch}
        if kind == "image":
            return self.lm.embed_images(items, ms_aug=rest[0], streams=self._batch_streams(), **options).vectors
        return self.lm.embed_texts(items, **options)

    def _batch_streams(self) -> int:
        streams = self.image_streams()
        if streams != self._streams_used:
            logger.info("image batches run as %d concurrent model calls (model %s ms per image, decoding %s ms)",
                        streams, _ms(self.model_ms), _ms(self.decode_ms))  # fmt: skip
            self._streams_used = streams
        return streams

    def _submit(self, key: tuple | None, payload: Any) -> Future:
        try:
            if key is None:
                return self.batcher.submit_call(payload)
            return self.batcher.submit(key, payload)
        except QueueFull as e:
            raise Unavailable(429, f"the service is busy: {e}; retry later") from None
        except Closed as e:
            raise Unavailable(503, str(e)) from None

    async def _wait(self, future: Future) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise Unavailable(503, f"the request was not answered within {self.settings.timeout_s:g} s") from None


def model_cost_ms(lm, max_batch: int, enough_s: float = 0.05) -> float:
    """CPU milliseconds per image of a one-thread model call, on batches doubled from one image until a call
    takes ``enough_s`` or the batch is ``max_batch`` (a cheap model's cost per call is mostly overhead that a
    batch shares; the calls before the one measured warm it up, and a call of ``enough_s`` outweighs a first
    call's one-time costs)."""
    image = torch.zeros(*lm.model.pretrained_cfg["input_size"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        size = 1
        while True:
            start = time.thread_time()
            lm.embed_images([image] * size, streams=1, batch_size=size)
            seconds = time.thread_time() - start
            if seconds >= enough_s or size >= max_batch:
                return 1000 * seconds / size
            size = min(2 * size, max_batch)
    finally:
        torch.set_num_threads(threads)


def _ms(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.2f}"
