"""``musk serve`` under pressure, as a real process: 413, 429/503 with Retry-After, time limits, SIGTERM, binding."""

from __future__ import annotations

import http.client
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from musk import load  # noqa: E402
from musk.cli import main  # noqa: E402
from musk.serve import ServeSettings  # noqa: E402
from serve_process import TINY, ServiceProcess, tiny_service_args, vectors_of  # noqa: E402

#: Batches wait up to 3 s to fill, requests may take 1 s: every request times out, and while they wait the
#: 4-item queue is full.
SLOW = ("--max_queue", "4", "--max_batch", "64", "--max_wait_ms", "3000", "--timeout_s", "1", "--max_body_mb", "1")


@pytest.fixture(scope="module")
def slow_service(tmp_path_factory, tokenizer_file):
    proc = ServiceProcess(tiny_service_args(tokenizer_file, *SLOW), tmp_path_factory.mktemp("slow") / "log")
    yield proc.wait_ready()
    proc.stop()


def embed(url: str, texts: list[str], **options) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json={"model": TINY, "input": texts}, timeout=60, **options)


def test_a_body_over_the_limit_gets_413_declared_or_streamed(slow_service):
    big = {"model": TINY, "input": ["x" * (2 << 20)]}
    response = httpx.post(f"{slow_service.url}/v1/embeddings", json=big, timeout=60)
    assert response.status_code == 413
    assert "larger than this service accepts (1048576 bytes)" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is applied while the body arrives
        for _ in range(40):
            yield b"x" * 65536

    streamed = httpx.post(f"{slow_service.url}/v1/embeddings", content=chunks(), timeout=60)
    assert streamed.status_code == 413
    assert httpx.get(f"{slow_service.url}/healthz").status_code == 200


def test_a_request_larger_than_the_queue_is_refused_as_bad(slow_service):
    response = embed(slow_service.url, ["a", "b", "c", "d", "e"])
    assert response.status_code == 400
    assert "at most 4 per request" in response.json()["error"]["message"]


def test_overload_gets_429_at_once_and_slow_requests_503_both_with_retry_after(slow_service):
    """10 clients at once into a queue of 4: the overflow is refused at once with 429; the queued ones pass their
    1 s limit waiting for a batch and get 503. Nothing hangs, and the service is healthy afterwards."""
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda i: embed(slow_service.url, [f"text {i}"]), range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {429, 503}, statuses
    assert statuses.count(503) <= 4
    for response in responses:
        assert response.headers["retry-after"] == "1"
        message = response.json()["error"]["message"]
        assert ("busy" in message) if response.status_code == 429 else ("not answered within 1 s" in message)
    assert httpx.get(f"{slow_service.url}/healthz").status_code == 200
    deadline = time.monotonic() + 30
    while httpx.get(f"{slow_service.url}/readyz").json()["queued"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the timed-out requests left the queue (their jobs were cancelled)
    assert httpx.get(f"{slow_service.url}/readyz").json()["queued"] == 0


def test_sigterm_finishes_the_requests_in_flight_then_exits(tmp_path, tokenizer_file):
    """Requests queued when SIGTERM arrives are answered in full; then the process ends and takes no more."""
    args = tiny_service_args(tokenizer_file, "--max_batch", "64", "--max_wait_ms", "2000")
    proc = ServiceProcess(args, tmp_path / "log").wait_ready()
    texts = ["necrosis", "mitosis", "stroma"]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(embed, proc.url, [text]) for text in texts]
        deadline = time.monotonic() + 30
        while httpx.get(f"{proc.url}/readyz").json()["queued"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{proc.url}/readyz").json()["queued"] == 3
        # uvicorn re-raises the signal once it has shut down, so the process ends as SIGTERM's default would
        assert proc.stop(timeout=60) == -signal.SIGTERM
        got = np.concatenate([vectors_of(f.result()) for f in futures])
    reference = load(TINY, weights="none", device="cpu", tokenizer=tokenizer_file, seed=0)
    np.testing.assert_allclose(got, reference.embed_texts(texts), rtol=1e-5, atol=1e-6)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{proc.url}/healthz")
    assert "Finished server process" in proc.output() and "Traceback" not in proc.output()


# ---- where it listens -------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_binding_beyond_loopback_needs_a_key_or_insecure(host, monkeypatch, capsys):
    monkeypatch.delenv("MUSK_API_KEY", raising=False)
    assert main(["serve", "--host", host, "--model", TINY, "--weights", "none"]) == 2
    assert "set an API key (--api_key or MUSK_API_KEY), or pass --insecure" in capsys.readouterr().err
    assert ServeSettings(host=host, api_key="k" * 16).host == host
    assert ServeSettings(host=host, insecure=True).insecure


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_key(host):
    assert ServeSettings(host=host).api_key is None


def test_short_keys_and_bad_limits_are_refused(monkeypatch, capsys):
    monkeypatch.setenv("MUSK_API_KEY", "short")
    assert main(["serve", "--model", TINY, "--weights", "none"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        ServeSettings(timeout_s=0)


def test_weights_that_cannot_load_stop_the_service_with_one_line(tmp_path, capsys):
    """The model loads after the server has started (health checks answer meanwhile); its failure stops the
    server and the command reports it like any other: one line, exit status 2."""
    missing = tmp_path / "missing.safetensors"
    assert main(["serve", "--port", "0", "--model", TINY, "--weights", str(missing), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "musk serve: error:" in err and "missing.safetensors" in err and "Traceback" not in err


def test_a_folder_that_is_no_index_is_refused_before_serving(tmp_path, capsys):
    assert main(["serve", "--port", "0", "--index", str(tmp_path), "--model", TINY, "--weights", "none"]) == 2
    assert "musk serve: error:" in capsys.readouterr().err


def test_an_idle_connection_outlives_a_clients_own_keep_alive(slow_service):
    """A client (httpx: 5 s) or proxy lets an idle connection go before the service does; with equal timeouts the
    service closes it as the client sends on it, and the client gets a reset instead of an answer."""
    url = urlparse(slow_service.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        for pause in (0, 6):  # 6 s: past httpx's keep-alive expiry
            time.sleep(pause)
            conn.request("GET", "/healthz")  # on the same connection (http.client reconnects only when told)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b'{"status":"ok"}'), f"after {pause} s idle"
    finally:
        conn.close()
