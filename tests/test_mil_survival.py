"""Survival models that learn: the losses rank early events as high risk, and the default `musk mil train --task
survival` reaches the linear baseline (ridge Cox on mean-pooled features) in the same folds on generated cohorts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from musk.mil.losses import (
    bin_hazard_logits,
    cox_partial_nll,
    discrete_time_nll,
    event_time_bins,
    hazards_to_risk,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _separable(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """One feature that sets the event time exactly (higher = earlier), a third of the cases censored."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    times = np.round(10 * np.exp(-x), 2)
    events = (rng.random(n) > 1 / 3).astype(int)
    return torch.as_tensor(x, dtype=torch.float32), times, events


@pytest.mark.parametrize("loss", ["nll", "cox"])
def test_the_survival_losses_rank_early_events_as_high_risk(loss):
    """A trivially separable cohort: fitting ``eta = w * x`` by either loss gives w > 0 and the risks order the
    cases as their times do (a sign error between a loss, its bins and ``hazards_to_risk`` gives a c-index < 0.5)."""
    from sksurv.metrics import concordance_index_censored

    x, times, events = _separable()
    edges = event_time_bins(times, events, 4)
    bins = torch.bucketize(torch.as_tensor(times), torch.as_tensor(edges), right=True)
    assert (bins.numpy() == np.searchsorted(edges, times, side="right")).all()  # training and intercepts agree
    w = torch.zeros(1, requires_grad=True)
    b = torch.as_tensor(bin_hazard_logits(times, events, edges), dtype=torch.float32).requires_grad_()
    optimizer = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        optimizer.zero_grad()
        if loss == "cox":
            value = cox_partial_nll(w * x, torch.as_tensor(times), torch.as_tensor(events))
        else:
            value = discrete_time_nll((w * x)[:, None] + b, bins, torch.as_tensor(events))
        value.backward()
        return value

    optimizer.step(closure)
    assert w.item() > 1
    with torch.no_grad():
        risk = w * x if loss == "cox" else hazards_to_risk((w * x)[:, None] + b)
    c_index = concordance_index_censored(events.astype(bool), times, risk.numpy().astype(np.float64))[0]
    assert c_index > 0.95


def test_censored_cases_lower_the_hazard_of_the_bins_they_survive():
    """A case censored in bin k survived bins 0..k: its loss falls as their hazards fall; an event in bin k
    raises bin k's hazard and lowers those before it."""
    logits = torch.zeros(1, 4, requires_grad=True)
    discrete_time_nll(logits, torch.tensor([2]), torch.tensor([0])).backward()
    assert (logits.grad[0, :3] > 0).all() and logits.grad[0, 3] == 0
    logits.grad = None
    discrete_time_nll(logits, torch.tensor([2]), torch.tensor([1])).backward()
    assert (logits.grad[0, :2] > 0).all() and logits.grad[0, 2] < 0 and logits.grad[0, 3] == 0


#: Generated cohorts (``prognostic_cohort``) of 64-d features, 20-60 patches per slide: seed, cases, log-hazard
#: per SD of the planted share (``strength``), share censored, how the planted patches differ (``signal``).
COHORTS = {
    "base": dict(seed=11, n_cases=90, strength=1.5, censoring=0.2, signal="shift"),
    "weak, censored": dict(seed=12, n_cases=90, strength=1.0, censoring=0.4, signal="shift"),
    "larger": dict(seed=13, n_cases=120, strength=1.5, censoring=0.2, signal="shift"),
}


def ridge_cox_c_index(manifest, features, run) -> float:
    """The ridge Cox baseline, computed here with scikit-survival in the run's folds: standardised mean features,
    the penalty chosen by 5-fold cross-validation inside each fold's training cases; mean test c-index."""
    import pandas as pd
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored
    from sksurv.util import Surv

    from musk.wsi.h5 import read_patch_file

    table = pd.read_csv(manifest)
    x = np.stack([read_patch_file(features / f"{s}.h5").features.mean(0) for s in table.slide_id])
    y = Surv.from_arrays(table.event.astype(bool), table.time)
    scores = []
    for fold in sorted(run.glob("fold_*")):
        split = json.loads((fold / "split.json").read_text())
        train = table.case_id.isin(split["fit"] + split["val"]).to_numpy()
        test = table.case_id.isin(split["test"]).to_numpy()
        pipeline = make_pipeline(StandardScaler(), CoxPHSurvivalAnalysis(ties="breslow"))
        grid = {"coxphsurvivalanalysis__alpha": 10.0 ** np.arange(-1, 5.5, 0.5)}
        search = GridSearchCV(pipeline, grid, cv=KFold(5, shuffle=True, random_state=0)).fit(x[train], y[train])
        risk = search.predict(x[test])
        scores.append(concordance_index_censored(y[test]["event"], y[test]["time"], risk)[0])
    return float(np.mean(scores))


def _train(tmp_path, manifest, features, loss: str) -> dict:
    """``musk mil train --task survival --survival_loss loss`` with every other setting at its default."""
    from musk.cli import main

    run = tmp_path / f"run_{loss}"
    argv = ["mil", "train", "--task", "survival", "--survival_loss", loss, "--manifest", str(manifest)]
    argv += ["--features_dir", str(features), "-o", str(run), "--folds", "3", "--device", "cpu"]
    assert main(argv) == 0
    return json.loads((run / "results.json").read_text())


@pytest.mark.parametrize("name", list(COHORTS))
def test_the_default_survival_model_reaches_the_ridge_cox_baseline(tmp_path, name):
    """Both losses, with every other setting at its default, reach ridge Cox on the mean features (within 0.02
    of its c-index, in the same folds) and are reported as having learned."""
    from mil_cohorts import prognostic_cohort

    manifest, features, _ = prognostic_cohort(tmp_path / "cohort", dim=64, patches=(20, 60), **COHORTS[name])
    results = {loss: _train(tmp_path, manifest, features, loss) for loss in ("nll", "cox")}
    splits = [
        [json.loads(p.read_text())["test"] for p in sorted((tmp_path / f"run_{loss}").glob("fold_*/split.json"))]
        for loss in ("nll", "cox")
    ]
    assert splits[0] == splits[1] and len(splits[0]) == 3
    baseline = ridge_cox_c_index(manifest, features, tmp_path / "run_nll")
    for loss, result in results.items():
        assert result["c_index"]["mean"] >= baseline - 0.02, (loss, result["c_index"]["mean"], baseline)
        assert result["learned"]["learned"] is True


def test_a_survival_model_starts_as_the_linear_baseline_and_keeps_it_when_saved(tmp_path):
    """With ``--start baseline`` a survival model's outputs start as the fold's ridge Cox risk: untrained (``--lr
    0``) its out-of-fold risks are the linear baseline's in the same folds, and so are those of its saved fold
    model; with ``--start zero`` every case starts alike."""
    from mil_cohorts import prognostic_cohort
    from musk.cli import main
    from musk.mil import predict_mil

    manifest, features, _ = prognostic_cohort(tmp_path / "cohort", n_cases=60, dim=32, patches=(10, 20), seed=5)
    common = ["--task", "survival", "--manifest", str(manifest), "--features_dir", str(features), "--folds", "3"]
    common += ["--device", "cpu", "--survival_loss", "cox", "--epochs", "2"]
    for name, extra in (
        ("linear", ["--model", "linear"]),
        ("start", ["--lr", "0", "--start", "baseline"]),
        ("zero", ["--lr", "0", "--start", "zero"]),
    ):
        assert main(["mil", "train", *common, *extra, "-o", str(tmp_path / name)]) == 0
    tables = {name: pd.read_csv(tmp_path / name / "predictions.csv") for name in ("linear", "start", "zero")}
    assert (tables["start"].case_id == tables["linear"].case_id).all()
    gap = tables["start"].risk - tables["linear"].risk  # the Cox head's bias shifts a fold's risks alike
    assert gap.groupby(tables["start"].fold).agg(np.ptp).max() < 1e-4
    assert np.ptp(tables["linear"].risk) > 0.1
    assert tables["zero"].risk.groupby(tables["zero"].fold).agg(np.ptp).max() < 1e-6
    saved = {name: predict_mil(tmp_path / name / "fold_0", manifest, features) for name in ("linear", "start")}
    assert np.ptp(saved["start"].predictions - saved["linear"].predictions) < 1e-4
    config = json.loads((tmp_path / "start" / "fold_0" / "config.json").read_text())
    assert config["from_baseline"] is True


def test_a_baseline_start_reads_the_mean_feature_then_the_report():
    """The baseline's part of the outputs is its fit on the case vector of ``musk.mil.baseline``: the bag's mean
    feature, then the report vector; the head's part starts as its bias alone."""
    from types import SimpleNamespace

    from musk.mil.models import MILModel

    torch.manual_seed(0)
    model = MILModel(1, 6, 4, "abmil", "concat", hidden=8, from_baseline=True, standardise=True).eval()
    mean, scale, coef = torch.randn(10), torch.rand(10) + 0.5, torch.randn(1, 10)
    model.set_baseline(SimpleNamespace(mean=mean, scale=scale, coef=coef, intercept=torch.tensor([0.3])))
    features, text = torch.randn(7, 6), torch.randn(4)
    expected = ((torch.cat([features.mean(0), text]) - mean) / scale) @ coef.T + 0.3
    torch.testing.assert_close(model(features, text)[0], expected + model.head.bias)  # the head's weights are zero
    with pytest.raises(ValueError, match="linear model is the baseline"):
        MILModel(1, 6, model="linear", from_baseline=True)


def test_a_baseline_start_is_for_survival_models():
    from musk.mil import MILTrainConfig

    for start in ("baseline", "both"):
        with pytest.raises(ValueError, match=f"start '{start}' is for survival"):
            MILTrainConfig(task="classification", start=start)
    assert MILTrainConfig(task="classification").start == "zero"
    survival = MILTrainConfig(task="survival")
    assert (survival.start, survival.epochs_for("zero"), survival.epochs_for("baseline")) == ("both", 40, 20)
    assert MILTrainConfig(task="survival", epochs=7).epochs_for("baseline") == 7


def test_the_default_survival_model_is_a_pair_read_as_one(tmp_path):
    """By default each fold trains the very models that ``--start zero`` and ``--start baseline`` give, and its
    risk is the mean of theirs, each standardised by its mean and standard deviation on the fold's training cases;
    the saved pair predicts the same, and its attention over a slide's patches is the mean of theirs."""
    from mil_cohorts import prognostic_cohort
    from musk.cli import main
    from musk.mil import predict_mil
    from musk.mil.heatmap import patch_attention
    from musk.wsi.h5 import read_patch_file

    manifest, features, _ = prognostic_cohort(tmp_path / "cohort", n_cases=60, dim=32, patches=(10, 20), seed=5)
    common = ["--task", "survival", "--manifest", str(manifest), "--features_dir", str(features), "--folds", "3"]
    common += ["--device", "cpu", "--epochs", "3"]
    members = ("zero", "baseline")
    for name, extra in (("pair", []), ("zero", ["--start", "zero"]), ("baseline", ["--start", "baseline"])):
        assert main(["mil", "train", *common, *extra, "-o", str(tmp_path / name)]) == 0
    out_of_fold = pd.read_csv(tmp_path / "pair" / "predictions.csv").set_index("case_id").risk
    for k in range(3):
        fold = {name: tmp_path / name / f"fold_{k}" for name in ("pair", "zero", "baseline")}
        pair = predict_mil(fold["pair"], manifest, features)
        ids = pair.cohort.case_ids
        fit = np.isin(ids, json.loads((fold["pair"] / "split.json").read_text())["fit"])
        expected = 0
        for member, start in zip(pair.models[0].model.members, members, strict=True):
            alone = predict_mil(fold[start], manifest, features)
            for name, value in alone.models[0].model.state_dict().items():
                torch.testing.assert_close(member.state_dict()[name], value)
            risk = alone.predictions
            expected = expected + (risk - risk[fit].mean()) / risk[fit].std() / 2
        np.testing.assert_allclose(pair.predictions, expected, rtol=1e-4, atol=1e-5)
        bag = read_patch_file(features / f"{pair.cohort.cases[0].slide_ids[0]}.h5").features
        attention = [patch_attention([predict_mil(fold[s], manifest, features).models[0]], bag) for s in members]
        np.testing.assert_allclose(patch_attention(pair.models, bag), np.mean(attention, 0), rtol=1e-5, atol=1e-7)
        test = json.loads((fold["pair"] / "split.json").read_text())["test"]
        np.testing.assert_allclose(out_of_fold[test], pd.Series(expected, index=ids)[test], rtol=1e-4, atol=1e-5)
