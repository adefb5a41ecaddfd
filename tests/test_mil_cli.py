"""``musk mil train | eval | predict | heatmap`` in-process on generated cohorts, with and without reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from mil_cohorts import classification_cohort, survival_cohort
from musk.cli import main
from musk.wsi.h5 import read_patch_file

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--folds", "3", "--hidden", "64", "--epochs", "25", "--device", "cpu"]


def _results(output_dir) -> dict:
    return json.loads((output_dir / "results.json").read_text())


def _check_results(results: dict, names: set[str], folds: int) -> None:
    assert set(results) == names | {"learned"}
    assert set(results["learned"]) == {"learned", "folds", "message"} and len(results["learned"]["folds"]) == folds
    for name in names:
        summary = results[name]
        assert set(summary) == {"folds", "mean", "std"} and len(summary["folds"]) == folds
        assert summary["mean"] == pytest.approx(np.mean(summary["folds"]))
        assert summary["std"] == pytest.approx(np.std(summary["folds"], ddof=1))


def test_classification_with_reports_from_a_yaml_config(tmp_path, tokenizer_file, capsys):
    from sklearn.metrics import roc_auc_score

    manifest, features, labels = classification_cohort(tmp_path, n_cases=48, patches=(30, 50), reports=True)
    run = tmp_path / "run"
    config = {"manifest": str(manifest), "features_dir": str(features), "output_dir": str(run), "fusion": "none"}
    config |= {"text_model": "musk_tiny_patch16_64", "text_weights": "none", "tokenizer": str(tokenizer_file)}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["mil", "train", "--config", str(tmp_path / "run.yaml"), "--fusion", "concat", *QUICK]) == 0
    printed = json.loads(capsys.readouterr().out)
    results = _results(run)
    _check_results(results, {"auroc", "balanced_acc", "f1"}, 3)
    assert printed["auroc"]["mean"] == results["auroc"]["mean"] > 0.9
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["config"]["fusion"] == "concat" and provenance["config"]["folds"] == 3
    with np.load(run / "report_embeddings.npz") as saved:
        assert saved["embeddings"].shape == (48, 64) and list(saved["case_ids"][:2]) == ["case000", "case001"]
    fold_config = json.loads((run / "fold_0" / "config.json").read_text())
    assert (
        fold_config["fusion"] == "concat"
        and fold_config["text_dim"] == 64
        and fold_config["classes"] == ["normal", "tumor"]
    )

    # eval: the fold models, averaged, on the same cohort; its metrics are those of its predictions
    assert main(["mil", "eval", "--model_dir", str(run), "--manifest", str(manifest), "--features_dir", str(features),
                 "--tokenizer", str(tokenizer_file), "-o", str(tmp_path / "eval"), "--device", "cpu"]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert metrics["auroc"] == pytest.approx(roc_auc_score(predictions.label == "tumor", predictions.prob_tumor))
    assert metrics["auroc"] > 0.95  # it has seen most of these cases

    # predict: a manifest without labels
    pd.read_csv(manifest).drop(columns="label").to_csv(tmp_path / "new.csv", index=False)
    assert main(["mil", "predict", "--model_dir", str(run), "--manifest", str(tmp_path / "new.csv"),
                 "--features_dir", str(features), "--tokenizer", str(tokenizer_file), "-o", str(tmp_path / "pred"),
                 "--device", "cpu"]) == 0  # fmt: skip
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert "label" not in predicted and list(predicted.case_id) == list(predictions.case_id)
    np.testing.assert_allclose(predicted.prob_tumor, predictions.prob_tumor, rtol=1e-5)

    # heatmap: attention h5 in the patch-file format, beside the features' own attributes
    source = features / "slide001_0.h5"
    assert main(["mil", "heatmap", "--model_dir", str(run / "fold_1"), "--features", str(source),
                 "-o", str(tmp_path / "maps"), "--device", "cpu"]) == 0  # fmt: skip
    attention = read_patch_file(tmp_path / "maps" / "slide001_0_attention.h5")
    original = read_patch_file(source)
    np.testing.assert_array_equal(attention.coords, original.coords)
    assert attention.arrays["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    assert attention.attrs["patch_size_level0"] == 256 and attention.attrs["name"] == "slide001_0"
    if labels[1] == 1:
        planted = original.arrays["planted"].astype(bool)
        assert attention.arrays["attention"][planted].mean() > attention.arrays["attention"][~planted].mean()


@pytest.mark.parametrize("reports", [False, True])
def test_survival_cli(tmp_path, capsys, reports):
    manifest, features, _ = survival_cohort(tmp_path, n_cases=90, reports=reports)
    run = tmp_path / "run"
    extra = []
    if reports:  # the grade in the report carries the risk too; report vectors precomputed from it
        from musk.mil import save_report_embeddings

        table = pd.read_csv(manifest)
        vectors = np.stack([[1.0, 0.0] if "high" in r else [0.0, 1.0] for r in table.report])
        save_report_embeddings(tmp_path / "reports.npz", table.case_id, vectors)
        extra = ["--fusion", "gated", "--report_embeddings", str(tmp_path / "reports.npz")]
    argv = ["mil", "train", "--task", "survival", "--survival_loss", "cox", "--manifest", str(manifest)]
    assert main([*argv, "--features_dir", str(features), "-o", str(run), *QUICK, *extra]) == 0
    printed = json.loads(capsys.readouterr().out)
    results = _results(run)
    _check_results(results, {"c_index", "c_index_uno", "td_auc"}, 3)
    assert results["c_index"]["mean"] > 0.62
    assert printed["logrank_p"] < 0.05
    predictions = pd.read_csv(run / "predictions.csv")
    assert set(predictions.risk_group) == {"high", "low"} and (run / "km.png").is_file()
    assert main(["mil", "eval", "--model_dir", str(run), "--manifest", str(manifest), "--features_dir", str(features),
                 "-o", str(tmp_path / "eval"), "--device", "cpu",
                 *(extra[2:] if reports else [])]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"c_index", "c_index_uno", "td_auc"} and metrics["c_index"] > 0.7


def test_yaml_with_an_unknown_option_is_refused(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("manifest: m.csv\nlearning_rate: 0.1\n")
    assert main(["mil", "train", "--config", str(tmp_path / "run.yaml")]) == 2
    assert "run.yaml: unknown setting(s) learning_rate" in capsys.readouterr().err
