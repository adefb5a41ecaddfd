"""`musk vqa train | eval | ask` in-process, `ask` on the real H&E demo image, and a broken model folder."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

pytest.importorskip("accelerate", reason="training needs the [vqa] extra")

from musk.cli import main
from musk.vqa import answer_question, load_vqa_model
from test_vqa_synthetic import make_vqa_set


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_file):
    root = tmp_path_factory.mktemp("cli")
    data = make_vqa_set(root / "data", {"train": 40, "validation": 10, "test": 10}, seed=7, fmt="csv")
    out = root / "run"
    assert main(train_argv(data, out, tokenizer_file)) == 0
    return data, out


def train_argv(data, out, tokenizer_file, epochs: int = 2) -> list[str]:
    argv = ["vqa", "train", "--data", str(data), "--output_dir", str(out), "--model", "musk_tiny_patch16_64"]
    argv += ["--weights", "none", "--tokenizer", str(tokenizer_file), "--epochs", str(epochs), "--batch_size", "16"]
    return [*argv, "--lr", "1e-3", "--layer_decay", "1.0", "--max_question_length", "32", "--device", "cpu"]


def test_train_again_in_the_same_folder(trained, tmp_path, tokenizer_file, capsys):
    """The same command after a finished run changes nothing; other settings are refused (exit 2, one line)
    unless --overwrite replaces the run."""
    data, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = (run / "history.json").read_text()
    capsys.readouterr()
    assert main(train_argv(data, run, tokenizer_file)) == 0
    assert json.loads(capsys.readouterr().out)["best_epoch"] == json.loads(before)["best_epoch"]
    assert (run / "history.json").read_text() == before
    assert main(train_argv(data, run, tokenizer_file, epochs=1)) == 2
    error = capsys.readouterr().err
    assert "already holds a VQA training run" in error and "--overwrite" in error and "Traceback" not in error
    assert (run / "history.json").read_text() == before
    assert main([*train_argv(data, run, tokenizer_file, epochs=1), "--overwrite"]) == 0
    assert len(json.loads((run / "history.json").read_text())["history"]) == 1


def test_train_then_eval_writes_predictions_and_metrics(trained, tmp_path, capsys):
    data, out = trained
    capsys.readouterr()
    predictions = tmp_path / "preds.csv"
    argv = [
        "vqa",
        "eval",
        "--data",
        str(data),
        "--split",
        "test",
        "--model_dir",
        str(out / "best"),
        "-o",
        str(predictions),
    ]
    assert main([*argv, "--device", "cpu", "--batch_size", "7"]) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(predictions.open()))
    assert len(rows) == 40 == printed["n"]
    assert set(rows[0]) >= {"image", "question", "answer", "prediction", "probability", "correct", "question_type"}
    assert printed["overall"] == pytest.approx(sum(int(r["correct"]) for r in rows) / 40)
    closed = [r for r in rows if r["closed"] == "1"]
    assert printed["closed"] == pytest.approx(sum(int(r["correct"]) for r in closed) / len(closed))
    assert all(0 < float(r["probability"]) <= 1 for r in rows)
    record = json.loads(predictions.with_suffix(".json").read_text())
    assert record["metrics"] == printed and record["config"]["split"] == "test"


def test_prediction_cells_are_safe_for_spreadsheets(trained, tmp_path, capsys):
    """Questions, answers, types and ids are the dataset's text: one that a spreadsheet would run as a formula
    gets a leading apostrophe in the predictions CSV (numbers are left alone)."""
    data, out = trained
    folder = tmp_path / "crafted"
    folder.mkdir()
    (folder / "images").symlink_to(data / "images")
    row = {"image": "images/test_0000.png", "question": '=HYPERLINK("http://example.com", "x")', "answer": "@SUM(1)",
           "question_type": "+colour", "id": "-2+3"}  # fmt: skip
    with open(folder / "test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(row))
        writer.writeheader()
        writer.writerow(row)
    predictions = tmp_path / "preds.csv"
    argv = ["vqa", "eval", "--data", str(folder), "--model_dir", str(out), "-o", str(predictions), "--device", "cpu"]
    assert main(argv) == 0
    (written,) = list(csv.DictReader(predictions.open()))
    for column in ("question", "answer", "id"):
        assert written[column] == "'" + row[column]
    assert written["question_type"] == "'+colour" and float(written["probability"]) > 0


def test_evaluation_casts_the_weights_by_the_inference_rule(trained):
    """``--precision`` of eval and ask is the inference rule: the weights (and the images given them) are cast;
    the answers' probabilities come back as fp32, close to the fp32 model's."""
    import torch

    from musk.vqa import load_split, predict

    data, out = trained
    examples = load_split(data, "test")[:8]
    fp32, bf16 = load_vqa_model(out, precision="fp32"), load_vqa_model(out, precision="bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    exact, cast = predict(fp32, examples), predict(bf16, examples)
    assert cast.probabilities.dtype == torch.float32
    torch.testing.assert_close(cast.probabilities, exact.probabilities, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        load_vqa_model(out, precision="auto")


def test_ask_on_the_real_demo_image(trained, demo_image, capsys):
    _, out = trained
    answers = answer_question(out / "best", demo_image, "what colour is the shape?", top_k=3)
    assert len(answers) == 3 and len({a for a, _ in answers}) == 3
    probabilities = [p for _, p in answers]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    vocab = load_vqa_model(out).vocab
    assert all(a in vocab.answers for a, _ in answers)
    # all answers: the probabilities are a distribution over the vocabulary
    everything = answer_question(out / "best", demo_image, "what colour is the shape?", top_k=100)
    assert len(everything) == len(vocab) and sum(p for _, p in everything) == pytest.approx(1.0, abs=1e-5)

    capsys.readouterr()
    argv = ["vqa", "ask", str(demo_image), "what colour is the shape?", "--model_dir", str(out), "--top_k", "3"]
    assert main([*argv, "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(r["answer"], pytest.approx(r["probability"], abs=1e-5)) for r in printed] == answers


def test_model_folder_without_vocabulary_is_refused(trained, tmp_path, demo_image, capsys):
    _, out = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.spm"):
        (broken / name).write_bytes((out / "best" / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"lacks answers.json \(the answer vocabulary\)"):
        load_vqa_model(broken)
    capsys.readouterr()
    assert main(["vqa", "ask", str(demo_image), "is it red?", "--model_dir", str(broken), "--device", "cpu"]) == 2
    assert "answers.json" in capsys.readouterr().err
    assert main(["vqa", "ask", str(demo_image), "  ", "--model_dir", str(out), "--device", "cpu"]) == 2
