"""``musk serve`` as a real process: embeddings (and the OpenAI client), zero-shot, keys, limits, load, SIGTERM."""

from __future__ import annotations

import base64
import csv
import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from musk import load  # noqa: E402
from musk.cli import main  # noqa: E402
from serve_process import TINY, ServiceProcess, slide_patches, tiny_service_args, vectors_of  # noqa: E402

KEY = "test-key-0123456789abcdef"
TEXTS = ["tumour budding at the invasive front", "benign lung tissue", "necrosis"]
CLASSES = ["lung adenocarcinoma", "benign lung tissue"]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
MODEL_ARGS = ["--model", TINY, "--weights", "none", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def service(tmp_path_factory, tokenizer_file):
    proc = ServiceProcess(tiny_service_args(tokenizer_file), tmp_path_factory.mktemp("serve") / "log", api_key=KEY)
    yield proc.wait_ready()
    proc.stop()


@pytest.fixture(scope="module")
def reference(tokenizer_file):
    """The same random weights as the service's (seed 0), in this process."""
    return load(TINY, weights="none", device="cpu", tokenizer=tokenizer_file, seed=0)


@pytest.fixture(scope="module")
def patch_files(sample_slide, tmp_path_factory):
    folder = tmp_path_factory.mktemp("patches")
    paths = []
    for i, image in enumerate(slide_patches(sample_slide, 5)):
        path = folder / f"patch{i}.{'png' if i % 2 else 'jpg'}"
        image.save(path)
        paths.append(path)
    return paths


def image_items(paths) -> list[dict]:
    return [{"image": base64.b64encode(p.read_bytes()).decode()} for p in paths]


def post_embeddings(client: httpx.Client, inputs, **options) -> httpx.Response:
    return client.post("/v1/embeddings", json={"model": TINY, "input": inputs, **options})


# ---- answers equal the library's ----------------------------------------------------------------------
def test_health_ready_and_the_schema_list_the_endpoints(service):
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/readyz").json()
    assert ready["ready"] is True and ready["model"] == TINY
    paths = httpx.get(f"{service.url}/openapi.json").json()["paths"]
    for path in (
        "/v1/embeddings",
        "/v1/zeroshot",
        "/v1/search",
        "/v1/slides/{slide}.dzi",
        "/v1/slides/{slide}/heatmap",
    ):
        assert path in paths
    assert httpx.get(f"{service.url}/docs").status_code == 404  # its page would load scripts from a CDN


def test_openai_client_gets_the_text_embeddings_of_the_library(service, reference):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=KEY, max_retries=0)
    result = client.embeddings.create(model=TINY, input=TEXTS)  # the client asks for base64 by default
    got = np.array([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, reference.embed_texts(TEXTS), **TOLERANCE)
    assert [item.index for item in result.data] == [0, 1, 2]
    assert result.model == TINY and result.usage.prompt_tokens > len(TEXTS)
    floats = client.embeddings.create(model=TINY, input="necrosis", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, reference.embed_texts(["necrosis"])[0], **TOLERANCE)


@pytest.mark.parametrize(
    ("with_head", "normalize", "ms_aug"), [(True, True, False), (False, False, False), (False, False, True)]
)
def test_image_embeddings_equal_musk_embed(service, patch_files, tmp_path, with_head, normalize, ms_aug):
    """Files sent as base64 give what `musk embed` writes for the same files (same weights: seed 0)."""
    options = {"with_head": with_head, "normalize": normalize, "ms_aug": ms_aug}
    with service.client() as client:
        got = vectors_of(post_embeddings(client, image_items(patch_files), **options))
    flags = [f"--{name}" for name, on in options.items() if on]
    out = tmp_path / "embed.npz"
    assert main(["embed", *map(str, patch_files), "-o", str(out), *flags, *MODEL_ARGS]) == 0
    saved = np.load(out)
    assert list(saved["files"]) == [str(p) for p in patch_files]
    assert got.shape == saved["embeddings"].shape
    np.testing.assert_allclose(got, saved["embeddings"], **TOLERANCE)


def test_texts_and_images_in_one_request_keep_their_order(service, patch_files, reference):
    with service.client() as client:
        got = vectors_of(post_embeddings(client, [TEXTS[0], *image_items(patch_files[:2]), TEXTS[1]]))
    np.testing.assert_allclose(got[[0, 3]], reference.embed_texts(TEXTS[:2]), **TOLERANCE)
    images = reference.embed_images(patch_files[:2]).vectors
    np.testing.assert_allclose(got[1:3], images, **TOLERANCE)


def test_zeroshot_equals_musk_zeroshot(service, patch_files, reference, tokenizer_file, tmp_path, capsys):
    encoded_files = [base64.b64encode(p.read_bytes()).decode() for p in patch_files]
    with service.client() as client:
        response = client.post("/v1/zeroshot", json={"images": encoded_files, "classes": CLASSES})
    assert response.status_code == 200, response.text
    body = response.json()
    got = np.array([row["probabilities"] for row in body["data"]])
    expected = reference.classify(patch_files, CLASSES)
    np.testing.assert_allclose(got, expected.probabilities, rtol=1e-4, atol=1e-6)
    assert [row["prediction"] for row in body["data"]] == list(expected.predictions)
    assert body["classes"] == CLASSES
    out = tmp_path / "zs.csv"
    files = map(str, patch_files)
    assert (
        main(
            ["zeroshot", *files, "--classes", *CLASSES, "--tokenizer", str(tokenizer_file), "-o", str(out), *MODEL_ARGS]
        )
        == 0
    )
    capsys.readouterr()
    rows = list(csv.reader(out.read_text().splitlines()))[1:]
    np.testing.assert_allclose(got, [[float(v) for v in row[1:-1]] for row in rows], atol=6e-5)  # 4 decimals there
    assert [row[-1] for row in rows] == [row["prediction"] for row in body["data"]]


# ---- keys ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789abc"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
    ],
)
def test_requests_without_the_key_get_401(service, headers):
    response = httpx.post(f"{service.url}/v1/embeddings", json={"model": TINY, "input": ["x"]}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["error"]["message"]
    assert httpx.get(f"{service.url}/v1/slides", headers=headers).status_code == 401


def test_health_and_the_page_need_no_key(service):
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and "MUSK slide search" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "access-control-allow-origin" not in page.headers  # no CORS unless asked for


# ---- bad input: 400 (or 404), one line, no trace ----------------------------------------------------
def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels, a few hundred bytes long."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 3 * min(width, 64)
    data = zlib.compress(row * 4)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def two_frame_tiff() -> bytes:
    out = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:])
    return out.getvalue()


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, "GIF")
    return out.getvalue()


@pytest.mark.parametrize(
    ("inputs", "options", "status", "message"),
    [
        ([{"image": "not base64!"}], {}, 400, "input[0] is not valid base64"),
        ([{"image": base64.b64encode(b"plain text").decode()}], {}, 400, "could not be decoded"),
        ([{"image": base64.b64encode(bomb_png(8000, 8000)).decode()}], {}, 400, "8000x8000 = 64000000 pixels"),
        ([{"image": base64.b64encode(bomb_png(40000, 40000)).decode()}], {}, 400, "more pixels than this service"),
        ([{"image": base64.b64encode(two_frame_tiff()).decode()}], {}, 400, "2 frames"),
        ([{"image": base64.b64encode(gif()).decode()}], {}, 400, "could not be decoded"),
        (["   "], {}, 400, "input[0] is empty or blank"),
        (["a text"], {"ms_aug": True}, 400, "ms_aug applies to images only"),
        (["a text"], {"dimensions": 32}, 400, "dimensions is not supported"),
        (["a text"], {"colour": "red"}, 400, "colour"),
        ([], {}, 400, "input is empty"),
        ([{"image": "aGVsbG8=", "extra": 1}], {}, 400, "extra"),
    ],
)
def test_bad_requests_get_400_in_one_line(service, inputs, options, status, message):
    with service.client() as client:
        response = post_embeddings(client, inputs, **options)
    assert response.status_code == status, response.text
    error = response.json()["error"]["message"]
    assert message in error and "\n" not in error and "Traceback" not in response.text


def test_unknown_model_is_404_and_bad_json_400(service):
    with service.client() as client:
        assert client.post("/v1/embeddings", json={"model": "gpt-4", "input": ["x"]}).status_code == 404
        response = client.post("/v1/embeddings", content=b"{not json", headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert client.post("/v1/zeroshot", json={"images": ["aGVsbG8="], "classes": ["a", "a"]}).status_code == 400


# ---- load -----------------------------------------------------------------------------------------------
def test_concurrent_clients_get_their_own_answers_and_health_answers_meanwhile(service, patch_files, reference):
    """A bounded burst (8 clients x 6 requests, loopback): every answer is right; /healthz answers during it."""
    expected_texts = reference.embed_texts(TEXTS)
    expected_images = reference.embed_images(patch_files).vectors
    items = image_items(patch_files)
    health, stop = [], threading.Event()

    def probe():
        while not stop.is_set():
            health.append(httpx.get(f"{service.url}/healthz", timeout=30).status_code)
            time.sleep(0.05)

    def client_work(worker: int) -> None:
        with service.client() as client:
            for round_ in range(6):
                pick = (worker + round_) % len(items)
                got = vectors_of(post_embeddings(client, [items[pick], TEXTS[pick % 3]]))
                np.testing.assert_allclose(got[0], expected_images[pick], rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(got[1], expected_texts[pick % 3], rtol=1e-4, atol=1e-5)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client_work, range(8)))
    finally:
        stop.set()
        prober.join()
    assert health and set(health) == {200}
    assert httpx.get(f"{service.url}/readyz").status_code == 200
