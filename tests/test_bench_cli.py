"""The upstream example commands, with only the program name changed, on miniatures of the demo layouts;
the scores equal an independent computation from the model's own embeddings."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

import bench_layouts as layouts
import musk
from musk.bench.results import read_records
from musk.cli import main
from weights_file import save_weights

UPSTREAM_KEYS = {"dataset", "model", "pretrained", "task", "metrics", "config", "seed", "n_samples", "package_version"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer_file):
    """A tiny MUSK checkpoint with the real tokenizer beside it, a models.txt, and the three demo datasets."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = musk.create_model("musk_tiny_patch16_64")
    save_weights(model, root / "tiny.safetensors")
    shutil.copy(tokenizer_file, root / "tokenizer.spm")
    (root / "models.txt").write_text(f"musk_tiny_patch16_64,{root / 'tiny.safetensors'}\n")
    demo = root / "downstreams_demo"
    layouts.unitopatho_demo(demo)
    layouts.skin(demo, per_class=2)
    layouts.pannuke_demo(demo)
    layouts.pathmmu(demo)
    return root


def _model(workdir):
    return musk.create_model("musk_tiny_patch16_64", pretrained=str(workdir / "tiny.safetensors"))


@torch.inference_mode()
def _image_embeddings(model, paths, with_head=True):
    transform = musk.get_transform(model)
    images = torch.stack([transform(musk.load_image(p)) for p in paths])
    return model.encode_image(images, with_head=with_head, normalize=True).numpy()


@torch.inference_mode()
def _text_embeddings(model, workdir, texts):
    ids, mask = musk.get_tokenizer(workdir / "tokenizer.spm")(texts)
    return model.encode_text(ids, mask, with_head=True, normalize=True).numpy()


def test_upstream_cross_modal_retrieval_command(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    argv = (
        "bench eval --pretrained_model models.txt --dataset pathmmu_retrieval --task zeroshot_retrieval "
        "--batch_size 512 --num_workers 16 --seed 42 --recall_k 1 10 50 --dataset_root downstreams_demo "
        "--output ./results/benchmark_mm_retrieval.json"
    ).split()
    assert main(argv) == 0
    (record,) = read_records(workdir / "results" / "benchmark_mm_retrieval.json")
    assert UPSTREAM_KEYS <= set(record) and record["seed"] == 42 and record["n_samples"] == 9
    assert record["weights_sha256"] == hashlib.sha256((workdir / "tiny.safetensors").read_bytes()).hexdigest()
    # independent: the model's own embeddings, ranks counted in plain Python
    demo = workdir / "downstreams_demo" / "PathMMU"
    paths, captions = [], []
    for subset in ("Book", "WebPathology", "Twitter"):
        for entry in json.loads((demo / subset / "GPTCaption" / "captions.json").read_text()).values():
            paths.append(demo / subset / "images" / entry["img_path"])
            captions.append(entry["caption"])
    model = _model(workdir)
    sim = _text_embeddings(model, workdir, captions) @ _image_embeddings(model, paths).T
    for k in (1, 10, 50):
        t2i = np.mean([sum(sim[t] > sim[t, t]) < k for t in range(9)])
        i2t = np.mean([sum(sim[:, i] > sim[i, i]) < k for i in range(9)])
        assert record["metrics"][f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert record["metrics"][f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
    assert record["metrics"]["image_retrieval_recall@10"] == 1.0  # k larger than the set


def test_upstream_image_retrieval_command_through_python_m(workdir):
    cmd = (
        "-m musk.bench eval --pretrained_model models.txt --dataset unitopatho_retrieval --task image_retrieval "
        "--batch_size 512 --num_workers 16 --seed 41 --dataset_root downstreams_demo "
        "--output ./results/image_retrieval.json"
    ).split()
    proc = subprocess.run([sys.executable, *cmd], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (record,) = read_records(workdir / "results" / "image_retrieval.json")
    base = workdir / "downstreams_demo" / "unitopatho" / "unitopath-public"
    rel = json.loads((base / "images_train.json").read_text()) + json.loads((base / "images_test.json").read_text())
    labels = [rel_path.split("/")[1] for rel_path in rel]
    emb = _image_embeddings(_model(workdir), [base / p for p in rel])
    hits = []
    for i in range(len(rel)):
        nearest = max((j for j in range(len(rel)) if j != i), key=lambda j: (emb[i] @ emb[j], -j))
        hits.append(labels[nearest] == labels[i])
    assert record["metrics"]["acc_top1"] == pytest.approx(np.mean(hits), abs=1e-6)
    assert set(record["metrics"]) == {"acc_top1", "acc_top3", "acc_top5", "mMv_top5"}


def test_upstream_zero_shot_classification_command(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    argv = (
        "bench eval --pretrained_model models.txt --dataset skin pannuke unitopatho --task zeroshot_classification "
        "--batch_size 256 --dataset_root downstreams_demo --output ./results/zeroshot_cls.json --num_workers 0"
    ).split()
    assert main(argv) == 0
    records = {r["dataset"]: r for r in read_records(workdir / "results" / "zeroshot_cls.json")}
    assert set(records) == {"skin", "pannuke", "unitopatho"}
    # independent pannuke: prompts filled by hand, class vectors averaged and renormalised, argmax, scikit-learn
    base = workdir / "downstreams_demo" / "pannuke"
    rows = [line.split(",") for line in (base / "PanNuke_all_binary.csv").read_text().splitlines()[1:]]
    rows = [r for r in rows if r[-1] == "test"]
    labels = [int("malignant" in r[1]) for r in rows]
    model = _model(workdir)
    templates = [
        "a histopathology slide showing {}",
        "histopathology image of {}",
        "pathology tissue showing {}",
        "presence of {} tissue on image",
    ]
    classes = []
    for name in ("benign", "malignant"):
        mean = _text_embeddings(model, workdir, [t.format(name) for t in templates]).mean(0)
        classes.append(mean / np.linalg.norm(mean))
    predictions = (_image_embeddings(model, [base / r[0] for r in rows]) @ np.array(classes).T).argmax(1)
    metrics = records["pannuke"]["metrics"]
    assert metrics["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, predictions))
    assert metrics["acc1"] == pytest.approx(np.mean(predictions == np.array(labels)))
    assert len(records["skin"]["metrics"]["per_class_recall"]) == 16 and "acc5" in records["skin"]["metrics"]


def test_upstream_fewshot_command_seeds_shots_skip_existing_and_build(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    outputs = []
    for k in (1, 2):
        for seed in (123, 456):
            output = f"./results/benchmark_fs_{k}shot_seed{seed}.json"
            argv = (
                f"bench eval --pretrained_model models.txt --dataset skin pannuke unitopatho --task linear_probe "
                f"--batch_size 512 --num_workers 0 --fewshot_k {k} --seed {seed} --dataset_root downstreams_demo "
                f"--output {output}"
            ).split()
            assert main(argv) == 0
            outputs.append(workdir / output)
    records = [r for path in outputs for r in read_records(path)]
    assert len(records) == 12 and {r["fewshot_k"] for r in records} == {1, 2}
    for r in records:
        matrix = np.array(r["metrics"]["confusion_matrix"])
        true = np.repeat(np.arange(len(matrix)), matrix.sum(1))
        pred = np.concatenate([np.repeat(np.arange(len(matrix)), row) for row in matrix])
        assert r["metrics"]["balanced_acc"] == pytest.approx(balanced_accuracy_score(true, pred))
        assert r["metrics"]["n_train"] == r["fewshot_k"] * len(r["metrics"]["per_class_recall"])
    features = sorted((workdir / "features").glob("*-probe-*.npz"))
    assert len(features) == 6  # train and test of three datasets, shared by every shot count and seed
    stamp = outputs[0].stat().st_mtime_ns
    argv = (
        "bench eval --pretrained_model models.txt --dataset skin pannuke unitopatho --task linear_probe "
        f"--fewshot_k 1 --seed 123 --dataset_root downstreams_demo --output {outputs[0]} --skip_existing"
    ).split()
    assert main(argv) == 0 and outputs[0].stat().st_mtime_ns == stamp

    csv = workdir / "summary" / "benchmark.csv"
    assert main(["bench", "build", *map(str, outputs), "--output", str(csv)]) == 0
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 12 and {"balanced_acc", "auroc", "fewshot_k", "seed"} <= set(table.columns)
    pannuke_k2 = [r["metrics"]["balanced_acc"] for r in records if r["dataset"] == "pannuke" and r["fewshot_k"] == 2]
    cell = f"{np.mean(pannuke_k2):.4f} ± {np.std(pannuke_k2, ddof=1):.4f} (n=2)"
    assert f"| pannuke | 2 | {cell} |" in (csv.with_suffix(".md")).read_text()
    from PIL import Image

    plots = sorted(p.name for p in (workdir / "summary" / "benchmark_plots").glob("*.png"))
    assert "linear_probe.png" in plots and "linear_probe_pannuke_fewshot.png" in plots
    assert Image.open(workdir / "summary" / "benchmark_plots" / "linear_probe_skin_fewshot.png").size[0] > 100


def test_unreadable_image_and_bad_models_file_are_reported(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiles = tmp_path / "tiles" / "test"
    layouts.image(tiles / "a" / "good.png")
    (tiles / "b").mkdir()
    (tiles / "b" / "broken.png").write_bytes(b"not a png")
    argv = [
        "bench",
        "eval",
        "--pretrained_model",
        str(workdir / "models.txt"),
        "--dataset",
        "folder",
        "--dataset_root",
        str(tmp_path / "tiles"),
        "--task",
        "image_retrieval",
        "--num_workers",
        "0",
    ]
    assert main(argv) == 2
    assert "b/broken.png" in capsys.readouterr().err
    bad = tmp_path / "models.txt"
    bad.write_text("musk_tiny_patch16_64,x.safetensors\njust-a-name\n")
    assert main([*argv[:3], str(bad), *argv[4:]]) == 2
    assert "models.txt:2" in capsys.readouterr().err
