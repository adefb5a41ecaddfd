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


def test_image_batches_keep_every_core_after_images_are_decoded(monkeypatch):
    """Image batches run as one stream per core, fixed when the engine starts: torch's thread count is
    process-wide, so a count read later (after decoding) gave the large model one stream on one thread."""
    import asyncio
    import base64
    import io

    import torch
    from PIL import Image

    import musk
    from musk.serve import ServeSettings
    from musk.serve.engine import Engine
    from musk.streams import default_streams

    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("one intra-op thread: every stream count is 1")
    lm = musk.load("musk_tiny_patch16_64", weights=musk.models.weights.NO_WEIGHTS)
    engine = Engine(lm, ServeSettings())
    seen = []
    embed = lm.embed_images
    monkeypatch.setattr(lm, "embed_images", lambda *a, **k: seen.append(k["streams"]) or embed(*a, **k))
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 120, 160)).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()

    async def one_request():
        tensors = await engine.images([image, image], "input")
        return await engine.embed_images(tensors, with_head=True, normalize=True, ms_aug=False)

    try:
        rows = asyncio.run(one_request())
        assert default_streams("cpu") == 1  # what a count read now would give
    finally:
        engine.close()
        torch.set_num_threads(threads)
    assert rows.shape == (2, lm.embed_dim)
    assert seen == [threads]  # one stream per core, though the decoders left the process one thread
