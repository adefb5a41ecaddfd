"""``musk serve --index`` as a real process on a real index of the sample slide: search answers equal the library's
and ``musk search``'s, slide images, no file outside the index's slides, and the page in headless Chromium."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("openslide")

from musk import load  # noqa: E402
from musk.cli import main  # noqa: E402
from musk.search import open_index  # noqa: E402
from musk.serve.slides import SlideNotFound, SlideTiles  # noqa: E402
from serve_process import TINY, ServiceProcess, build_test_index, tiny_service_args  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
QUERY = "tumour budding at the invasive front"


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_slide, tokenizer_file):
    folder = tmp_path_factory.mktemp("indexed")
    return folder, build_test_index(folder, sample_slide, tokenizer_file)


@pytest.fixture(scope="module")
def service(built, tokenizer_file):
    folder, index = built
    proc = ServiceProcess(tiny_service_args(tokenizer_file, "--index", str(index)), folder / "serve.log")
    yield proc.wait_ready()
    proc.stop()


@pytest.fixture(scope="module")
def library(built, tokenizer_file):
    lm = load(TINY, weights=None, device="cpu", tokenizer=tokenizer_file, seed=0)
    with open_index(built[1]) as index:
        yield index, lm


def same_hits(got: list[dict], expected: list[dict]) -> None:
    assert [{k: v for k, v in h.items() if k != "score"} for h in got] == [
        {k: v for k, v in h.items() if k != "score"} for h in expected
    ]
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in expected], atol=1e-6)


def as_dicts(hits) -> list[dict]:
    return [h.row() if hasattr(h, "row") else dict(vars(h)) for h in hits]


# ---- answers equal the library's and `musk search`'s --------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [{"k": 10}, {"k": 8, "per_slide": 2}, {"k": 5, "filters": {"label": "normal"}}, {"k": 6, "exclude_case": "case-1"}],
)
def test_text_search_equals_the_library(service, library, options):
    index, lm = library
    response = httpx.post(f"{service.url}/v1/search", json={"text": QUERY, **options}, timeout=60)
    assert response.status_code == 200, response.text
    got = response.json()["hits"]
    assert got and len(got) <= options["k"]
    same_hits(got, as_dicts(index.search_text(lm, QUERY, **options)))


def test_text_search_equals_musk_search(service, built, tokenizer_file, tmp_path):
    out = tmp_path / "hits.jsonl"
    args = ["search", str(built[1]), "--text", QUERY, "--k", "12", "--per_slide", "4", "-o", str(out)]
    assert (
        main([*args, "--model", TINY, "--weights", "none", "--device", "cpu", "--tokenizer", str(tokenizer_file)]) == 0
    )
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    got = httpx.post(f"{service.url}/v1/search", json={"text": QUERY, "k": 12, "per_slide": 4}, timeout=60)
    same_hits(got.json()["hits"], expected)


def test_image_search_finds_the_patch_it_was_given(service, library, sample_slide):
    index, lm = library
    first = index.search_text(lm, QUERY, k=1)[0]
    import openslide

    with openslide.OpenSlide(str(sample_slide)) as slide:
        patch = slide.read_region((first.x, first.y), 0, (first.patch_size,) * 2).convert("RGB")
    png = io.BytesIO()
    patch.save(png, "PNG")
    body = {"image": base64.b64encode(png.getvalue()).decode(), "k": 4}
    got = httpx.post(f"{service.url}/v1/search", json=body, timeout=60).json()["hits"]
    same_hits(got, as_dicts(index.search_image(lm, patch, k=4)))
    assert (got[0]["x"], got[0]["y"]) == (first.x, first.y) and got[0]["score"] > 0.99


def test_slide_ranking_case_retrieval_and_heatmap_equal_the_library(service, library):
    index, lm = library
    texts = ["tumor", "normal tissue"]
    ranked = httpx.post(f"{service.url}/v1/search/slides", json={"texts": texts, "top_k": 5}, timeout=60).json()
    expected = [vars(h) for h in index.rank_slides(lm, texts, top_k=5)]
    assert [(h["slide"], h["prediction"]) for h in ranked["slides"]] == [
        (h["slide"], h["prediction"]) for h in expected
    ]
    np.testing.assert_allclose([h["score"] for h in ranked["slides"]], [h["score"] for h in expected], atol=1e-6)
    similar = httpx.get(f"{service.url}/v1/slides/cmu-a/similar?k=5", timeout=60).json()["slides"]
    assert [h["slide"] for h in similar] == [h.slide for h in index.similar_slides("cmu-a", k=5)] == ["cmu-b"]
    heat = httpx.get(f"{service.url}/v1/slides/cmu-b/heatmap", params={"query": QUERY}, timeout=60).json()
    coords, size, scores = index.slide_scores(lm, "cmu-b", text=QUERY)
    assert heat["patch_size"] == size and heat["x"] == coords[:, 0].tolist() and heat["y"] == coords[:, 1].tolist()
    np.testing.assert_allclose(heat["scores"], scores, atol=1e-6)


def test_bad_search_requests_get_400_or_404(service):
    def post(path, body):
        return httpx.post(f"{service.url}{path}", json=body, timeout=60)

    assert post("/v1/search", {"text": "a", "image": "aGk="}).status_code == 400
    assert post("/v1/search", {"text": "  "}).status_code == 400
    assert post("/v1/search", {"text": "a", "filters": {"stain": "HE"}}).status_code == 400
    assert post("/v1/search", {"text": "a", "k": 0}).status_code == 400
    assert post("/v1/slides/nope/heatmap", {"text": "a"}).status_code == 404
    assert httpx.get(f"{service.url}/v1/slides/nope/similar").status_code == 404


# ---- slide images ---------------------------------------------------------------------------------------
def test_slides_deep_zoom_and_patches_come_from_the_indexed_files(service, sample_slide):
    import openslide

    listed = httpx.get(f"{service.url}/v1/slides").json()["slides"]
    assert [(s["name"], s["case"], s["label"], s["viewable"]) for s in listed] == [
        ("cmu-a", "case-1", "tumor", True), ("cmu-b", "case-2", "normal", True)]  # fmt: skip
    dzi = httpx.get(f"{service.url}/v1/slides/cmu-a.dzi")
    assert dzi.headers["content-type"].startswith("application/xml")
    with openslide.OpenSlide(str(sample_slide)) as slide:
        width, height = slide.dimensions
        region, elsewhere = (
            np.asarray(slide.read_region(xy, 0, (384, 384)).convert("RGB").resize((128, 128)), dtype=float)
            for xy in ((768, 1152), (1536, 1920))
        )
    assert f'Width="{width}" Height="{height}"' in dzi.text
    top = max(width, height).bit_length()  # the full-resolution Deep Zoom level
    tile = Image.open(io.BytesIO(httpx.get(f"{service.url}/v1/slides/cmu-a_files/{top}/0_0.jpeg").content))
    assert tile.size == (255, 255)  # 254 + one pixel of overlap on the inner edges
    got = httpx.get(f"{service.url}/v1/slides/cmu-b/patch", params={"x": 768, "y": 1152, "size": 128})
    patch = np.asarray(Image.open(io.BytesIO(got.content)).convert("RGB"), dtype=float)
    assert patch.shape == (128, 128, 3)
    # the same pixels (through JPEG and another resampling), far closer than another patch's
    assert np.abs(patch - region).mean() < 10 < 3 * 10 < np.abs(patch - elsewhere).mean()
    assert httpx.get(f"{service.url}/v1/slides/cmu-a_files/{top + 1}/0_0.jpeg").status_code == 404
    assert httpx.get(f"{service.url}/v1/slides/cmu-a_files/{top}/99_0.jpeg").status_code == 404
    assert httpx.get(f"{service.url}/v1/slides/cmu-a/patch", params={"x": width, "y": 0}).status_code == 400


def test_slides_without_a_file_are_listed_but_not_served(sample_slide, tmp_path):
    tiles = SlideTiles([("kept", sample_slide), ("unknown", None), ("gone", tmp_path / "gone.svs")])
    assert "kept" in tiles and "unknown" not in tiles and "gone" not in tiles
    assert 'Width="2220"' in tiles.dzi("kept")
    with pytest.raises(SlideNotFound, match="no slide named 'gone'"):
        tiles.dzi("gone")


def raw_get(url: str, path: str) -> int:
    """The status of GET ``path`` sent byte for byte (no client normalises dots or escapes)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


@pytest.mark.parametrize(
    "path",
    [
        "/v1/slides/../../../../etc/passwd",
        "/v1/slides/..%2F..%2F..%2Fetc%2Fpasswd.dzi",
        "/v1/slides/%2e%2e/%2e%2e/%2e%2e/etc/passwd.dzi",
        "/v1/slides/%2e%2e%2f%2e%2e%2fetc%2fpasswd/patch?x=0&y=0",
        "/v1/slides/%2Fetc%2Fpasswd.dzi",
        "/v1/slides//etc/passwd.dzi",
        "/v1/slides/..%5C..%5Cetc%5Cpasswd.dzi",
        "/v1/slides/cmu-a.svs.dzi",
        "/v1/slides/slides%2Fcmu-a.dzi",
        "/v1/slides/cmu-a%00.dzi",
        "/v1/slides/cmu-a_files/..%2F..%2F..%2Fetc/0_0.jpeg",
    ],
)
def test_no_request_names_a_file_outside_the_index(service, path):
    assert raw_get(service.url, path) in (400, 404)


def test_links_in_the_slide_folder_reach_nothing(service, built, sample_slide):
    """A link added to the slide folder is not in the index; an indexed file replaced by a link to elsewhere is
    refused (its path no longer leads where it led when the service started)."""
    slides = built[0] / "slides"
    outside = Path(tempfile.mkdtemp(prefix="outside-"))
    try:
        secret = outside / "secret.svs"
        shutil.copy(sample_slide, secret)
        (slides / "evil.svs").symlink_to(secret)
        for name in ("evil", "evil.svs", "secret"):
            assert httpx.get(f"{service.url}/v1/slides/{name}.dzi").status_code == 404
        original = slides / "cmu-a.svs"
        os.replace(original, outside / "kept.svs")
        original.symlink_to(secret)
        try:
            response = httpx.get(f"{service.url}/v1/slides/cmu-a.dzi")
            assert response.status_code == 404 and "changed on disk" in response.json()["error"]["message"]
        finally:
            original.unlink()
            os.replace(outside / "kept.svs", original)
        assert httpx.get(f"{service.url}/v1/slides/cmu-a.dzi").status_code == 200
    finally:
        (slides / "evil.svs").unlink(missing_ok=True)
        shutil.rmtree(outside)


# ---- the page in headless Chromium ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM}: `make test` installs Debian's chromium when it runs as root with apt-get")
    from musk.serve.app import OPENSEADRAGON

    if not OPENSEADRAGON.is_file():
        pytest.skip("the page's viewer (OpenSeadragon) is not built: run `make web` (needs npm)")
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1200, "height": 1000},
        )  # fmt: skip
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        yield page
        context.close()


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


def test_the_page_searches_shows_hits_and_opens_a_slide_with_its_heatmap(service, library, browser_page):
    page = browser_page
    page.goto(f"{service.url}/")
    page.fill("#query", QUERY)
    page.click("#search-form button[type=submit]")
    page.wait_for_selector(".hit img[src^='blob:']", timeout=60_000)
    index, lm = library
    expected = index.search_text(lm, QUERY, k=24)
    tiles = page.locator(".hit")
    assert tiles.count() == len(expected)
    groups = page.locator(".group h3").all_inner_texts()
    assert [g.split()[0] for g in groups] == list(dict.fromkeys(h.slide for h in expected))  # grouped by slide
    assert f"#1 · {expected[0].score:.3f}" in tiles.first.inner_text()
    page.wait_for_selector("#slides:not([hidden]) tbody tr")
    assert page.locator("#slides tbody tr").count() == 2
    assert f"q={QUERY.split()[0]}" in page.url  # the address holds the query

    tiles.first.click()
    page.wait_for_selector("#viewer-status:has-text('Heatmap')", timeout=60_000)
    page.wait_for_timeout(1000)  # the last tiles fade in
    box = page.locator("#osd").bounding_box()
    with_heatmap = pixels(page.screenshot(clip=box))
    page.uncheck("#heatmap-toggle")
    page.wait_for_timeout(1000)
    without = pixels(page.screenshot(clip=box))
    assert f"slide={expected[0].slide}" in page.url and f"x={expected[0].x}" in page.url
    assert (without.sum(axis=2) > 60).mean() > 0.5  # the viewer shows the slide, not a black box
    tissue = (without[..., 0] > without[..., 1] + 20).mean()  # H&E: pink and purple pixels
    assert tissue > 0.05
    assert np.abs(with_heatmap - without).mean() > 10  # the overlay changes what is seen ...
    assert page.locator("#patch-outline").is_visible()  # ... and the hit's patch is outlined
    assert not page.errors, page.errors
