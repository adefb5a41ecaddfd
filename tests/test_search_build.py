"""Building search indexes from generated cohorts: a build killed mid-slide resumes to the same index, a half-written
index never opens, ms and proj features, weights checks, approximate kinds against exact search, case retrieval
and the evaluation metrics against an independent computation."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

import musk
from musk.search import (
    SearchError,
    add_to_index,
    backend_faiss,
    build_index,
    evaluate_index,
    mil_slide_embeddings,
    open_index,
)
from musk.search.layout import COORDS, SLIDE_VECTORS, staging_dir
from search_cohorts import TINY, labelled_cohort, project, write_features


@pytest.fixture(scope="module")
def lm(tokenizer_file):
    return musk.load(TINY, "none", device="cpu", tokenizer=tokenizer_file)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, lm):
    return labelled_cohort(tmp_path_factory.mktemp("cohort"), lm.weights_sha256)


@pytest.fixture(scope="module")
def flat_index(tmp_path_factory, lm, cohort):
    path = tmp_path_factory.mktemp("flat") / "index"
    build_index([cohort[0]], path, lm, cases=cohort[1])
    return path


KILLED_BUILD = """
import sys, time
import musk
from musk.search import build
real = build.read_chunks
seen = []

def slow_chunks(path, rows=16384):
    seen.append(path)
    for coords, features in real(path, rows):
        if len(seen) == 4:  # the fourth slide: half of it is stored, then the process hangs until killed
            yield coords[:10], features[:10]
            open(sys.argv[3], "w").close()
            time.sleep(600)
        yield coords, features

build.read_chunks = slow_chunks
lm = musk.load("musk_tiny_patch16_64", "none", device="cpu")
build.build_index([sys.argv[1]], sys.argv[2], lm, backend=sys.argv[4])
"""


def _kill_mid_build(tmp_path, features, target, backend):
    script = tmp_path / "killed_build.py"
    script.write_text(textwrap.dedent(KILLED_BUILD))
    marker = tmp_path / "hanging"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, str(script), str(features), str(target), str(marker), backend], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the build never reached its fourth slide"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_a_killed_build_never_looks_finished_and_resumes_to_the_same_index(lm, cohort, flat_index, tmp_path, backend):
    target = tmp_path / "index"
    _kill_mid_build(tmp_path, cohort[0], target, backend)
    assert not target.exists()
    journal = (staging_dir(target) / "build.jsonl").read_text().splitlines()
    assert len(journal) == 1 + 3  # the settings, then the three finished slides
    with pytest.raises(SearchError, match="interrupted"):
        open_index(target)
    build_index([cohort[0]], target, lm, cases=cohort[1], backend=backend)
    assert not staging_dir(target).exists()
    with open_index(target) as resumed, open_index(flat_index) as whole:
        assert resumed.info()["vectors"] == whole.info()["vectors"]
        assert resumed.slides() == whole.slides()
        for text in ("tumor", "normal"):
            assert resumed.search_text(lm, text, k=40) == whole.search_text(lm, text, k=40)
        assert resumed.similar_slides("case04_A", k=6) == whole.similar_slides("case04_A", k=6)
        for record in whole.slides():
            np.testing.assert_array_equal(resumed.backend.slide_vectors(record), whole.backend.slide_vectors(record))
    for name in (COORDS, SLIDE_VECTORS):
        assert (target / name).read_bytes() == (flat_index / name).read_bytes()


def test_ms_features_use_their_first_half_and_proj_features_are_used_as_they_are(lm, tmp_path):
    rng = np.random.default_rng(3)
    cls = rng.normal(0, 1, (20, 64)).astype(np.float32)
    proj = project(cls, lm.model.vision_head.weight.detach().numpy()).astype(np.float32)
    write_features(tmp_path / "in" / "a.h5", cls, lm.weights_sha256, kind="cls")
    write_features(tmp_path / "in" / "b.h5", np.hstack([cls, rng.normal(0, 1, cls.shape)]).astype(np.float32),
                   lm.weights_sha256, kind="ms")  # fmt: skip
    write_features(tmp_path / "in" / "c.h5", proj, lm.weights_sha256, kind="proj")
    build_index([tmp_path / "in"], tmp_path / "index", lm)
    with open_index(tmp_path / "index") as index:
        vectors = {r.name: index.backend.slide_vectors(r) for r in index.slides()}
        assert index.info()["feature_kind"] == "cls+ms+proj"
    np.testing.assert_allclose(vectors["a"], proj, atol=1e-6)
    np.testing.assert_allclose(vectors["b"], proj, atol=1e-6)
    np.testing.assert_array_equal(vectors["c"], proj)


def test_features_of_other_weights_and_an_index_of_other_weights_are_refused(lm, cohort, flat_index, tmp_path):
    other = musk.load(TINY, "none", device="cpu", seed=1)
    assert other.weights_sha256 != lm.weights_sha256
    with pytest.raises(SearchError) as error:
        build_index([cohort[0]], tmp_path / "index", other)
    assert lm.weights_sha256 in str(error.value) and other.weights_sha256 in str(error.value)
    assert not (tmp_path / "index").exists() and not staging_dir(tmp_path / "index").exists()
    with open_index(flat_index) as index, pytest.raises(SearchError) as error:
        index.search_text(other, "tumor")
    assert lm.weights_sha256 in str(error.value) and other.weights_sha256 in str(error.value)
    with pytest.raises(SearchError, match=other.weights_sha256):
        add_to_index(flat_index, [cohort[0]], other)


def test_h5_files_without_the_attributes_are_named_with_how_to_fix(lm, tmp_path):
    write_features(tmp_path / "in" / "ok.h5", np.ones((3, 64), np.float32), lm.weights_sha256)
    write_features(tmp_path / "in" / "bare.h5", np.ones((3, 64), np.float32), None, kind=None)
    with pytest.raises(SearchError) as error:
        build_index([tmp_path / "in"], tmp_path / "index", lm)
    message = str(error.value)
    assert "bare.h5" in message and "feature_kind, weights_sha256" in message and "f.attrs[" in message
    assert "\n" not in message
    assert not (tmp_path / "index").exists() and not staging_dir(tmp_path / "index").exists()


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_kinds_agree_with_exact_search(lm, tmp_path, kind, monkeypatch):
    monkeypatch.setattr(backend_faiss, "EXACT_MAX", 0)  # filtered queries go through the index too
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 1, (40, 64))
    folder = tmp_path / "in"
    for s in range(12):
        features = centres[rng.integers(0, 40, 300)] + rng.normal(0, 0.6, (300, 64))
        write_features(folder / f"s{s:02d}.h5", features.astype(np.float32), lm.weights_sha256)
    build_index([folder], tmp_path / "exact", lm, kind="flat")
    build_index([folder], tmp_path / "approx", lm, kind=kind)
    texts = ["tumor", "stroma", "fat", "necrosis", "lymphocytes", "mucin", "vessel", "nerve"]
    with open_index(tmp_path / "exact") as exact, open_index(tmp_path / "approx") as approx:
        assert approx.info()["kind"] == kind and (tmp_path / "approx" / approx.manifest.backend_state["ann"]).is_file()
        found = [approx.search_text(lm, t, k=10) for t in texts]
        truth = [exact.search_text(lm, t, k=10) for t in texts]
        recall = np.mean([len({(h.slide, h.x, h.y) for h in f} & {(h.slide, h.x, h.y) for h in t}) / 10
                          for f, t in zip(found, truth, strict=True)])  # fmt: skip
        assert recall >= 0.9
        for f, t in zip(found, truth, strict=True):  # the scores of what is found are exact
            exact_scores = {(h.slide, h.x, h.y): h.score for h in t}
            assert all(h.score == exact_scores[(h.slide, h.x, h.y)] for h in f if (h.slide, h.x, h.y) in exact_scores)
        some = approx.search_text(lm, "tumor", k=20, filters={"case": ["s03", "s07"]})
        assert {h.slide for h in some} <= {"s03", "s07"} and len(some) == 20
    features = rng.normal(0, 1, (5, 64)).astype(np.float32)
    write_features(tmp_path / "again" / "s03.h5", features, lm.weights_sha256)
    add_to_index(tmp_path / "approx", [tmp_path / "again"], lm)
    with open_index(tmp_path / "approx") as approx:
        hits = approx.search_text(lm, "tumor", k=50, filters={"case": "s03"})
        assert len(hits) == 5 and approx.info()["vectors"] == 11 * 300 + 5


def test_ivfpq_needs_enough_vectors(lm, tmp_path):
    write_features(tmp_path / "in" / "small.h5", np.ones((30, 64), np.float32), lm.weights_sha256)
    with pytest.raises(SearchError, match="at least 256 vectors"):
        build_index([tmp_path / "in"], tmp_path / "index", lm, kind="ivfpq")


def _read_cohort(lm, cohort):
    """(name, case, label, projected patch vectors) of every slide, from the h5 files (numpy)."""
    features_dir, manifest = cohort
    head = lm.model.vision_head.weight.detach().numpy()
    slides = []
    for line in manifest.read_text().splitlines()[1:]:
        name, case, label = line.split(",")
        with h5py.File(features_dir / f"{name}.h5") as f:
            slides.append((name, case, label, project(f["features"][()], head)))
    return slides


def _scores(labels_found: list[list[str]], labels: list[str]) -> dict:
    """Acc@1/3/5 and mMV@5 written out again (majority of the top 5, ties to the label met first)."""
    out = {f"acc@{k}": np.mean([q in found[:k] for q, found in zip(labels, labels_found, strict=True)])
           for k in (1, 3, 5)}  # fmt: skip
    votes = []
    for query, found in zip(labels, labels_found, strict=True):
        top = found[:5]
        counts = {lab: top.count(lab) for lab in top}
        votes.append(next(lab for lab in top if counts[lab] == max(counts.values())) == query)
    out["mmv@5"] = np.mean(votes)
    return out


def test_case_retrieval_and_its_metrics_equal_an_independent_computation(lm, cohort, flat_index):
    slides = _read_cohort(lm, cohort)
    embedding = {name: v.mean(0) / np.linalg.norm(v.mean(0)) for name, _, _, v in slides}
    label = {name: lab for name, _, lab, _ in slides}
    ranked = {}
    for name, case, _, _ in slides:
        others = [(float(embedding[name] @ embedding[o]), o) for o, c, _, _ in slides if c != case]
        ranked[name] = [o for _, o in sorted(others, key=lambda t: (-t[0], t[1]))]
    patch_labels, patch_found = [], []
    for _, case, lab, vectors in slides:  # every patch is a query (patch_queries exceeds their number)
        pool = [(v, o_lab) for o, c, o_lab, vs in slides if c != case for v in vs]
        candidates = np.stack([v for v, _ in pool])
        for vector in vectors:
            order = np.argsort(-(candidates @ vector))[:5]
            patch_labels.append(lab)
            patch_found.append([pool[i][1] for i in order])
    with open_index(flat_index) as index:
        for name in ranked:
            assert [h.slide for h in index.similar_slides(name, k=5)] == ranked[name][:5]
        report = evaluate_index(index, cohort[1], patch_queries=10_000)
    slide_metrics = _scores([[label[o] for o in ranked[n]] for n in ranked], [label[n] for n in ranked])
    assert report["slides"] == pytest.approx({"queries": len(slides), **slide_metrics})
    assert 0 < report["slides"]["mmv@5"] < 1  # the cohort is hard enough that the metric is neither 0 nor 1
    patch_metrics = _scores(patch_found, patch_labels)
    assert report["patches"] == pytest.approx({"queries": len(patch_labels), **patch_metrics, "recall@10": 1.0})


def test_case_retrieval_by_a_trained_mil_models_representation(lm, cohort, flat_index, tmp_path, capsys):
    from musk.cli import main
    from musk.mil import MILModel, save_mil_model

    folds = []
    for fold in range(2):
        torch.manual_seed(fold)
        model = MILModel(out_dim=3, feature_dim=64, model="abmil", hidden=16, standardise=True).eval()
        model.set_feature_scale(torch.randn(64), 0.5 + torch.rand(64))  # the training cases' scale, kept
        config = {"out_dim": 3, "feature_dim": 64, "text_dim": None, "model": "abmil", "fusion": "none",
                  "hidden": 16, "dropout": 0.0, "task": "classification", "classes": ["a", "b", "c"],
                  "standardise": True}  # fmt: skip
        save_mil_model(model, tmp_path / "run" / f"fold_{fold}", config)
        folds.append(model)
    slides = _read_raw(cohort)
    vectors = {}
    with torch.no_grad():
        for name, features in slides.items():
            parts = [m.aggregate(torch.from_numpy(features))[0].numpy().astype(np.float64) for m in folds]
            vectors[name] = np.concatenate([p / np.linalg.norm(p) for p in parts])
    case = {name: name.split("_")[0] for name in slides}
    query = "case05_A"
    others = [(float(vectors[query] @ vectors[o]) / 2, o) for o in slides if case[o] != case[query]]
    expected = sorted(others, key=lambda t: (-t[0], t[1]))[:4]
    with open_index(flat_index) as index:
        hits = index.similar_slides(query, k=4, embeddings=mil_slide_embeddings(index, tmp_path / "run"))
    assert [h.slide for h in hits] == [o for _, o in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for s, _ in expected], atol=1e-6)
    assert len(list(flat_index.glob("mil-*.npz"))) == 1  # computed once, kept beside the index
    capsys.readouterr()
    assert main(["search", str(flat_index), "--slide", query, "--k", "4", "--mil", str(tmp_path / "run")]) == 0
    assert [row.split(",")[1] for row in capsys.readouterr().out.splitlines()[1:]] == [o for _, o in expected]


def _read_raw(cohort):
    features_dir, manifest = cohort
    names = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]
    out = {}
    for name in names:
        with h5py.File(features_dir / f"{name}.h5") as f:
            out[name] = f["features"][()]
    return out


def test_a_slide_without_tissue_is_indexed_without_vectors(lm, tmp_path):
    write_features(tmp_path / "in" / "glass.h5", np.zeros((0, 64), np.float32), lm.weights_sha256)
    write_features(tmp_path / "in" / "tissue.h5", np.ones((4, 64), np.float32), lm.weights_sha256)
    (tmp_path / "cases.csv").write_text("slide,case,label\nglass,c1,empty\ntissue,c2,tumor\n")
    build_index([tmp_path / "in"], tmp_path / "index", lm, cases=tmp_path / "cases.csv")
    with open_index(tmp_path / "index") as index:
        assert index.slide("glass").patches == 0 and index.info()["vectors"] == 4
        assert {h.slide for h in index.search_text(lm, "tumor", k=10)} == {"tissue"}
        assert [h.slide for h in index.similar_slides("tissue")] == []
        with pytest.raises(SearchError, match="no patches"):
            index.similar_slides("glass")
