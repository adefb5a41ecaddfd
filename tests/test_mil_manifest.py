"""MIL manifests: pooling slides into cases, and bad rows reported together with their line numbers."""

from __future__ import annotations

import numpy as np
import pytest

from musk.cli import main
from musk.mil import ManifestError, case_folds, load_manifest, read_reports_dir, validation_split
from musk.mil.data import BagDataset, bag_feature_dim
from musk.wsi.h5 import write_patch_file


def _write(path, text):
    path.write_text(text)
    return path


def _features(features_dir, *slides, n=5, dim=8):
    for i, slide in enumerate(slides):
        coords = np.stack([np.arange(n) * 256, np.zeros(n)], 1)
        feats = np.full((n, dim), float(i), np.float32)
        write_patch_file(features_dir / f"{slide}.h5", coords, {"features": feats}, {"patch_size_level0": 256})


def test_slides_of_a_case_are_pooled_and_labels_sorted(tmp_path):
    _features(tmp_path, "s1", "s2", "s3")
    manifest = _write(tmp_path / "m.csv", "slide_id,case_id,label\ns1,A,b\ns2,A,b\ns3,B,a\n")
    cohort = load_manifest(manifest, "classification", tmp_path)
    assert cohort.classes == ["a", "b"]
    assert [(c.case_id, c.slide_ids, c.label) for c in cohort.cases] == [("A", ["s1", "s2"], 1), ("B", ["s3"], 0)]
    dataset = BagDataset(cohort, tmp_path)
    bag = dataset[0]["features"]
    assert bag.shape == (10, 8)
    assert bag[:5].eq(0).all() and bag[5:].eq(1).all()  # s1 then s2, in manifest order
    assert bag_feature_dim(cohort, tmp_path) == 8


def test_numeric_labels_sort_numerically_and_censorship_is_inverted(tmp_path):
    cohort = load_manifest(
        _write(tmp_path / "m.csv", "slide_id,case_id,label\na,1,10\nb,2,9\nc,3,10\n"), "classification"
    )
    assert cohort.classes == ["9", "10"]
    text = "slide_id,case_id,time,censorship\na,1,5.0,1\nb,2,3.5,0\n"
    surv = load_manifest(_write(tmp_path / "s.csv", text), "survival")
    assert [(c.time, c.event) for c in surv.cases] == [(5.0, 0), (3.5, 1)]


def test_bad_rows_are_all_listed_with_line_numbers(tmp_path):
    _features(tmp_path, "s1", "s2", "s3")
    text = "slide_id,case_id,time,event\ns1,A,10,1\ns2,B,nan,0\ns3,C,-2,1\ns4,D,4,1\ns5,E,3,2\n"
    with pytest.raises(ManifestError) as info:
        load_manifest(_write(tmp_path / "m.csv", text), "survival", tmp_path)
    message = str(info.value)
    assert "2 row(s) have a missing, NaN or negative time" in message
    assert "line 3: slide 's2' time 'nan'" in message and "line 4: slide 's3' time '-2'" in message
    assert "line 6: slide 's5' event '2'" in message
    assert "2 row(s) have no feature file" in message
    assert f"line 5: {tmp_path / 's4.h5'}" in message and "s5.h5" in message
    assert "line 2" not in message  # the good row is not blamed


def test_unknown_labels_conflicts_and_missing_columns(tmp_path):
    text = "slide_id,case_id,label\ns1,A,tumor\ns2,A,normal\ns3,B,other\ns4,C,\n"
    with pytest.raises(ManifestError) as info:
        load_manifest(_write(tmp_path / "m.csv", text), "classification", classes=["normal", "tumor"])
    message = str(info.value)
    assert "line 4: slide 's3' label 'other'" in message
    assert "line 3: case 'A' differs from line 2" in message
    assert "1 row(s) have no label: line 5: slide 's4'" in message
    with pytest.raises(ManifestError, match="missing column.*event.*it has: slide_id, case_id, time"):
        load_manifest(_write(tmp_path / "s.csv", "slide_id,case_id,time\na,1,2\n"), "survival")
    with pytest.raises(ManifestError, match="repeat a slide_id: line 3: slide 'a' \\(also line 2\\)"):
        load_manifest(_write(tmp_path / "d.csv", "slide_id,case_id,label\na,1,x\na,2,y\n"), "classification")


def test_reports_folder_needs_every_case(tmp_path):
    cohort = load_manifest(_write(tmp_path / "m.csv", "slide_id,case_id,label\na,A,x\nb,B,y\n"), "classification")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "A.txt").write_text("carcinoma\n")
    with pytest.raises(ManifestError, match="no <case_id>.txt report for 1 case.*: B"):
        read_reports_dir(cohort, tmp_path / "reports")
    (tmp_path / "reports" / "B.txt").write_text("benign")
    read_reports_dir(cohort, tmp_path / "reports")
    assert [c.report for c in cohort.cases] == ["carcinoma", "benign"]


def test_folds_are_patient_level_and_stratified(tmp_path):
    rows = "".join(f"s{i}a,c{i},{i % 3}\ns{i}b,c{i},{i % 3}\n" for i in range(30))
    cohort = load_manifest(_write(tmp_path / "m.csv", "slide_id,case_id,label\n" + rows), "classification")
    folds = case_folds(cohort, 5, seed=1)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(30))  # every case tested exactly once
    for train, test in folds:
        assert not set(train) & set(test)
        assert np.bincount([cohort.cases[i].label for i in test]).tolist() == [2, 2, 2]
        fit, val = validation_split(cohort, train, 0.25, seed=0)
        assert not set(fit) & set(val) and sorted([*fit, *val]) == sorted(train)
        assert len(val) == 6 and len({cohort.cases[i].label for i in val}) == 3
    with pytest.raises(ValueError, match="class '0' has 10 case\\(s\\), fewer than the 11 folds.*use --folds 10"):
        case_folds(cohort, 11)


def test_labels_that_pandas_reads_as_missing_are_missing(tmp_path):
    text = "slide_id,case_id,label\na,1,x\nb,2,NA\nc,3,N/A\nd,4,NULL\ne,5,None\nf,6,\ng,7,y\n"
    with pytest.raises(ManifestError, match="5 row\\(s\\) have no label: line 3: slide 'b' label 'NA'; line 4") as info:
        load_manifest(_write(tmp_path / "m.csv", text), "classification")
    assert "outside the classes" not in str(info.value)
    import pandas as pd

    assert pd.read_csv(tmp_path / "m.csv").label.isna().sum() == 5  # the same rows as pandas


def test_cohorts_that_cannot_be_cross_validated_are_refused_up_front(tmp_path):
    from musk.mil.km import logrank_p

    one_class = load_manifest(
        _write(tmp_path / "a.csv", "slide_id,case_id,label\na,1,x\nb,2,x\nc,3,x\n"), "classification"
    )
    with pytest.raises(ValueError, match="all 3 cases have the class 'x'; a classifier needs cases of at least 2"):
        case_folds(one_class, 2)
    rare = load_manifest(
        _write(tmp_path / "b.csv", "slide_id,case_id,label\na,1,x\nb,2,x\nc,3,rare\n"), "classification"
    )
    with pytest.raises(ValueError, match="class 'rare' has 1 case\\(s\\), fewer than the 2 folds") as info:
        case_folds(rare, 2)
    assert "--folds" not in str(info.value)  # 2 folds is already the least

    text = "slide_id,case_id,time,event\n" + "".join(f"s{i},c{i},{i + 1},0\n" for i in range(6))
    censored = load_manifest(_write(tmp_path / "s.csv", text), "survival")
    with pytest.raises(ValueError, match="all 6 cases are censored"):
        case_folds(censored, 2)
    assert np.isnan(logrank_p([1, 2, 3, 4], [0, 0, 0, 0], [True, False, True, False]))


def test_cli_reports_bad_manifest_rows(tmp_path, capsys):
    _features(tmp_path, "s1")
    manifest = _write(tmp_path / "m.csv", "slide_id,case_id,label\ns1,A,x\ns2,B,y\n")
    status = main(
        ["mil", "train", "--manifest", str(manifest), "--features_dir", str(tmp_path), "-o", str(tmp_path / "o")]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "musk mil: error:" in err and "1 row(s) have no feature file: line 3:" in err and "s2.h5" in err
    assert not (tmp_path / "o" / "results.json").exists()
