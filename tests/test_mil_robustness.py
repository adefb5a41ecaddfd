"""Runs that must not mix, reuse or lose results: stale folds, changed cohorts, bad inputs with clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mil_cohorts import classification_cohort
from musk.cli import main
from musk.mil import MILModel, MILTrainConfig, load_mil_models, save_mil_model, train_mil

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"hidden": 8, "epochs": 2, "patience": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    manifest, features, _ = classification_cohort(root, n_cases=12, dim=4, patches=(5, 10), two_slides_every=0)
    return root, manifest, features


def _config(manifest, features, output_dir, **kwargs) -> MILTrainConfig:
    return MILTrainConfig(
        manifest=str(manifest), features_dir=str(features), output_dir=str(output_dir), **TINY | kwargs
    )


def test_a_run_with_fewer_folds_drops_the_earlier_runs_folds(cohort, tmp_path):
    _, manifest, features = cohort
    run = tmp_path / "run"
    train_mil(_config(manifest, features, run, folds=3))
    train_mil(_config(manifest, features, run, folds=2, classes=["tumor", "normal"]))
    assert sorted(p.name for p in run.glob("fold_*")) == ["fold_0", "fold_1"]
    models = load_mil_models(run)
    assert [m.path.name for m in models] == ["fold_0", "fold_1"]
    assert all(m.config["classes"] == ["tumor", "normal"] and m.config["n_folds"] == 2 for m in models)

    # a fold of another run (here: other classes order) is refused, not averaged in
    other = tmp_path / "other"
    train_mil(_config(manifest, features, other, folds=2))
    shutil.copytree(other / "fold_1", run / "fold_1", dirs_exist_ok=True)
    with pytest.raises(ValueError, match="trained by different runs .*classes"):
        load_mil_models(run)


def test_a_changed_cohort_trains_again_and_the_same_one_is_reused(cohort, tmp_path):
    _, manifest, features = cohort
    run = tmp_path / "run"
    first = train_mil(_config(manifest, features, run, folds=2))
    stamps = [(run / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(2)]

    table = pd.read_csv(manifest)
    table.to_csv(tmp_path / "copy.csv", index=False)  # same content, another path: reused
    assert train_mil(_config(tmp_path / "copy.csv", features, run, folds=2)).results == first.results
    assert [(run / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in range(2)] == stamps

    table["label"] = table.label.map({"tumor": "normal", "normal": "tumor"})  # labels swapped: trained again
    table.to_csv(tmp_path / "copy.csv", index=False)
    train_mil(_config(tmp_path / "copy.csv", features, run, folds=2))
    predictions = pd.read_csv(run / "predictions.csv").set_index("case_id")
    assert (predictions.label == table.set_index("case_id").label).all()
    assert all((run / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns != stamps[k] for k in range(2))

    table.iloc[2:].to_csv(tmp_path / "copy.csv", index=False)  # rows removed: trained again, no stale case
    train_mil(_config(tmp_path / "copy.csv", features, run, folds=2))
    assert sorted(pd.read_csv(run / "predictions.csv").case_id) == sorted(table.case_id[2:])


def _random_model(directory, classes, feature_dim=4, text_dim=None):
    model = MILModel(len(classes), feature_dim, text_dim, "abmil", "concat" if text_dim else "none", 8, 0.0)
    config = {"task": "classification", "classes": classes, "out_dim": len(classes), "feature_dim": feature_dim}
    config |= {"text_dim": text_dim, "model": "abmil", "fusion": "concat" if text_dim else "none"}
    return save_mil_model(model, directory, config | {"hidden": 8, "dropout": 0.0})


def test_eval_never_writes_into_the_training_run(cohort, tmp_path, capsys):
    _, manifest, features = cohort
    run = tmp_path / "run"
    train_mil(_config(manifest, features, run, folds=2))
    before = {name: (run / name).read_bytes() for name in ("predictions.csv", "provenance.json")}
    for target in (run, run / "fold_0"):
        argv = ["mil", "eval", "--model_dir", str(run), "--manifest", str(manifest), "--features_dir", str(features)]
        assert main([*argv, "-o", str(target), "--device", "cpu"]) == 2
        assert "holds trained models or a training run" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not (run / "metrics.json").exists() and not (run / "fold_0" / "predictions.csv").exists()


def test_eval_of_a_three_class_model_on_two_of_its_classes(cohort, tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    _, manifest, features = cohort
    _random_model(tmp_path / "model", ["normal", "other", "tumor"])
    argv = ["mil", "eval", "--model_dir", str(tmp_path / "model"), "--manifest", str(manifest)]
    assert main([*argv, "--features_dir", str(features), "-o", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    per_class = [roc_auc_score(predictions.label == c, predictions[f"prob_{c}"]) for c in ("normal", "tumor")]
    assert metrics["auroc"] == pytest.approx(np.mean(per_class))
    assert len(predictions) == 12 and {"prob_normal", "prob_other", "prob_tumor"} <= set(predictions.columns)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_feature_file_with_nan_or_inf_is_named(cohort, tmp_path, bad):
    from musk.wsi.h5 import read_patch_file, write_patch_file

    _, manifest, features = cohort
    shutil.copytree(features, tmp_path / "features")
    source = read_patch_file(features / "slide005_0.h5")
    values = source.features.copy()
    values[3, 1] = bad
    write_patch_file(tmp_path / "features" / "slide005_0.h5", source.coords, {"features": values}, source.attrs)
    with pytest.raises(ValueError, match=r"slide005_0\.h5: 1 feature value\(s\) are NaN or infinite.*rows \[3\]"):
        train_mil(_config(manifest, tmp_path / "features", tmp_path / "run", folds=2))


def test_inputs_of_the_wrong_width_are_refused_with_both_widths(cohort, tmp_path, capsys):
    from musk.mil import predict_mil, save_report_embeddings
    from musk.wsi.h5 import write_patch_file

    _, manifest, features = cohort
    _random_model(tmp_path / "fused", ["normal", "tumor"], text_dim=8)
    case_ids = pd.read_csv(manifest).case_id
    save_report_embeddings(tmp_path / "reports.npz", case_ids, np.ones((len(case_ids), 5)))
    with pytest.raises(ValueError, match=r"reports\.npz: the report vectors are 5-d but the model was trained on 8-d"):
        predict_mil(tmp_path / "fused", manifest, features, report_embeddings=tmp_path / "reports.npz")

    _random_model(tmp_path / "model", ["normal", "tumor"], feature_dim=4)
    wide = tmp_path / "wide.h5"
    write_patch_file(wide, np.zeros((3, 2)), {"features": np.ones((3, 6), np.float32)}, {"patch_size_level0": 256})
    argv = ["mil", "heatmap", "--model_dir", str(tmp_path / "model"), "--features", str(wide), "-o", str(tmp_path)]
    assert main([*argv, "--device", "cpu"]) == 2
    assert "wide.h5: its features are 6-d but the model in" in capsys.readouterr().err
    assert not (tmp_path / "wide_attention.h5").exists()


def test_a_damaged_fold_is_named_and_trained_again(cohort, tmp_path):
    _, manifest, features = cohort
    run = tmp_path / "run"
    config = _config(manifest, features, run, folds=2)
    train_mil(config)
    weights = run / "fold_1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"fold_1 is damaged: its model\.safetensors .* Train it again"):
        load_mil_models(run)

    stamp = (run / "fold_0" / "model.safetensors").stat().st_mtime_ns
    train_mil(config)  # fold 0 reused, fold 1 trained again
    assert (run / "fold_0" / "model.safetensors").stat().st_mtime_ns == stamp
    assert len(load_mil_models(run)) == 2

    saved = json.loads((run / "fold_0" / "config.json").read_text())
    del saved["out_dim"]
    (run / "fold_0" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"fold_0 is damaged: its config\.json lacks out_dim"):
        load_mil_models(run)


def test_bad_settings_get_clear_errors(cohort, tmp_path, capsys):
    _, manifest, features = cohort
    with pytest.raises(ValueError, match="val_fraction 0.99 holds out 6 of a fold's 6 training cases"):
        train_mil(_config(manifest, features, tmp_path / "run", folds=2, val_fraction=0.99))
    assert not (tmp_path / "run" / "fold_0").exists()

    (tmp_path / "run.yaml").write_text(f"manifest: {manifest}\nfeatures_dir: {features}\nfolds: two\n")
    assert main(["mil", "train", "--config", str(tmp_path / "run.yaml"), "-o", str(tmp_path / "run")]) == 2
    assert "run.yaml: folds must be an integer, got 'two'" in capsys.readouterr().err
    config = _config(manifest, tmp_path / "features", tmp_path / "run", lr=1, classes=[0, 1])  # tolerated: coerced
    assert config.lr == 1.0 and config.classes == ["0", "1"]


def test_heatmaps_of_two_files_with_one_name_are_refused(cohort, tmp_path, capsys):
    _, _, features = cohort
    _random_model(tmp_path / "model", ["normal", "tumor"])
    (tmp_path / "other").mkdir()
    shutil.copy(features / "slide001_0.h5", tmp_path / "other")
    argv = ["mil", "heatmap", "--model_dir", str(tmp_path / "model"), "-o", str(tmp_path / "maps"), "--device", "cpu"]
    assert main([*argv, "--features", str(features / "slide001_0.h5"), str(tmp_path / "other" / "slide001_0.h5")]) == 2
    assert "share the name 'slide001_0'" in capsys.readouterr().err
    assert not (tmp_path / "maps").exists()


def test_saved_models_get_ordinary_file_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        _random_model(tmp_path / "model", ["normal", "tumor"])
    finally:
        os.umask(umask)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "model" / name).stat().st_mode & 0o777 == 0o644, name
