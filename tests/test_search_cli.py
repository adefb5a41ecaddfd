"""`musk index` and `musk search` on the command line: outputs, the slide-level commands, evaluation, and every bad
input giving one line, exit status 2 and nothing written. The retrieval metrics on hand-made examples."""

import json

import numpy as np
import pytest

import musk
from musk.cli import main
from musk.search import acc_at_k, case_vote, majority_vote, mmv_at_k, open_index, recall_at_k
from musk.search.records import SlideHit
from search_cohorts import TINY, labelled_cohort, write_features


@pytest.fixture(scope="module")
def lm():
    return musk.load(TINY, "none", device="cpu")


@pytest.fixture(scope="module")
def built(tmp_path_factory, lm):
    """(index, features folder, manifest), built through the command line."""
    root = tmp_path_factory.mktemp("cli")
    features, manifest = labelled_cohort(root, lm.weights_sha256, cases=6)
    index = root / "index"
    argv = ["index", "build", "--jobs", str(features), "--index", str(index), "--manifest", str(manifest),
            "--model", TINY, "--weights", "none", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return index, features, manifest


def search(index, tokenizer_file, *args):
    return main(["search", str(index), *args, "--device", "cpu", "--tokenizer", str(tokenizer_file)])


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"musk {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_outputs_in_csv_and_json_lines(built, tokenizer_file, tmp_path, capsys):
    index = built[0]
    assert search(index, tokenizer_file, "--text", "tumor", "--k", "6", "--output", str(tmp_path / "h.csv")) == 0
    assert search(index, tokenizer_file, "--text", "tumor", "--k", "6", "--output", str(tmp_path / "h.jsonl")) == 0
    csv_rows = (tmp_path / "h.csv").read_text().splitlines()
    records = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert csv_rows[0] == "rank,slide,x,y,patch_size,score,case,label"
    assert [list(r) for r in records] == [csv_rows[0].split(",")] * 6
    assert [f"{r['rank']},{r['slide']},{r['x']},{r['y']}" for r in records] == [
        ",".join(row.split(",")[:4]) for row in csv_rows[1:]
    ]
    assert json.loads((tmp_path / "h.json").read_text())["config"]["text"] == ["tumor"]


def test_slide_commands_print_rankings_votes_and_zero_shot_tables(built, tokenizer_file, capsys):
    index = built[0]
    capsys.readouterr()
    assert search(index, tokenizer_file, "--slide", "case01_A", "--k", "3") == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert rows[0] == "rank,slide,score,case,label" and len(rows) == 4
    assert all(",case01," not in row for row in rows[1:])
    labels = [row.split(",")[4] for row in rows[1:]]
    assert f"majority vote of the top 3: {majority_vote(labels)}" in err
    assert search(index, tokenizer_file, "--text", "tumor", "normal", "--slides", "--top_k", "4") == 0
    out, _ = capsys.readouterr()
    table = out.splitlines()
    assert table[0] == "rank,slide,score,case,label,score_tumor,score_normal,prediction"
    assert len(table) == 1 + 8  # every slide
    for row in table[1:]:
        cells = row.split(",")
        best = "tumor" if float(cells[5]) >= float(cells[6]) else "normal"
        assert cells[7] == best and float(cells[2]) == max(float(cells[5]), float(cells[6]))


def test_index_add_info_and_eval_commands(built, lm, tokenizer_file, tmp_path, capsys):
    index = built[0]
    write_features(tmp_path / "new" / "late.h5", np.ones((4, 64), np.float32), lm.weights_sha256)
    capsys.readouterr()
    assert main(["index", "add", "--index", str(index), "--jobs", str(tmp_path / "new"), "--device", "cpu"]) == 0
    assert main(["index", "info", str(index)]) == 0
    info = json.loads(capsys.readouterr().out.split("\n}\n")[-2] + "\n}")
    assert info["slides"] == 9 and info["model"] == TINY
    report = tmp_path / "eval.json"
    assert main(["search", "eval", "--index", str(index), "--manifest", str(built[2]), "--output", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert set(saved["slides"]) == {"queries", "acc@1", "acc@3", "acc@5", "mmv@5"}
    assert saved["patches"]["recall@10"] == 1.0 and saved["slides"]["queries"] == 8


@pytest.mark.parametrize(
    "args, words",
    [
        (["--text", "   "], "empty"),
        (["--image", "{bad_image}"], "bad.png"),
        (["--slide", "no_such_slide"], "no_such_slide"),
        (["--text", "tumor", "--seed", "1", "--weights", "none"], "weights"),
        (["--text", "tumor", "--filter", "stain=HE"], "--filter"),
        (["--text", "tumor", "--filter", "label=tumour"], "tumour"),
        (["--text", "a", "b"], "--slides"),
    ],
)
def test_bad_queries_give_one_line_status_2_and_write_nothing(built, tokenizer_file, tmp_path, capsys, args, words):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    args = [a.replace("{bad_image}", str(tmp_path / "bad.png")) for a in args]
    output, sheet = tmp_path / "hits.csv", tmp_path / "hits.png"
    capsys.readouterr()
    drawing = [] if "--slide" in args else ["--sheet", str(sheet)]
    assert search(built[0], tokenizer_file, *args, "--output", str(output), *drawing) == 2
    assert words in one_error_line(capsys.readouterr().err, "search")
    assert not output.exists() and not sheet.exists() and not output.with_suffix(".json").exists()


def test_an_index_of_other_weights_names_both_fingerprints(built, lm, tokenizer_file, capsys):
    other = musk.load(TINY, "none", device="cpu", seed=1)
    assert search(built[0], tokenizer_file, "--text", "tumor", "--weights", "none", "--seed", "1") == 2
    line = one_error_line(capsys.readouterr().err, "search")
    assert lm.weights_sha256 in line and other.weights_sha256 in line


def test_bad_build_inputs_give_one_line_status_2_and_write_nothing(built, lm, tmp_path, capsys):
    features, manifest = built[1], built[2]
    common = ["--model", TINY, "--weights", "none", "--device", "cpu"]
    write_features(tmp_path / "bare" / "bare.h5", np.ones((3, 64), np.float32), None, kind=None)
    assert main(["index", "build", "--jobs", str(tmp_path / "bare"), "--index", str(tmp_path / "a"), *common]) == 2
    assert "feature_kind, weights_sha256" in one_error_line(capsys.readouterr().err, "index")
    extra = tmp_path / "extra.csv"
    extra.write_text(manifest.read_text() + "ghost_slide,case99,tumor\n")
    argv = ["index", "build", "--jobs", str(features), "--index", str(tmp_path / "b"), "--manifest", str(extra)]
    assert main([*argv, *common]) == 2
    assert "ghost_slide" in one_error_line(capsys.readouterr().err, "index")
    before = (built[0] / "index.json").read_bytes()
    argv = ["index", "add", "--index", str(built[0]), "--jobs", str(features), "--manifest", str(extra)]
    assert main([*argv, "--device", "cpu"]) == 2
    assert "ghost_slide" in one_error_line(capsys.readouterr().err, "index")
    assert main(["index", "build", "--jobs", str(features), "--index", str(built[0]), *common]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err, "index")
    assert (built[0] / "index.json").read_bytes() == before
    assert not any(p.name.startswith(".") and p.name.endswith(".building") for p in tmp_path.iterdir())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with open_index(built[0]) as index:
        assert len(index.slides()) >= 8


def test_metrics_on_hand_made_examples():
    assert majority_vote(["a", "b", "b", "a", "c"]) == "a"  # a tie goes to the label met first (the nearest)
    assert majority_vote(["c", "b", "b"]) == "b"
    labels = ["a", "b", "c"]
    found = [["b", "a", "a"], ["b", "c", "c"], ["a", "a", "b"]]
    assert acc_at_k(labels, found, 1) == pytest.approx(1 / 3)
    assert acc_at_k(labels, found, 2) == pytest.approx(2 / 3)
    assert acc_at_k(labels, found, 3) == pytest.approx(2 / 3)
    assert mmv_at_k(labels, found, 3) == pytest.approx(1 / 3)  # a: a wins 2-1; b: c wins; c: a wins
    assert mmv_at_k(labels, found, 2) == pytest.approx(1 / 3)  # ties: b (first) for a, b for b, a for c
    assert recall_at_k([[1, 2, 3], [4, 5, 6]], [[3, 2, 9], [7, 8, 9]], 3) == pytest.approx(1 / 3)
    hits = [SlideHit(i + 1, f"s{i}", 1 - i / 10, None, lab) for i, lab in enumerate(["x", None, "y", "y", "x"])]
    assert case_vote(hits, 3) == "x" and case_vote(hits, 4) == "y" and case_vote(hits[1:2]) is None
