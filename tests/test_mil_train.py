"""Cross-validated training on generated cohorts with planted effects (see mil_cohorts.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mil_cohorts import classification_cohort, survival_cohort
from musk.mil import MILTrainConfig, load_mil_models, patch_attention, save_report_embeddings, train_mil
from musk.wsi.h5 import read_patch_file

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"folds": 3, "hidden": 64, "epochs": 30, "device": "cpu"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    manifest, features, labels = classification_cohort(root, n_cases=80)
    return root, manifest, features, labels


@pytest.fixture(scope="module")
def abmil_run(planted):
    root, manifest, features, _ = planted
    config = MILTrainConfig(manifest=str(manifest), features_dir=str(features), output_dir=str(root / "abmil"), **FAST)
    return config, train_mil(config)


def _fold_aurocs(predictions: pd.DataFrame) -> list[float]:
    from sklearn.metrics import roc_auc_score

    return [
        roc_auc_score(fold.label == "tumor", fold.prob_tumor)
        for _, fold in sorted(predictions.groupby("fold"), key=lambda g: g[0])
    ]


def test_abmil_finds_the_planted_patches(abmil_run, planted):
    config, result = abmil_run
    assert result.results["auroc"]["mean"] > 0.9
    predictions = pd.read_csv(result.predictions)
    assert result.results["auroc"]["folds"] == pytest.approx(_fold_aurocs(predictions))

    models = load_mil_models(result.output_dir)
    assert len(models) == 3
    _, manifest, features, labels = planted
    ratios = []
    for case in np.flatnonzero(labels == 1)[:15]:
        slide = read_patch_file(features / f"slide{case:03d}_0.h5")
        attention = patch_attention(models, slide.features)
        is_planted = slide.arrays["planted"].astype(bool)
        ratios.append(attention[is_planted].mean() / attention[~is_planted].mean())
    assert np.median(ratios) > 5, ratios


def test_mean_pooling_does_worse_on_sparse_signal(abmil_run, planted):
    root, manifest, features, _ = planted
    _, abmil = abmil_run
    config = MILTrainConfig(
        manifest=str(manifest), features_dir=str(features), output_dir=str(root / "mean"), model="mean", **FAST
    )
    mean = train_mil(config)
    assert mean.results["auroc"]["mean"] < abmil.results["auroc"]["mean"] - 0.05


def test_no_case_in_two_folds_and_finished_folds_are_reused(abmil_run, planted):
    config, result = abmil_run
    predictions = pd.read_csv(result.predictions)
    assert predictions.case_id.is_unique and len(predictions) == 80
    assert predictions.slide_ids.str.contains(";").sum() == 20  # every fourth case has two slides
    tested = []
    for k in range(3):
        split = json.loads((result.output_dir / f"fold_{k}" / "split.json").read_text())
        fit, val, test = set(split["fit"]), set(split["val"]), set(split["test"])
        assert not (fit & val) and not (fit & test) and not (val & test)
        assert set(predictions.case_id[predictions.fold == k]) == test
        tested.extend(test)
    assert len(tested) == len(set(tested)) == 80

    weights = [(result.output_dir / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(3)]
    again = train_mil(config)
    assert [(result.output_dir / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(3)] == weights
    assert again.results == result.results


@pytest.mark.parametrize("loss", ["nll", "cox"])
def test_survival_with_a_known_hazard(tmp_path, loss):
    from lifelines.statistics import logrank_test
    from lifelines.utils import concordance_index
    from sksurv.metrics import concordance_index_censored

    manifest, features, _ = survival_cohort(tmp_path, n_cases=120)
    config = MILTrainConfig(
        manifest=str(manifest),
        features_dir=str(features),
        output_dir=str(tmp_path / "run"),
        task="survival",
        survival_loss=loss,
        **FAST,
    )
    result = train_mil(config)
    assert result.results["c_index"]["mean"] > 0.62  # the true risk scores about 0.78 on this cohort
    predictions = pd.read_csv(result.predictions)
    for k, fold in predictions.groupby("fold"):
        expected = concordance_index_censored(fold.event.astype(bool), fold.time, fold.risk)[0]
        assert result.results["c_index"]["folds"][k] == pytest.approx(expected)
        assert expected == pytest.approx(concordance_index(fold.time, -fold.risk, fold.event))
    high = (predictions.risk_group == "high").to_numpy()
    p = logrank_test(predictions.time[high], predictions.time[~high], predictions.event[high], predictions.event[~high])
    assert result.logrank_p == pytest.approx(p.p_value, rel=1e-6) and result.logrank_p < 0.01
    assert (tmp_path / "run" / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result.results) == {"c_index", "c_index_uno", "td_auc", "learned"}
    assert all(result.results[m]["mean"] > 0.6 for m in ("c_index", "c_index_uno", "td_auc"))
    assert result.results["learned"]["learned"]


def test_fusion_uses_the_report_signal(tmp_path):
    """Slides without signal, report vectors that carry the label: fusion and text-only learn, slides alone do not."""
    manifest, features, labels = classification_cohort(tmp_path, n_cases=60, shift=0.0, patches=(20, 40))
    rng = np.random.default_rng(5)
    text = np.eye(8)[labels] * 1.5 + rng.normal(scale=0.5, size=(60, 8))
    save_report_embeddings(tmp_path / "reports.npz", [f"case{c:03d}" for c in range(60)], text)
    aurocs = {}
    for fusion in ("none", "concat", "gated", "text_only"):
        config = MILTrainConfig(
            manifest=str(manifest),
            features_dir=str(features),
            output_dir=str(tmp_path / fusion),
            fusion=fusion,
            report_embeddings=str(tmp_path / "reports.npz"),
            **FAST,
        )
        aurocs[fusion] = train_mil(config).results["auroc"]["mean"]
    assert aurocs["none"] < 0.75, aurocs
    assert min(aurocs["concat"], aurocs["gated"], aurocs["text_only"]) > 0.9, aurocs


def test_multiclass_with_imbalanced_classes_and_balanced_sampling(tmp_path):
    """Three classes (24/12/9 cases), each moving a tenth of its patches its own way; drawn class-balanced."""
    from sklearn.metrics import roc_auc_score

    from musk.wsi.h5 import write_patch_file

    rng = np.random.default_rng(6)
    labels = np.repeat([0, 1, 2], [24, 12, 9])
    rows = ["slide_id,case_id,label"]
    for c, label in enumerate(labels):
        x = rng.normal(size=(40, 8)).astype(np.float32)
        x[:4, label] += 4.0
        write_patch_file(tmp_path / f"s{c}.h5", np.zeros((40, 2)), {"features": x}, {"patch_size_level0": 256})
        rows.append(f"s{c},c{c},{['lung', 'breast', 'colon'][label]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    config = MILTrainConfig(
        manifest=str(tmp_path / "m.csv"),
        features_dir=str(tmp_path),
        output_dir=str(tmp_path / "run"),
        balance="sampler",
        **FAST,
    )
    result = train_mil(config)
    predictions = pd.read_csv(result.predictions)
    assert list(predictions.columns[-3:]) == ["prob_breast", "prob_colon", "prob_lung"]
    truth = predictions.label.map({"breast": 0, "colon": 1, "lung": 2})
    probs = predictions[["prob_breast", "prob_colon", "prob_lung"]].to_numpy()
    assert roc_auc_score(truth, probs, multi_class="ovr") > 0.9
    assert result.results["balanced_acc"]["mean"] > 0.8
