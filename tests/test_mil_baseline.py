"""The linear baseline (ridge Cox, logistic regression on mean-pooled features) against scikit-survival and
scikit-learn, its place in a run (``--model linear``, ``--baseline``) and the "not learned" report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mil_cohorts import classification_cohort, prognostic_cohort
from musk.cli import main
from musk.mil import MILTrainConfig, load_mil_models, train_mil
from musk.mil.baseline import ridge_cox
from musk.mil.chance import learning_report
from musk.wsi.h5 import read_patch_file

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("n", "d"), [(60, 8), (40, 150)])
def test_ridge_cox_equals_scikit_survival(n, d):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    rng = np.random.default_rng(d)
    x = rng.normal(size=(n, d))
    times = np.round(rng.exponential(size=n) * np.exp(-x[:, 0]), 1) + 0.1  # rounded: tied times
    events = (rng.random(n) < 0.7).astype(int)
    assert len(np.unique(times)) < n
    for alpha in (0.5, 20.0):
        reference = CoxPHSurvivalAnalysis(alpha=alpha, ties="breslow", tol=1e-12, n_iter=500)
        reference.fit(x, Surv.from_arrays(events.astype(bool), times))
        np.testing.assert_allclose(ridge_cox(x, times, events, alpha), reference.coef_, atol=1e-7)


def _mean_features(features_dir, slide_ids) -> np.ndarray:
    return np.stack([read_patch_file(features_dir / f"{s}.h5").features.mean(0) for s in slide_ids])


def test_linear_survival_model_is_ridge_cox_on_standardised_mean_features(tmp_path):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    manifest, features, _ = prognostic_cohort(tmp_path, n_cases=60, dim=24, patches=(20, 40), seed=3)
    table = pd.read_csv(manifest)
    x = _mean_features(features, table.slide_id)
    run = tmp_path / "run"
    argv = ["mil", "train", "--task", "survival", "--model", "linear", "--manifest", str(manifest)]
    assert main([*argv, "--features_dir", str(features), "-o", str(run), "--folds", "3", "--device", "cpu"]) == 0
    predictions = pd.read_csv(run / "predictions.csv").set_index("case_id").loc[table.case_id]
    for k in range(3):
        split = json.loads((run / f"fold_{k}" / "split.json").read_text())
        assert split["val"] == []  # the penalty is chosen inside the training cases
        alpha = json.loads((run / f"fold_{k}" / "selection.json").read_text())["penalty"]
        train, test = table.case_id.isin(split["fit"]).to_numpy(), table.case_id.isin(split["test"]).to_numpy()
        mean, scale = x[train].mean(0), x[train].std(0)
        reference = CoxPHSurvivalAnalysis(alpha=alpha, ties="breslow", tol=1e-12, n_iter=500)
        reference.fit((x[train] - mean) / scale, Surv.from_arrays(table.event[train].astype(bool), table.time[train]))
        expected = reference.predict((x[test] - mean) / scale)
        np.testing.assert_allclose(predictions.risk[test], expected, rtol=1e-4, atol=1e-5)
    # saved as a slide-level model: eval applies it (fold models averaged)
    assert main(["mil", "eval", "--model_dir", str(run), "--manifest", str(manifest), "--features_dir",
                 str(features), "-o", str(tmp_path / "eval"), "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["c_index"] > 0.6


def test_linear_classifier_is_logistic_regression_and_reported_as_baseline(tmp_path):
    from sklearn.linear_model import LogisticRegression

    manifest, features, labels = classification_cohort(tmp_path, n_cases=48, patches=(20, 40), two_slides_every=0)
    table = pd.read_csv(manifest)
    x = _mean_features(features, table.slide_id)
    common = {"manifest": str(manifest), "features_dir": str(features), "folds": 3, "device": "cpu"}
    linear = train_mil(MILTrainConfig(output_dir=str(tmp_path / "linear"), model="linear", **common))
    predictions = pd.read_csv(linear.predictions).set_index("case_id").loc[table.case_id]
    for k in range(3):
        split = json.loads((tmp_path / "linear" / f"fold_{k}" / "split.json").read_text())
        c = json.loads((tmp_path / "linear" / f"fold_{k}" / "selection.json").read_text())["penalty"]
        train, test = table.case_id.isin(split["fit"]).to_numpy(), table.case_id.isin(split["test"]).to_numpy()
        mean, scale = x[train].mean(0), x[train].std(0)
        reference = LogisticRegression(C=c, tol=1e-8, max_iter=5000).fit((x[train] - mean) / scale, labels[train])
        expected = reference.predict_proba((x[test] - mean) / scale)[:, 1]
        np.testing.assert_allclose(predictions.prob_tumor[test], expected, atol=1e-4)

    fast = {"hidden": 32, "epochs": 15, **common}
    run = train_mil(MILTrainConfig(output_dir=str(tmp_path / "abmil"), baseline=True, **fast))
    saved = json.loads((tmp_path / "abmil" / "results.json").read_text())
    assert saved["baseline"]["model"] == "linear"
    for metric in ("auroc", "balanced_acc", "f1"):
        assert saved["baseline"][metric] == linear.results[metric]  # same folds, same fits
    assert run.summary()["baseline"]["auroc"]["mean"] == linear.results["auroc"]["mean"]
    assert saved["learned"]["learned"] is True and saved["learned"]["folds"] == [True] * 3
    assert [m.config["model"] for m in load_mil_models(tmp_path / "abmil")] == ["abmil"] * 3


def test_a_model_that_cannot_learn_says_so(tmp_path, capsys):
    """Every slide the same (a broken feature extraction): every risk is the same, every c-index is 0.5."""
    from musk.wsi.h5 import write_patch_file

    manifest, features, _ = prognostic_cohort(tmp_path, n_cases=45, dim=8, patches=(10, 20), seed=1)
    same = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    for path in features.glob("*.h5"):
        write_patch_file(path, np.zeros((12, 2)), {"features": same}, {"patch_size_level0": 256})
    run = tmp_path / "run"
    argv = ["mil", "train", "--task", "survival", "--manifest", str(manifest), "--features_dir", str(features)]
    argv += ["--val_fraction", "0.2"]  # validation cases, so that each fold is judged too
    assert main([*argv, "-o", str(run), "--folds", "3", "--epochs", "3", "--hidden", "16", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["learned"] is False
    assert "the model has not learned" in printed.err and "at or below chance" in printed.err
    results = json.loads((run / "results.json").read_text())
    assert results["c_index"]["folds"] == [0.5, 0.5, 0.5]
    assert results["learned"]["learned"] is False and results["learned"]["folds"] == [False] * 3
    assert "the model has not learned" in results["learned"]["message"]


def test_learning_report_names_the_folds_that_did_not_beat_chance():
    report = learning_report("c_index", [0.62, 0.5, None], 0.55)
    assert report["learned"] is False and report["folds"] == [True, False, None]
    assert "fold(s) 1" in report["message"] and "0.500" in report["message"]
    report = learning_report("auroc", [0.7, 0.8], 0.49)
    assert report["learned"] is False and "cross-validated auroc (0.490) is at or below chance" in report["message"]
    report = learning_report("c_index", [0.7, float("nan")], 0.6)
    assert report == {"learned": True, "folds": [True, None], "message": report["message"]}
