"""musk.search on the real sample slide (a real `musk wsi` job with the tiny random model) plus generated slides:
hits equal a brute-force computation from the h5 features and the vision head; an image made from a stored patch
finds that patch; FAISS and Milvus Lite agree; `index add` equals a build of everything; contact sheets."""

import shutil

import h5py
import numpy as np
import openslide
import pytest
from PIL import Image

import musk
from musk.cli import main
from musk.search import add_to_index, build_index, open_index
from search_cohorts import TINY, project, write_features

TEMPLATES = ["{}.", "an H&E image of {}."]


@pytest.fixture(scope="module")
def lm(tokenizer_file):
    return musk.load(TINY, "none", device="cpu", tokenizer=tokenizer_file)


@pytest.fixture(scope="module")
def job(tmp_path_factory, sample_slide):
    """A real job: the sample slide at 10x in 64-px patches (136 patches), cls features of the random tiny model."""
    root = tmp_path_factory.mktemp("real")
    (root / "slides").mkdir()
    shutil.copy(sample_slide, root / "slides" / "cmu.svs")
    argv = [
        "wsi",
        "extract",
        "--slides",
        str(root / "slides"),
        "--job_dir",
        str(root / "job"),
        "--model",
        TINY,
        "--weights",
        "none",
        "--mag",
        "10",
        "--patch_size",
        "64",
        "--device",
        "cpu",
        "--features",
        "cls",
    ]
    assert main(argv) == 0
    return root / "job"


@pytest.fixture(scope="module")
def extra(tmp_path_factory, lm):
    """Four generated slides in two cases (random cls features of the tiny model's width)."""
    folder = tmp_path_factory.mktemp("extra")
    rng = np.random.default_rng(1)
    for i in range(4):
        write_features(folder / f"gen{i}.h5", rng.normal(0, 1, (30 + 10 * i, 64)).astype(np.float32), lm.weights_sha256)
    manifest = folder.parent / "extra_cases.csv"
    manifest.write_text("slide,case,label\ncmu,C0,tumor\ngen0,C1,tumor\ngen1,C1,normal\ngen2,C2,normal\n")
    return folder, manifest


@pytest.fixture(scope="module")
def faiss_index(tmp_path_factory, lm, job, extra):
    path = tmp_path_factory.mktemp("idx") / "faiss"
    build_index([job, extra[0]], path, lm, cases=extra[1])
    return path


def brute_force(lm, files, query, k, slides=None, per_slide=None):
    """Every patch of ``files`` scored independently: numpy projection through the vision head."""
    head = lm.model.vision_head.weight.detach().numpy()
    rows = []
    for path in files:
        with h5py.File(path) as f:
            vectors, coords = project(f["features"][()], head), f["coords"][()]
        name = path.stem
        if slides is None or name in slides:
            scores = vectors @ query.astype(np.float64)
            rows += [(float(s), name, int(x), int(y)) for s, (x, y) in zip(scores, coords, strict=True)]
    rows.sort(key=lambda r: (-r[0], r[1], r[3], r[2]))
    if per_slide is not None:
        taken, kept = {}, []
        for row in rows:
            if taken.get(row[1], 0) < per_slide:
                taken[row[1]] = taken.get(row[1], 0) + 1
                kept.append(row)
        rows = kept
    return rows[:k]


def feature_files(job, extra):
    return [job / "features" / "cmu.h5", *sorted(extra[0].glob("*.h5"))]


def as_tuples(hits):
    return [(h.slide, h.x, h.y) for h in hits]


def test_text_hits_equal_brute_force(lm, job, extra, faiss_index):
    query = lm.embed_texts(["mitotic figures in tumor"])[0]
    expected = brute_force(lm, feature_files(job, extra), query, 25)
    with open_index(faiss_index) as index:
        hits = index.search_text(lm, "mitotic figures in tumor", k=25)
    assert as_tuples(hits) == [r[1:] for r in expected]
    np.testing.assert_allclose([h.score for h in hits], [r[0] for r in expected], atol=1e-5)
    assert [h.rank for h in hits] == list(range(1, 26))
    assert all(h.patch_size == (128 if h.slide == "cmu" else 256) for h in hits)
    assert {h.slide: (h.case, h.label) for h in hits}.get("cmu", ("C0", "tumor")) == ("C0", "tumor")


def test_per_slide_filters_and_excluded_case_equal_brute_force(lm, job, extra, faiss_index):
    query = lm.embed_texts(["stroma"])[0]
    files = feature_files(job, extra)
    with open_index(faiss_index) as index:
        capped = index.search_text(lm, "stroma", k=7, per_slide=2)
        tumor = index.search_text(lm, "stroma", k=10, filters={"label": "tumor"})
        not_c1 = index.search_text(lm, "stroma", k=10, exclude_case="C1")
        cases = index.search_text(lm, "stroma", k=10, filters={"case": ["C2", "gen3"]})
    assert as_tuples(capped) == [r[1:] for r in brute_force(lm, files, query, 7, per_slide=2)]
    assert as_tuples(tumor) == [r[1:] for r in brute_force(lm, files, query, 10, slides={"cmu", "gen0"})]
    assert as_tuples(not_c1) == [r[1:] for r in brute_force(lm, files, query, 10, slides={"cmu", "gen2", "gen3"})]
    assert {h.slide for h in cases} == {"gen2", "gen3"}  # gen3 has no manifest row: its own case


def test_prompt_ensemble_is_the_mean_of_the_filled_templates(lm, job, extra, faiss_index):
    prompts = lm.embed_texts([t.format("necrosis") for t in TEMPLATES]).astype(np.float64).mean(0)
    expected = brute_force(lm, feature_files(job, extra), prompts / np.linalg.norm(prompts), 10)
    with open_index(faiss_index) as index:
        hits = index.search_text(lm, "necrosis", k=10, templates=TEMPLATES)
    assert as_tuples(hits) == [r[1:] for r in expected]


def test_an_image_made_from_a_stored_patch_finds_that_patch_first(lm, job, faiss_index, tmp_path):
    with h5py.File(job / "features" / "cmu.h5") as f:
        x, y = (int(v) for v in f["coords"][40])
    with openslide.OpenSlide(job.parent / "slides" / "cmu.svs") as slide:  # level 0, 128 px -> 64 px, as extracted
        region = slide.read_region((x, y), 0, (128, 128)).convert("RGB")
    region.resize((64, 64), Image.Resampling.BICUBIC, reducing_gap=None).save(tmp_path / "patch.png")
    with open_index(faiss_index) as index:
        hits = index.search_image(lm, tmp_path / "patch.png", k=3)
        from_array = index.search_image(lm, np.asarray(Image.open(tmp_path / "patch.png")), k=1)
    assert (hits[0].slide, hits[0].x, hits[0].y) == ("cmu", x, y)
    assert hits[0].score > 0.9999 and hits[1].score < hits[0].score
    assert as_tuples(from_array) == as_tuples(hits[:1])


def test_slide_scores_and_text_to_slides_equal_brute_force(lm, job, extra, faiss_index):
    head = lm.model.vision_head.weight.detach().numpy()
    texts = ["tumor", "normal tissue"]
    queries = lm.embed_texts(texts).astype(np.float64)
    pooled = {}
    for path in feature_files(job, extra):
        with h5py.File(path) as f:
            scores = queries @ project(f["features"][()], head).T
            if path.stem == "cmu":
                cmu_coords, cmu_scores = f["coords"][()], scores[0]
        pooled[path.stem] = np.sort(scores, axis=1)[:, -5:].mean(1)
    with open_index(faiss_index) as index:
        coords, size, scores = index.slide_scores(lm, "cmu", text="tumor")
        one = index.rank_slides(lm, ["tumor"], top_k=5)
        table = index.rank_slides(lm, texts, top_k=5)
    np.testing.assert_array_equal(coords, cmu_coords)
    np.testing.assert_allclose(scores, cmu_scores, atol=1e-5)
    assert size == 128
    assert [h.slide for h in one] == sorted(pooled, key=lambda s: -pooled[s][0])
    np.testing.assert_allclose([h.score for h in one], sorted((p[0] for p in pooled.values()), reverse=True), atol=1e-5)
    for hit in table:
        np.testing.assert_allclose([hit.scores[t] for t in texts], pooled[hit.slide], atol=1e-5)
        assert hit.prediction == texts[int(np.argmax(pooled[hit.slide]))]


def test_faiss_and_milvus_lite_return_the_same_hits(lm, job, extra, faiss_index, tmp_path):
    build_index([job, extra[0]], tmp_path / "milvus", lm, cases=extra[1], backend="milvus")
    with open_index(faiss_index) as a, open_index(tmp_path / "milvus") as b:
        assert b.info()["backend"] == "milvus" and b.info()["vectors"] == a.info()["vectors"] == 136 + 30 + 40 + 50 + 60
        for kwargs in ({}, {"per_slide": 1}, {"filters": {"label": "normal"}}, {"exclude_case": "C0"}):
            assert a.search_text(lm, "tumor", k=12, **kwargs) == b.search_text(lm, "tumor", k=12, **kwargs)
        assert a.similar_slides("gen0", k=4) == b.similar_slides("gen0", k=4)
        assert a.rank_slides(lm, ["tumor", "stroma"], top_k=3) == b.rank_slides(lm, ["tumor", "stroma"], top_k=3)
        np.testing.assert_array_equal(a.slide_scores(lm, "gen2", text="x")[2], b.slide_scores(lm, "gen2", text="x")[2])


def test_index_add_equals_a_build_of_everything_and_replaces_a_readded_slide(lm, job, extra, faiss_index, tmp_path):
    folder, manifest = extra
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    for i, path in enumerate(sorted(folder.glob("*.h5"))):
        shutil.copy(path, (first if i < 2 else later) / path.name)
    build_index([job, first], tmp_path / "grown", lm)
    add_to_index(tmp_path / "grown", [later], lm, cases=manifest)
    with open_index(faiss_index) as whole, open_index(tmp_path / "grown") as grown:
        assert {k: v for k, v in grown.info().items() if k in ("vectors", "slides", "cases", "labels")} == {
            k: v for k, v in whole.info().items() if k in ("vectors", "slides", "cases", "labels")
        }
        assert [r.name for r in grown.slides()] == [r.name for r in whole.slides()]
        for text in ("tumor", "lymphocytes", "fat"):
            assert grown.search_text(lm, text, k=30, per_slide=9) == whole.search_text(lm, text, k=30, per_slide=9)
        assert grown.similar_slides("cmu", k=5) == whole.similar_slides("cmu", k=5)
    changed = tmp_path / "changed"
    changed.mkdir()
    features = np.random.default_rng(9).normal(0, 1, (7, 64)).astype(np.float32)
    write_features(changed / "gen1.h5", features, lm.weights_sha256)
    add_to_index(tmp_path / "grown", [changed], lm)
    with open_index(tmp_path / "grown") as grown:
        assert grown.slide("gen1").patches == 7 and len(grown.slides()) == 5
        assert grown.slide("gen1").label == "normal"  # the manifest's label stays with the slide name
        hits = grown.search_text(lm, "tumor", k=500)
        assert len(hits) == 136 + 30 + 7 + 50 + 60 and sum(h.slide == "gen1" for h in hits) == 7
        expected = brute_force(lm, [changed / "gen1.h5"], lm.embed_texts(["tumor"])[0], 7)
        assert [(h.x, h.y) for h in hits if h.slide == "gen1"] == [(r[2], r[3]) for r in expected]


def test_contact_sheet_shows_the_patches_and_marks_a_moved_slide_missing(
    lm, job, faiss_index, tmp_path, capsys, tokenizer_file
):
    argv = [
        "search",
        str(faiss_index),
        "--text",
        "tumor",
        "--k",
        "4",
        "--filter",
        "case=C0",
        "--device",
        "cpu",
        "--tokenizer",
        str(tokenizer_file),
    ]
    assert main([*argv, "--sheet", str(tmp_path / "hits.png"), "--output", str(tmp_path / "hits.csv")]) == 0
    rows = (tmp_path / "hits.csv").read_text().splitlines()
    assert rows[0] == "rank,slide,x,y,patch_size,score,case,label" and len(rows) == 5
    x, y = (int(v) for v in rows[1].split(",")[2:4])
    with openslide.OpenSlide(job.parent / "slides" / "cmu.svs") as slide:
        patch = slide.read_region((x, y), 0, (128, 128)).convert("RGB")
    tile = patch.resize((64, 64), Image.Resampling.BICUBIC, reducing_gap=None).resize((192, 192), Image.Resampling.BOX)
    sheet = np.asarray(Image.open(tmp_path / "hits.png"))
    assert sheet.shape == (192 + 30, 4 * 192, 3)
    np.testing.assert_array_equal(sheet[:192, :192], np.asarray(tile))
    moved = job.parent / "moved.svs"
    shutil.move(job.parent / "slides" / "cmu.svs", moved)
    try:
        capsys.readouterr()
        assert main([*argv, "--sheet", str(tmp_path / "moved.png")]) == 0
        out, err = capsys.readouterr()
    finally:
        shutil.move(moved, job.parent / "slides" / "cmu.svs")
    assert out.splitlines() == rows  # the coordinates come from the index, not the slide
    assert "missing" in err and "cmu" in err
    grey = np.asarray(Image.open(tmp_path / "moved.png"))[:192, :192]
    assert (grey[:40] == 200).all()
