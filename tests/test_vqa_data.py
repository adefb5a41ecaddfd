"""Answer vocabulary and normalisation, the PathVQA parquet layout and JSONL/CSV tables, bad input, metrics."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

import musk
from musk.vqa import AnswerVocab, compute_metrics, load_examples, load_split, normalize_answer, question_type
from musk.vqa.data import VQACollator, VQADataset, VQAExample, find_split
from test_vqa_synthetic import make_vqa_set


def test_normalisation_and_question_types():
    assert normalize_answer("  Yes. ") == "yes"
    assert normalize_answer("Squamous   Cell\tCarcinoma!") == "squamous cell carcinoma"
    assert normalize_answer("t-cell") == "t-cell"  # inner punctuation is part of the answer
    assert normalize_answer("ＢＬＵＥ") == "blue"  # full-width letters (NFKC)
    assert question_type("Is this necrosis?", "No") == "yes/no"
    assert question_type("What does this image show?", "fibrosis") == "what"
    assert question_type("Where is the lesion?", "liver") == "where"
    assert question_type("The lesion shows?", "fibrosis") == "other"


def test_vocabulary_counts_min_count_and_round_trip(tmp_path):
    vocab = AnswerVocab.build(["Yes", "no", "yes.", "YES", "Liver", "liver", "kidney", " "], min_count=2)
    assert vocab.answers == ["yes", "liver"]  # by count, "kidney" and "no" below the minimum, blank dropped
    assert vocab.counts == [3, 2]
    assert vocab.index("Liver!") == 1 and vocab.index("kidney") == -1 and "YES" in vocab
    path = tmp_path / "answers.json"
    vocab.save(path)
    loaded = AnswerVocab.load(path)
    assert loaded.answers == vocab.answers and loaded.counts == vocab.counts and loaded.min_count == 2
    assert [loaded.index(a) for a in vocab.answers] == [0, 1]
    ties = AnswerVocab.build(["b", "a", "c", "a", "b"])
    assert ties.answers == ["a", "b", "c"]  # equal counts: alphabetical, so the order never depends on input order
    with pytest.raises(ValueError, match="empty"):
        AnswerVocab.build(["x"], min_count=2)
    path.write_text("{}")
    with pytest.raises(ValueError, match="not an answer vocabulary"):
        AnswerVocab.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        AnswerVocab.load(tmp_path / "absent.json")


def _png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pathvqa_hub_parquet_layout(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    data = tmp_path / "path-vqa" / "data"
    data.mkdir(parents=True)
    rows = [
        {"image": {"bytes": _png_bytes("red"), "path": None}, "question": "Is this red?", "answer": "yes"},
        {"image": {"bytes": _png_bytes("blue"), "path": None}, "question": "What colour?", "answer": "blue"},
    ]
    pd.DataFrame(rows).to_parquet(data / "train-00000-of-00002-abc.parquet")
    pd.DataFrame(rows[:1]).to_parquet(data / "train-00001-of-00002-def.parquet")
    pd.DataFrame(rows[1:]).to_parquet(data / "validation-00000-of-00001.parquet")
    assert [p.name for p in find_split(tmp_path / "path-vqa", "train")] == [
        "train-00000-of-00002-abc.parquet",
        "train-00001-of-00002-def.parquet",
    ]
    train = load_split(tmp_path / "path-vqa", "train")
    assert [e.answer for e in train] == ["yes", "blue", "yes"]
    assert [e.question_type for e in train] == ["yes/no", "what", "yes/no"]
    val = load_split(tmp_path / "path-vqa", "val")  # aliases of validation
    assert len(val) == 1 and isinstance(val[0].image, bytes)

    model = musk.create_model("musk_tiny_patch16_64")
    vocab = AnswerVocab.build(e.answer for e in train)
    dataset = VQADataset(train, musk.get_transform(model), vocab)
    image, question, label, index = dataset[1]
    assert image.shape == (3, 64, 64) and question == "What colour?" and label == vocab.index("blue") and index == 1
    # blue, normalised with mean = std = 0.5: red channel -1, blue channel +1
    assert image[0].mean().item() == pytest.approx(-1.0, abs=0.02) and image[2].mean().item() == pytest.approx(1.0)


def test_jsonl_and_csv_tables_and_collation(tmp_path, tokenizer_file):
    for fmt in ("jsonl", "csv"):
        root = make_vqa_set(tmp_path / fmt, {"train": 3}, seed=2, fmt=fmt)
        examples = load_split(root, "train")
        assert len(examples) == 12
        assert examples[0].image == str(root / "images" / "train_0000.png")  # relative to the table's folder
        assert examples[0].question_type == "colour"  # the table's own types win over the derived ones
    vocab = AnswerVocab.build(e.answer for e in examples)
    examples.append(VQAExample(examples[0].image, "what is it?", "an answer never seen", "other", "x"))
    dataset = VQADataset(examples, musk.get_transform(musk.create_model("musk_tiny_patch16_64")), vocab)
    batch = VQACollator(musk.get_tokenizer(tokenizer_file), max_length=8)([dataset[0], dataset[12]])
    assert batch["images"].shape == (2, 3, 64, 64)
    assert batch["labels"].tolist() == [vocab.index(examples[0].answer), -1]
    assert batch["ids"].shape == batch["padding_mask"].shape and batch["ids"].shape[1] <= 8
    assert batch["ids"][:, 0].tolist() == [0, 0] and batch["padding_mask"].dtype == torch.long


def test_bad_input_is_reported_clearly(tmp_path):
    table = tmp_path / "train.jsonl"
    table.write_text(json.dumps({"image": "a.png", "query": "q?", "answer": "yes"}) + "\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['question'\].*query"):
        load_examples(table)
    table.write_text(
        "".join(json.dumps({"image": f"img{i}.png", "question": "q?", "answer": "yes"}) + "\n" for i in range(7))
    )
    with pytest.raises(FileNotFoundError, match=r"7 image file\(s\) not found: .*img0.png.*and 2 more"):
        load_examples(table)
    table.write_text("")
    with pytest.raises(ValueError, match="holds no examples"):
        load_split(tmp_path, "train")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    table.write_text(json.dumps({"image": "a.png", "question": "q?", "answer": ""}) + "\n")
    with pytest.raises(ValueError, match="line 1: empty or missing answer"):
        load_examples(table)
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        load_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_split(tmp_path / "absent", "train")
    (tmp_path / "train.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        load_examples(tmp_path / "train.txt")


def test_file_line_numbers_byte_order_mark_numbers_and_non_objects(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    table = tmp_path / "train.jsonl"
    good = json.dumps({"image": "a.png", "question": "how many nuclei?", "answer": 3})
    for bad, message in (
        ("5", r"train\.jsonl, line 4: expected a JSON object with image, question, answer; got 5"),
        ("[1, 2]", r"line 4: expected a JSON object .*got \[1, 2\]"),
        (json.dumps({"image": "a.png", "question": "q?", "answer": " "}), r"line 4: empty or missing answer"),
        (json.dumps({"image": "a.png", "question": "q?", "answer": True}), r"line 4: the answer is the boolean True"),
    ):
        table.write_text(f"{good}\n\n\n{bad}\n")  # blank lines count: the bad row is on line 4
        with pytest.raises(ValueError, match=message):
            load_examples(table)
    table.write_text(good + "\n" + json.dumps({"image": "a.png", "question": "size?", "answer": 2.5}) + "\n")
    assert [e.answer for e in load_examples(table)] == ["3", "2.5"]

    excel = tmp_path / "test.csv"  # Excel writes UTF-8 with a byte-order mark
    excel.write_text("image,question,answer\na.png,is it red?,yes\n\na.png,q?,\n", encoding="utf-8-sig")
    with pytest.raises(ValueError, match=r"test\.csv, line 4: empty or missing answer"):
        load_examples(excel)
    excel.write_text("image,question,answer\na.png,is it red?,yes\n", encoding="utf-8-sig")
    (example,) = load_examples(excel)
    assert example.image == str(tmp_path / "a.png") and example.answer == "yes"


def test_metrics_closed_open_per_type_and_unknown_answers():
    def ex(q, a, t):
        return VQAExample("x.png", q, a, t, q)

    examples = [
        ex("is it red?", "yes", "colour"),
        ex("is it round?", "No", "shape"),
        ex("what colour?", "blue", "colour"),
        ex("what shape?", "hexagon", "shape"),  # an answer the model cannot give
    ]
    metrics = compute_metrics(examples, ["yes", "yes", "Blue.", "square"], known={"yes", "no", "blue", "square"})
    assert metrics["overall"] == 0.5
    assert metrics["closed"] == 0.5 and metrics["n_closed"] == 2
    assert metrics["open"] == 0.5 and metrics["n_open"] == 2
    assert metrics["per_type"] == {"colour": {"accuracy": 1.0, "n": 2}, "shape": {"accuracy": 0.0, "n": 2}}
    assert metrics["unknown_answers"] == 1
    assert compute_metrics(examples[2:], ["blue", "x"])["closed"] is None  # no closed question: no closed accuracy
    with pytest.raises(ValueError, match="3 predictions for 4 examples"):
        compute_metrics(examples, ["yes"] * 3)
