"""musk.streams: a batch as concurrent calls on its parts, with the threads shared out and restored."""

from __future__ import annotations

import threading

import pytest
import timm
import torch

from musk.streams import default_streams, run_in_streams

TINY = "musk_tiny_patch16_64"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return timm.create_model(TINY).eval()


@pytest.fixture
def four_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(threads)


def thread_counts() -> tuple[int, int]:
    """Intra-op threads seen by this thread and by a thread started now (which takes the process's count)."""
    fresh = []
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return torch.get_num_threads(), fresh[0]


@pytest.mark.parametrize("streams", [2, 3, 5, 8])
def test_streams_give_the_one_call_answer_in_order(model, streams):
    images = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        expected = model.encode_image(images)
        got = run_in_streams(model.encode_image, images, streams)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (expected[1:] - expected[:-1]).abs().amax() > 1e-3  # rows differ: a wrong order would fail


def test_the_parts_run_concurrently_on_consecutive_rows():
    barrier = threading.Barrier(3, timeout=30)  # calls made one after another would never all arrive
    seen = []

    def fn(part: torch.Tensor) -> torch.Tensor:
        barrier.wait()
        seen.append(part[:, 0].tolist())
        return part * 2

    batch = torch.arange(7.0)[:, None]
    torch.testing.assert_close(run_in_streams(fn, batch, 3), batch * 2)
    assert sorted(seen) == [[0.0, 1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


@pytest.mark.parametrize(("streams", "per_call"), [(2, 2), (3, 1), (4, 1)])
def test_each_call_gets_its_share_of_the_threads_and_the_count_comes_back(four_threads, streams, per_call):
    counts = []

    def fn(part: torch.Tensor) -> torch.Tensor:
        counts.append(torch.get_num_threads())
        return part

    run_in_streams(fn, torch.zeros(8, 1), streams)
    assert counts == [per_call] * streams
    assert thread_counts() == (4, 4)


def test_a_failing_call_raises_and_the_thread_count_comes_back(four_threads):
    def fn(part: torch.Tensor) -> torch.Tensor:
        if part[0] > 0:
            raise RuntimeError("bad part")
        return part

    with pytest.raises(RuntimeError, match="bad part"):
        run_in_streams(fn, torch.arange(4.0), 2)
    assert thread_counts() == (4, 4)


def test_one_stream_or_at_most_one_row_runs_once_in_the_calling_thread():
    callers = []

    def fn(part: torch.Tensor) -> torch.Tensor:
        callers.append((threading.current_thread(), len(part)))
        return part

    run_in_streams(fn, torch.zeros(6, 1), 1)
    run_in_streams(fn, torch.zeros(1, 1), 4)
    assert run_in_streams(fn, torch.zeros(0, 1), 4).shape == (0, 1)
    assert callers == [(threading.current_thread(), n) for n in (6, 1, 0)]


def test_the_calls_follow_the_callers_grad_and_inference_mode(model):
    modes = []

    def fn(part: torch.Tensor) -> torch.Tensor:
        modes.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return part

    batch = torch.zeros(4, 1)
    with torch.inference_mode():
        run_in_streams(fn, batch, 2)
    with torch.no_grad():
        run_in_streams(fn, batch, 2)
    run_in_streams(fn, batch, 2)
    assert modes == [(False, True)] * 2 + [(False, False)] * 2 + [(True, False)] * 2

    images = torch.randn(4, 3, 64, 64)

    def loss_gradients(streams: int) -> list[torch.Tensor]:
        model.zero_grad()
        run_in_streams(model.encode_image, images, streams).pow(2).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    one, two = loss_gradients(1), loss_gradients(2)
    model.zero_grad()
    assert len(two) == len(one) > 0
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_fewer_than_one_stream_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        run_in_streams(lambda x: x, torch.zeros(2, 1), 0)


def test_default_is_one_stream_per_cpu_thread_and_one_elsewhere(four_threads):
    assert default_streams("cpu") == 4
    assert default_streams(torch.device("cuda", 0)) == 1
    assert default_streams("mps") == 1
    parts = []
    run_in_streams(lambda part: parts.append(len(part)) or part, torch.zeros(8, 1))  # streams from the batch's device
    assert parts == [2, 2, 2, 2]
