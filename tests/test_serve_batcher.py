"""The request batcher: concurrent jobs grouped into batches by key, a bounded queue, cancellation, shutdown."""

from __future__ import annotations

import threading

import pytest

from musk.serve.batcher import Batcher, Closed, QueueFull


class Recorder:
    """A ``run_batch`` that records every batch and can be held until released."""

    def __init__(self):
        self.batches: list[tuple] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, key, items):
        self.started.set()
        self.release.wait(30)
        self.batches.append((key, list(items)))
        if "boom" in items:
            raise RuntimeError("bad batch")
        return [f"{key}:{item}" for item in items]


def hold_worker(batcher: Batcher, recorder: Recorder):
    """Keep the worker busy with one job so that the next ones queue up behind it."""
    recorder.release.clear()
    recorder.started.clear()
    blocker = batcher.submit("hold", ["h"])
    assert recorder.started.wait(30)
    return blocker


def test_queued_jobs_of_one_key_run_as_one_batch_and_get_their_own_rows():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=8, max_wait_s=0, max_queue=64)
    blocker = hold_worker(batcher, recorder)
    a = batcher.submit("text", ["a1", "a2"])
    b = batcher.submit("image", ["b1"])
    c = batcher.submit("text", ["c1", "c2", "c3"])
    recorder.release.set()
    assert blocker.result(30) == ["hold:h"]
    assert a.result(30) == ["text:a1", "text:a2"]
    assert c.result(30) == ["text:c1", "text:c2", "text:c3"]
    assert b.result(30) == ["image:b1"]
    assert recorder.batches[1:] == [("text", ["a1", "a2", "c1", "c2", "c3"]), ("image", ["b1"])]
    batcher.close()


def test_batches_stop_at_max_batch_in_arrival_order():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=4, max_wait_s=0, max_queue=64)
    hold_worker(batcher, recorder)
    futures = [batcher.submit("k", [f"{i}a", f"{i}b", f"{i}c"]) for i in range(3)]
    recorder.release.set()
    for future in futures:
        future.result(30)
    sizes = [len(items) for key, items in recorder.batches if key == "k"]
    assert sizes == [3, 3, 3]  # 3 + 3 would pass max_batch=4: each job waits its turn, none is split
    batcher.close()


def test_the_worker_waits_up_to_max_wait_for_a_batch_to_fill():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=3, max_wait_s=30, max_queue=64)
    first = batcher.submit("k", ["1"])
    second = batcher.submit("k", ["2"])
    assert not first.done()  # 2 of 3 items: the worker waits (up to 30 s) for a third
    third = batcher.submit("k", ["3"])
    assert third.result(30) == ["k:3"] and first.result(1) == ["k:1"] and second.result(1) == ["k:2"]
    assert recorder.batches == [("k", ["1", "2", "3"])]
    batcher.close()


def test_a_full_queue_refuses_at_once_and_a_cancelled_job_frees_its_room():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=8, max_wait_s=0, max_queue=4)
    hold_worker(batcher, recorder)
    kept = batcher.submit("k", ["1", "2", "3"])
    with pytest.raises(QueueFull, match="holds 3 of at most 4"):
        batcher.submit("k", ["4", "5"])
    given_up = batcher.submit("k", ["4"])
    assert batcher.queued == 4
    assert given_up.cancel()
    assert batcher.queued == 3
    batcher.submit_call(lambda: "fits again")
    recorder.release.set()
    assert kept.result(30) == ["k:1", "k:2", "k:3"]
    assert all("4" not in items for _, items in recorder.batches)
    batcher.close()


def test_a_failing_batch_fails_only_its_own_jobs():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=8, max_wait_s=0, max_queue=64)
    hold_worker(batcher, recorder)
    bad = batcher.submit("k", ["boom"])
    same_batch = batcher.submit("k", ["x"])
    other = batcher.submit("other", ["y"])
    recorder.release.set()
    with pytest.raises(RuntimeError, match="bad batch"):
        bad.result(30)
    with pytest.raises(RuntimeError, match="bad batch"):
        same_batch.result(30)
    assert other.result(30) == ["other:y"]
    assert batcher.submit_call(lambda: 42).result(30) == 42  # the worker lives on
    batcher.close()


def test_close_finishes_the_queued_jobs_then_refuses_new_ones():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=8, max_wait_s=0, max_queue=64)
    hold_worker(batcher, recorder)
    queued = batcher.submit("k", ["1"])
    closer = threading.Thread(target=batcher.close)
    closer.start()
    recorder.release.set()
    closer.join(30)
    assert queued.result(1) == ["k:1"]
    with pytest.raises(Closed):
        batcher.submit("k", ["2"])
    other = Batcher(recorder)
    with pytest.raises(ValueError, match="at least one item"):
        other.submit("k", [])
    other.close()


def _engine_and_streams_seen(monkeypatch, **settings):
    """A tiny-model engine, and the stream counts its image batches are run with."""
    import musk
    from musk.serve import ServeSettings
    from musk.serve.engine import Engine

    lm = musk.load("musk_tiny_patch16_64", weights=musk.models.weights.NO_WEIGHTS)
    engine = Engine(lm, ServeSettings(**settings))
    seen = []
    embed = lm.embed_images
    monkeypatch.setattr(lm, "embed_images", lambda *a, **k: seen.append(k["streams"]) or embed(*a, **k))
    return engine, seen


def _encoded(side: int, format: str) -> str:
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format)
    return base64.b64encode(buffer.getvalue()).decode()


def _embed_twice(engine, image: str):
    import asyncio

    async def one_request():
        tensors = await engine.images([image, image], "input")
        return await engine.embed_images(tensors, with_head=True, normalize=True, ms_aug=False)

    return [asyncio.run(one_request()) for _ in range(2)]


@pytest.fixture
def cores():
    import torch

    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("one intra-op thread: every stream count is 1")
    yield threads
    torch.set_num_threads(threads)


def test_a_model_that_costs_more_than_decoding_keeps_every_core(monkeypatch, cores):
    """While the model costs more per image than decoding one, image batches run as one stream per core, counted
    when the engine starts: torch's thread count is process-wide, so a count read later (after decoding) gave the
    large model one stream on one thread."""
    from musk.serve import engine as engine_module
    from musk.streams import default_streams

    monkeypatch.setattr(engine_module, "model_cost_ms", lambda lm, max_batch: 1e6)  # as the large model on a CPU
    engine, seen = _engine_and_streams_seen(monkeypatch)
    try:
        rows = _embed_twice(engine, _encoded(96, "PNG"))
        assert default_streams("cpu") == 1  # what a count read now would give
    finally:
        engine.close()
    assert rows[0].shape == (2, engine.lm.embed_dim)
    assert seen == [cores, cores]


def test_a_model_cheaper_than_decoding_leaves_the_other_cores_to_the_decoders(monkeypatch, cores):
    """The tiny model on 1000-px JPEGs: decoding an image costs far more than the model, measured on the requests,
    so batches run as one call; ``--streams`` overrides the measured choice."""
    engine, seen = _engine_and_streams_seen(monkeypatch)
    image = _encoded(1000, "JPEG")
    try:
        _embed_twice(engine, image)
        assert engine.decode_ms > 2 * engine.model_ms
    finally:
        engine.close()
    assert seen == [1, 1]
    engine, seen = _engine_and_streams_seen(monkeypatch, streams=3)
    try:
        _embed_twice(engine, image)
    finally:
        engine.close()
    assert engine.model_ms is None and seen == [3, 3]


def test_the_stream_choice_changes_only_past_a_clear_margin(monkeypatch, cores):
    """One call once decoding costs over twice the model; every core again only when the model costs more than
    decoding: costs in between keep the choice (measurements near one threshold do not flap)."""
    from musk.serve import engine as engine_module

    monkeypatch.setattr(engine_module, "model_cost_ms", lambda lm, max_batch: 1.0)
    engine, _ = _engine_and_streams_seen(monkeypatch)
    engine.close()
    chosen = []
    for decode_ms in (0.5, 1.5, 2.5, 1.5, 1.1, 0.9, 1.5):
        engine.decode_ms = decode_ms
        chosen.append(engine.image_streams())
    assert chosen == [cores, cores, 1, 1, 1, cores, cores]
