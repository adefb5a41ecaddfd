"""Metrics, losses and Kaplan-Meier output against hand computations, lifelines and scikit-survival."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from musk.mil import (
    classification_metrics,
    cox_partial_nll,
    discrete_time_nll,
    event_time_bins,
    hazards_to_risk,
    logrank_p,
    median_split,
    plot_kaplan_meier,
    summarize,
    survival_metrics,
)
from musk.mil.metrics import td_auc_times, uno_tau


def test_classification_metrics_by_hand():
    labels = [0, 0, 1, 1, 1]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.65, 0.35], [0.2, 0.8], [0.3, 0.7]])
    m = classification_metrics(labels, probs)
    # positives 0.35, 0.8, 0.7 vs negatives 0.1, 0.6: pairs won 1+2+2 = 5 of 6
    assert m["auroc"] == pytest.approx(5 / 6)
    # predicted 0, 1, 0, 1, 1: recall 1/2 for class 0 and 2/3 for class 1
    assert m["balanced_acc"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # class 1: tp 2, fp 1, fn 1 -> precision 2/3, recall 2/3
    assert m["f1"] == pytest.approx(2 / 3)


def test_multiclass_metrics_match_scikit_learn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40) + np.eye(3)[labels] * 0.3
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(labels, probs)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert m["f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))


def test_harrell_c_index_by_hand_and_by_lifelines():
    from lifelines.utils import concordance_index

    times = np.array([2.0, 4.0, 6.0, 8.0])
    events = np.array([1, 0, 1, 1])
    risks = np.array([0.9, 0.5, 0.6, 0.1])
    # comparable pairs (the earlier time is an event): (0,1) (0,2) (0,3) (2,3); all four ordered by risk
    assert survival_metrics(times, events, risks)["c_index"] == pytest.approx(1.0)
    risks = np.array([0.2, 0.5, 0.6, 0.1])  # (0,1) (0,2) discordant, (0,3) (2,3) concordant
    assert survival_metrics(times, events, risks)["c_index"] == pytest.approx(0.5)

    rng = np.random.default_rng(1)
    times, events, risks = rng.exponential(5, 60), rng.integers(0, 2, 60), rng.normal(size=60)
    ours = survival_metrics(times, events, risks)["c_index"]
    assert ours == pytest.approx(concordance_index(times, -risks, events))


def test_uno_and_td_auc_equal_scikit_survival():
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc
    from sksurv.util import Surv

    rng = np.random.default_rng(2)
    r = rng.normal(size=200)
    t = rng.exponential(1 / np.exp(r))
    c = rng.exponential(2.0, 200)
    times, events = np.minimum(t, c), (t <= c).astype(int)
    train, test = np.arange(120), np.arange(120, 200)
    m = survival_metrics(times[test], events[test], r[test], times[train], events[train])
    y_train = Surv.from_arrays(events[train].astype(bool), times[train])
    y_test = Surv.from_arrays(events[test].astype(bool), times[test])
    tau = uno_tau(times[train])
    assert tau == pytest.approx(np.quantile(times[train], 0.9))
    assert m["c_index_uno"] == pytest.approx(concordance_index_ipcw(y_train, y_test, r[test], tau=tau)[0])
    grid = td_auc_times(times[test], events[test], tau)
    assert len(grid) == 3 and grid.max() < tau
    assert m["td_auc"] == pytest.approx(cumulative_dynamic_auc(y_train, y_test, r[test], grid)[1])
    assert m["c_index"] > 0.6 and m["td_auc"] > 0.6  # the risk is the true log hazard


def test_summary_mean_and_sample_std():
    s = summarize([{"a": 0.5}, {"a": 0.7}, {"a": float("nan")}, {"a": 0.9}], ["a"])
    assert s["a"]["folds"][:2] == [0.5, 0.7] and math.isnan(s["a"]["folds"][2])
    assert s["a"]["mean"] == pytest.approx(0.7)
    assert s["a"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))


def test_cox_loss_is_the_partial_likelihood_of_lifelines():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 2))
    t = rng.exponential(1 / np.exp(x @ [1.0, -0.5]))
    e = (rng.random(80) < 0.7).astype(int)
    cph = CoxPHFitter().fit(pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "T": t, "E": e}), "T", "E")
    beta = torch.tensor(cph.params_.values, requires_grad=True)
    loss = cox_partial_nll(torch.as_tensor(x) @ beta, torch.as_tensor(t), torch.as_tensor(e))
    assert loss.item() * e.sum() == pytest.approx(-cph.log_likelihood_, rel=1e-6)
    loss.backward()  # lifelines' estimate maximises it: the gradient vanishes there
    assert beta.grad.abs().max() < 1e-4
    assert cox_partial_nll(torch.zeros(3), torch.tensor([1.0, 2, 3]), torch.zeros(3)).item() == 0.0


def test_cox_loss_ties_use_the_breslow_risk_set():
    r = torch.tensor([0.3, -0.2, 0.5])
    t = torch.tensor([1.0, 1.0, 2.0])
    e = torch.tensor([1, 1, 0])
    everyone = math.log(sum(math.exp(v) for v in r.tolist()))
    expected = -((0.3 - everyone) + (-0.2 - everyone)) / 2
    assert cox_partial_nll(r, t, e).item() == pytest.approx(expected)


def test_discrete_time_nll_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]])  # hazards 1/2, 3/4, 1/2
    h = [0.5, 0.75, 0.5]
    event_in_bin_1 = -math.log((1 - h[0]) * h[1])
    censored_in_bin_1 = -math.log((1 - h[0]) * (1 - h[1]))
    assert discrete_time_nll(logits, torch.tensor([1]), torch.tensor([1])).item() == pytest.approx(event_in_bin_1)
    assert discrete_time_nll(logits, torch.tensor([1]), torch.tensor([0])).item() == pytest.approx(censored_in_bin_1)
    both = discrete_time_nll(logits.repeat(2, 1), torch.tensor([1, 1]), torch.tensor([1, 0])).item()
    assert both == pytest.approx((event_in_bin_1 + censored_in_bin_1) / 2)
    # risk: minus the summed survival curve 0.5, 0.125, 0.0625
    assert hazards_to_risk(logits).item() == pytest.approx(-(0.5 + 0.125 + 0.0625))
    edges = event_time_bins(np.array([1.0, 2, 3, 4, 100]), np.array([1, 1, 1, 1, 0]), 4)
    assert edges.tolist() == [1.75, 2.5, 3.25]
    # PORPOISE's weight on events: a censored case counts 1 - alpha
    weighted = discrete_time_nll(logits.repeat(2, 1), torch.tensor([1, 1]), torch.tensor([1, 0]), 0.4).item()
    assert weighted == pytest.approx((event_in_bin_1 + 0.6 * censored_in_bin_1) / 2)


def test_bin_hazards_start_at_the_cohorts_own():
    from musk.mil.losses import bin_hazard_logits

    times = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 9.0])
    events = np.array([1, 0, 1, 1, 0, 1, 1, 0])
    # edges 2 and 3.5: bins [0, 2) [2, 3.5) [3.5, inf); reached by 8, 6, 3 cases; events 1, 2, 2
    hazards = 1 / (1 + np.exp(-bin_hazard_logits(times, events, np.array([2.0, 3.5]))))
    np.testing.assert_allclose(hazards, [1 / 8, 2 / 6, 2 / 3])
    clipped = 1 / (1 + np.exp(-bin_hazard_logits(times[:2], np.array([0, 0]), np.array([2.0, 3.5]))))
    np.testing.assert_allclose(clipped, [0.01, 0.01, 0.01])


def test_kaplan_meier_png_and_logrank_equal_lifelines(tmp_path):
    from lifelines.statistics import logrank_test

    rng = np.random.default_rng(4)
    risk = rng.normal(size=100)
    times = rng.exponential(1 / np.exp(risk))
    events = (rng.random(100) < 0.8).astype(int)
    folds = np.arange(100) % 4
    high = median_split(risk * (1 + folds), folds)  # each fold on its own scale
    for f in range(4):
        assert high[folds == f].sum() == 12 or high[folds == f].sum() == 13
        assert (risk[folds == f][high[folds == f]].min()) > risk[folds == f][~high[folds == f]].max()
    expected = logrank_test(times[high], times[~high], events[high], events[~high]).p_value
    assert logrank_p(times, events, high) == pytest.approx(expected, rel=1e-6)
    p = plot_kaplan_meier(tmp_path / "km.png", times, events, high)
    assert p == pytest.approx(expected, rel=1e-6) and p < 0.01
    with Image.open(tmp_path / "km.png") as image:
        assert image.format == "PNG" and image.size == (600, 480)


def test_multiclass_auroc_over_the_classes_present():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = rng.choice([0, 2], 30)  # class 1 of 3 absent
    probs = rng.dirichlet(np.ones(3), 30) + np.eye(3)[labels] * 0.2
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(labels, probs)
    assert m["auroc"] == pytest.approx(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in (0, 2)]))
