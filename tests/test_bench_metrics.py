"""Benchmark metrics and task cores against scikit-learn and hand computations on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, recall_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from musk.bench.metrics import classification_metrics, recall_at_k
from musk.bench.sampling import fewshot_indices, holdout_split
from musk.bench.tasks.image_retrieval import retrieval_accuracy
from musk.bench.tasks.knn import knn_predict
from musk.bench.tasks.linear_probe import predict_proba, train_probe
from musk.bench.tasks.zeroshot_retrieval import caption_positives, retrieval_metrics


def test_classification_metrics_equal_sklearn_with_tied_scores():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 200)
    scores = rng.integers(0, 3, (200, 7)).astype(float)  # many ties: argmax takes the first best class
    m = classification_metrics(labels, scores, 7)
    pred = np.array([row.tolist().index(row.max()) for row in scores])  # first maximum, written out by hand
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["acc1"] == pytest.approx(np.mean(pred == labels))
    assert m["weighted_f1"] == pytest.approx(f1_score(labels, pred, average="weighted"))
    assert m["per_class_recall"] == pytest.approx(recall_score(labels, pred, average=None).tolist())
    assert m["confusion_matrix"] == confusion_matrix(labels, pred).tolist()
    # top-5 with ties: a class counts when fewer than 5 classes rank before it (stable order, lower index first)
    hand = []
    for row, label in zip(scores, labels, strict=True):
        before = sum(1 for c in range(7) if row[c] > row[label] or (row[c] == row[label] and c < label))
        hand.append(before < 5)
    assert m["acc5"] == pytest.approx(np.mean(hand))


def test_classification_metrics_keep_absent_classes_in_the_matrix():
    m = classification_metrics(np.array([0, 0, 2]), np.eye(3)[[0, 2, 2]], 3)
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 0, 0], [0, 0, 1]]
    assert m["per_class_recall"] == [0.5, 0.0, 1.0]
    assert "acc5" not in m  # 3 classes


def test_recall_at_k_several_captions_per_image_shared_captions_ties_and_large_k():
    # 3 images; captions: "a" and "b" describe image 0, "c" describes images 1 and 2 (shared caption)
    texts, positives = caption_positives(["a", "c", "b", "c"], np.array([0, 1, 0, 2]), 3)
    assert texts == ["a", "c", "b"]
    assert positives.tolist() == [[True, False, False], [False, True, True], [True, False, False]]
    scores = np.array(
        [
            [0.1, 0.9, 0.5],  # "a": image 0 ranks 3rd
            [0.3, 0.2, 0.3],  # "c": images 0 and 2 tie at 0.3; 0 comes first, so image 2 ranks 2nd
            [0.7, 0.7, 0.1],  # "b": tie between 0 and 1, image 0 first
        ]
    )
    t2i = recall_at_k(scores, positives, [1, 2, 3, 10])
    assert t2i == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0, 10: 1.0}
    i2t = recall_at_k(scores.T, positives.T, [1, 2])
    # image 0 ranks b (0.7), c, a: its caption "b" first; image 1 ranks a, b, c: "c" third;
    # image 2 ranks a, c, b: "c" second
    assert i2t == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_retrieval_metrics_use_upstream_key_names():
    emb = np.eye(2)
    m = retrieval_metrics(emb, emb, np.eye(2, dtype=bool), [1])
    assert m == {"image_retrieval_recall@1": 1.0, "text_retrieval_recall@1": 1.0}


def _brute_force_image_retrieval(emb, labels):
    n = len(labels)
    result = {"acc_top1": 0, "acc_top3": 0, "acc_top5": 0, "mMv_top5": 0}
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (-float(emb[i] @ emb[j]), j))
        for k in (1, 3, 5):
            result[f"acc_top{k}"] += any(labels[j] == labels[i] for j in others[:k])
        votes = [labels[j] for j in others[:5]]
        best = max(sorted(set(votes)), key=votes.count)  # most frequent, lowest label on a tie
        result["mMv_top5"] += best == labels[i]
    return {k: v / n for k, v in result.items()}


def test_image_retrieval_equals_brute_force_and_excludes_self():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 4, 30)
    assert retrieval_accuracy(emb, labels, 4) == pytest.approx(_brute_force_image_retrieval(emb, labels))
    # two identical images of different classes: self excluded, each finds the other first
    twins = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert retrieval_accuracy(twins, np.array([0, 1, 1]), 2)["acc_top1"] == pytest.approx(0.0)


def test_image_retrieval_with_fewer_than_five_neighbours():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    m = retrieval_accuracy(emb, np.array([0, 0, 1]), 2)
    assert m["acc_top5"] == pytest.approx(2 / 3)  # image 2 has no same-class neighbour at all
    # votes over the 2 neighbours: image 0 -> [0, 1] tie -> 0 (hit); 1 -> [0, 1] -> 0 (hit); 2 -> [0, 0] -> miss
    assert m["mMv_top5"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("k", [1, 5, 20, 60])
def test_knn_equals_sklearn_cosine_including_k_larger_than_the_training_set(k):
    rng = np.random.default_rng(k)
    train_x, test_x = rng.normal(size=(40, 6)), rng.normal(size=(25, 6))
    train_y = rng.integers(0, 3, 40)
    ours = knn_predict(train_x, train_y, test_x, k, 3)
    reference = KNeighborsClassifier(n_neighbors=min(k, 40), metric="cosine", algorithm="brute")
    assert np.array_equal(ours, reference.fit(train_x, train_y).predict(test_x))


def test_fewshot_indices_draw_k_per_class_by_seed_like_upstream():
    labels = np.array([0, 1, 2] * 10)
    chosen = fewshot_indices(labels, 4, seed=287)
    assert np.bincount(labels[chosen]).tolist() == [4, 4, 4]
    # the upstream draw: first k of each class along torch.randperm(n) of a generator seeded with the seed
    order = torch.randperm(30, generator=torch.Generator().manual_seed(287)).tolist()
    expected = [i for c in range(3) for i in [j for j in order if labels[j] == c][:4]]
    assert sorted(chosen.tolist()) == sorted(expected)
    assert not np.array_equal(np.sort(chosen), np.sort(fewshot_indices(labels, 4, seed=1)))
    assert len(fewshot_indices(labels, -1, seed=0)) == 30
    with pytest.raises(ValueError, match="'tumor' has 10"):
        fewshot_indices(labels, 11, seed=0, classes=["a", "b", "tumor"])


def test_holdout_split_is_stratified_and_disjoint():
    labels = np.array([0] * 10 + [1] * 5)
    fit, val = holdout_split(labels, 0.2, seed=0)
    assert set(fit) | set(val) == set(range(15)) and not set(fit) & set(val)
    assert np.bincount(labels[val]).tolist() == [2, 1]


def test_linear_probe_learns_separable_classes_and_probabilities_give_sklearn_auroc():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 4
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.normal(scale=0.3, size=(60, 3))
    probe = train_probe(x, y, 3, seed=0, lr=0.1, epochs=30, batch_size=16)
    probs = predict_proba(probe, x)
    assert probs.argmax(1).tolist() == y.tolist()
    m = classification_metrics(y, probs, 3)
    assert m["balanced_acc"] == 1.0
    again = predict_proba(train_probe(x, y, 3, seed=0, lr=0.1, epochs=30, batch_size=16), x)
    assert np.array_equal(probs, again)  # one seed, one result
    from musk.bench.metrics import auroc

    assert auroc(y, probs) == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert auroc(y[:20], probs[:20]) != auroc(y[:20], probs[:20])  # NaN: a single class present


def test_validation_selected_weight_decay_rejects_a_decay_that_ruins_the_probe():
    from musk.bench.tasks.linear_probe import select_weight_decay

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    x = np.eye(3)[y] * 4 + rng.normal(scale=0.3, size=(30, 3))
    assert select_weight_decay(x, y, 3, [1000.0, 0.0], seed=0, lr=0.1, epochs=20, batch_size=8) == 0.0


def test_build_headlines_and_spread_from_hand_written_records(tmp_path):
    import json

    import pandas as pd

    from musk.bench.build import build

    def record(task, dataset, metrics, k=None, seed=0, model="m"):
        return {
            "model": model,
            "pretrained": "p",
            "dataset": dataset,
            "task": task,
            "fewshot_k": k,
            "seed": seed,
            "n_samples": 10,
            "metrics": metrics,
        }

    records = [
        record("zeroshot_retrieval", "arch", {"image_retrieval_recall@10": 0.9, "image_retrieval_recall@5": 0.5}),
        record("knn", "crc", {"balanced_acc": 0.6, "per_class_recall": [0.5, 0.7]}, k=4, seed=1),
        record("knn", "crc", {"balanced_acc": 0.8, "per_class_recall": [0.7, 0.9]}, k=4, seed=2),
        record("knn", "crc", {"balanced_acc": 0.9}, k=8, seed=1),
    ]
    results = tmp_path / "r.json"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    written = build([results], tmp_path / "out" / "b.csv")
    table = pd.read_csv(tmp_path / "out" / "b.csv")
    assert len(table) == 4 and "per_class_recall" not in table.columns
    md = (tmp_path / "out" / "b.md").read_text()
    assert "## zeroshot_retrieval (image_retrieval_recall@5)" in md and "| arch | all | 0.5000 |" in md
    assert f"| crc | 4 | 0.7000 ± {np.std([0.6, 0.8], ddof=1):.4f} (n=2) |" in md
    assert sorted(p.name for p in written["plots"]) == ["knn.png", "knn_crc_fewshot.png", "zeroshot_retrieval.png"]


def test_build_keeps_plots_and_cells_safe_whatever_the_records_say(tmp_path):
    import csv
    import json

    from musk.bench.build import build

    hostile = {"model": "=cmd|' /C calc'!A0", "pretrained": "p", "dataset": "../../../../escape", "seed": 0,
               "n_samples": 10, "fewshot_k": None, "task": "../../../../escape_task",
               "metrics": {"image_retrieval_recall@5": 0.5}}  # fmt: skip
    shots = [{**hostile, "task": "knn", "fewshot_k": k, "metrics": {"balanced_acc": 0.5 + k / 100}} for k in (2, 4)]
    results = tmp_path / "in" / "r.json"
    results.parent.mkdir()
    results.write_text("".join(json.dumps(r) + "\n" for r in [hostile, *shots]))
    out = tmp_path / "deep" / "er" / "b.csv"
    written = build([results], out)
    plots = out.parent / "b_plots"
    assert len(written["plots"]) == 3
    assert all(p.parent == plots and p.is_file() for p in written["plots"])
    outside = [p for p in tmp_path.rglob("*.png") if p.parent != plots]
    assert outside == [] and not (tmp_path.parent / "escape_task.png").exists()
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["model"] for row in rows} == {"'=cmd|' /C calc'!A0"}
