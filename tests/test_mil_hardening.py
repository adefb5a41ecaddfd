"""Hostile or broken inputs to ``musk mil``: ids and h5 files that reach outside their folders, files that declare
more than memory holds, output folders that hold someone else's files, and the one-line errors that name the
file and say what to do (issue 19, points 4, 6, 7, 11, 13, 15)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from mil_cohorts import classification_cohort
from musk.cli import main
from musk.mil import MILModel, MILTrainConfig, load_inputs, save_mil_model, train_mil
from musk.wsi.h5 import write_patch_file

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"hidden": 8, "epochs": 2, "patience": 0, "device": "cpu", "folds": 2}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    manifest, features, _ = classification_cohort(root, n_cases=12, dim=4, patches=(5, 10), two_slides_every=0)
    return root, manifest, features


def _manifest(path, rows: list[tuple[str, str, str]]):
    path.write_text("slide_id,case_id,label\n" + "".join(f"{s},{c},{label}\n" for s, c, label in rows))
    return path


def _features(path, n=6, dim=4):
    coords = np.stack([np.arange(n) * 256, np.zeros(n)], 1)
    write_patch_file(path, coords, {"features": np.ones((n, dim), np.float32)}, {"patch_size_level0": 256})
    return path


def _model(directory, feature_dim=4):
    model = MILModel(2, feature_dim, None, "abmil", "none", 8, 0.0)
    config = {"task": "classification", "classes": ["normal", "tumor"], "out_dim": 2, "feature_dim": feature_dim}
    config |= {"text_dim": None, "model": "abmil", "fusion": "none", "hidden": 8, "dropout": 0.0}
    return save_mil_model(model, directory, config)


# ---- 19.4: nothing is read outside --features_dir and --reports ---------------------------------------------
def test_ids_that_point_outside_their_folders_are_refused(tmp_path):
    features, outside = tmp_path / "features", tmp_path / "outside"
    _features(features / "a.h5")
    _features(outside / "secret.h5")
    _features(outside / "absolute.h5")
    rows = [("a", "A", "x"), ("../outside/secret", "B", "y"), (str(outside / "absolute"), "C", "x")]
    with pytest.raises(ValueError, match="id that points outside its folder") as info:
        load_inputs(_manifest(tmp_path / "m.csv", rows), "classification", features)
    assert "line 3: slide_id '../outside/secret'" in str(info.value)
    assert f"line 4: slide_id '{outside / 'absolute'}'" in str(info.value)

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "A.txt").write_text("benign")
    (tmp_path / "private.txt").write_text("not a report")
    rows = [("a", "A", "x"), ("b", "../private", "y")]
    _features(features / "b.h5")
    with pytest.raises(ValueError, match=r"line 3: case_id '\.\./private'"):
        load_inputs(_manifest(tmp_path / "r.csv", rows), "classification", features, "concat", tmp_path / "reports")


def _external_storage(path, source):
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((4, 2), np.int64))
        f.create_dataset("features", shape=(4, 2), dtype="f4", external=[(str(source), 0, 32)])


def _virtual(path, source):
    _features(source, n=4, dim=2)
    layout = h5py.VirtualLayout(shape=(4, 2), dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "features", shape=(4, 2))
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((4, 2), np.int64))
        f.create_virtual_dataset("features", layout)


def _external_link(path, source):
    _features(source, n=4, dim=2)
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((4, 2), np.int64))
        f["features"] = h5py.ExternalLink(str(source), "features")


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (_external_storage, "is stored in external files"),
        (_virtual, "is a virtual dataset"),
        (_external_link, "is a link"),
    ],
)
def test_h5_files_whose_features_live_in_other_files_are_refused(tmp_path, make, said):
    (tmp_path / "secret.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    features = tmp_path / "features"
    features.mkdir()
    _features(features / "a.h5", dim=2)
    make(features / "b.h5", tmp_path / ("secret.bin" if make is _external_storage else "other.h5"))
    manifest = _manifest(tmp_path / "m.csv", [("a", "A", "x"), ("b", "B", "y")])
    with pytest.raises(ValueError, match=f"b.h5: 'features' {said}.*refused"):
        load_inputs(manifest, "classification", features)


# ---- 19.6: predictions.csv is safe to open in a spreadsheet -------------------------------------------------
def test_prediction_cells_that_would_run_as_formulas_are_neutralised(tmp_path, capsys):
    features = tmp_path / "features"
    _features(features / "s1.h5")
    _features(features / "s2.h5")
    manifest = tmp_path / "m.csv"
    manifest.write_text('slide_id,case_id\ns1,"=HYPERLINK(""http://x"",""y"")"\ns2,@SUM(A1)\n')
    _model(tmp_path / "model")
    argv = ["mil", "predict", "--model_dir", str(tmp_path / "model"), "--manifest", str(manifest)]
    assert main([*argv, "--features_dir", str(features), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(table.case_id) == ['\'=HYPERLINK("http://x","y")', "'@SUM(A1)"]


# ---- 19.7: a training run removes only what a recorded run of ours wrote ------------------------------------
def test_training_refuses_a_folder_holding_files_it_did_not_write(cohort, tmp_path, capsys):
    _, manifest, features = cohort
    out = tmp_path / "mine"
    (out / "fold_5").mkdir(parents=True)
    (out / "fold_5" / "notes.txt").write_text("my notes")
    (out / "fold_0").mkdir()
    (out / "fold_0" / "split.csv").write_text("my split")
    (out / "predictions.csv").write_text("my predictions")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    argv = ["mil", "train", "--manifest", str(manifest), "--features_dir", str(features), "-o", str(out)]
    quick = ["--folds", "2", "--epochs", "1", "--hidden", "8", "--device", "cpu"]
    assert main([*argv, *quick]) == 2
    err = capsys.readouterr().err
    assert "fold_0, fold_5, predictions.csv" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    assert main([*argv, *quick, "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_0", "fold_1"]
    assert "case_id" in (out / "predictions.csv").read_text()


def test_a_run_of_ours_leaves_other_files_alone_and_unrecorded_outputs_are_refused(cohort, tmp_path):
    _, manifest, features = cohort
    run = tmp_path / "run"
    config = MILTrainConfig(manifest=str(manifest), features_dir=str(features), output_dir=str(run), **TINY)
    train_mil(config)
    (run / "external").mkdir()
    (run / "external" / "predictions.csv").write_text("an eval of the run")
    (run / "notes.txt").write_text("mine")
    train_mil(config)  # reused: the other files stay
    assert (run / "external" / "predictions.csv").read_text() == "an eval of the run"
    assert (run / "notes.txt").read_text() == "mine"

    (run / "fold_7").mkdir()  # an output name no run of ours recorded
    with pytest.raises(ValueError, match="holds fold_7, which an earlier run did not record writing"):
        train_mil(config)
    assert (run / "fold_7").is_dir()


# ---- 19.11: declared sizes are checked before anything is read ----------------------------------------------
def test_a_tiny_file_that_declares_millions_of_patches_is_refused_unread(tmp_path):
    manifest, features, _ = classification_cohort(tmp_path, n_cases=12, dim=32, patches=(5, 10), two_slides_every=0)
    (features / "slide003_0.h5").unlink()
    with h5py.File(features / "slide003_0.h5", "w") as f:
        f.create_dataset("coords", shape=(16_000_000, 2), dtype="i8", chunks=(1024, 2))
        f.create_dataset("features", shape=(16_000_000, 32), dtype="f4", chunks=(1024, 32))
    assert (features / "slide003_0.h5").stat().st_size < 10_000
    run = str(tmp_path / "run")
    config = MILTrainConfig(manifest=str(manifest), features_dir=str(features), output_dir=run, **TINY)
    with pytest.raises(ValueError, match=r"slide003_0\.h5 declares 16,000,000 patches of 32 features, beyond"):
        train_mil(config)


def test_a_file_larger_than_the_memory_available_is_refused(cohort, tmp_path, monkeypatch):
    import musk.mil.features

    _, manifest, features = cohort
    monkeypatch.setattr(musk.mil.features, "available_memory", lambda: 100)
    monkeypatch.setattr(musk.mil.features, "_SMALL_READ", 0)  # these files are small: weigh them all
    with pytest.raises(ValueError, match=r"slide000_0\.h5: reading its \d+ x 4 features needs .* more than the"):
        load_inputs(manifest, "classification", features)


# ---- 13 and 15: broken files get one line naming the file and what to do ------------------------------------
def test_a_yaml_syntax_error_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("manifest: m.csv\nfolds: [2\n")
    assert main(["mil", "train", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{tmp_path / 'run.yaml'} is not valid YAML at line" in err


def _group(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
        f.create_group("features")


def _three_d(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
        f.create_dataset("features", data=np.ones((3, 4, 1), np.float32))


def _text(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
        f.create_dataset("features", data=np.array([b"a", b"b", b"c"]).reshape(3, 1))


def _complex(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
        f.create_dataset("features", data=np.ones((3, 4), np.complex64) * 1j)


def _short_coords(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2), np.int64))
        f.create_dataset("features", data=np.ones((3, 4), np.float32))


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (_group, "'features' is a group, not a dataset"),
        (_three_d, "'features' has shape (3, 4, 1); a feature file holds (patches, width)"),
        (_text, "'features' holds |S1 values, not real floating-point numbers"),
        (_complex, "'features' holds complex values"),
        (_short_coords, "2 coords but 3 feature rows"),
    ],
)
def test_a_broken_feature_file_is_one_line_naming_it(cohort, tmp_path, capsys, make, said):
    _, manifest, features = cohort
    broken = tmp_path / "features"
    broken.mkdir()
    for source in features.glob("*.h5"):
        (broken / source.name).symlink_to(source)
    (broken / "slide004_0.h5").unlink()
    make(broken / "slide004_0.h5")
    argv = ["mil", "train", "--manifest", str(manifest), "--features_dir", str(broken), "-o", str(tmp_path / "run")]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"slide004_0.h5: {said}" in err and "extract its features again" in err
    assert not (tmp_path / "run").exists()


def test_report_embeddings_holding_python_objects_are_refused_unread(cohort, tmp_path, capsys):
    _, manifest, features = cohort
    case_ids = pd.read_csv(manifest).case_id
    np.savez(tmp_path / "reports.npz", case_ids=np.array(list(case_ids), dtype=object), embeddings=np.ones((12, 3)))
    argv = ["mil", "train", "--manifest", str(manifest), "--features_dir", str(features), "--fusion", "concat"]
    assert main([*argv, "--report_embeddings", str(tmp_path / "reports.npz"), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{tmp_path / 'reports.npz'} holds Python objects" in err
    assert "save_report_embeddings" in err
