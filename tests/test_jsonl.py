"""musk.jsonl: JSON Lines read by the VQA tables and the benchmark results."""

import pytest

from musk.bench.results import read_records
from musk.jsonl import parse_json_lines


def test_blank_lines_are_skipped_and_a_bad_line_is_named(tmp_path):
    assert parse_json_lines(['{"a": 1}\n', "\n", "  \n", "[2]\n"], "x.jsonl") == [{"a": 1}, [2]]
    results = tmp_path / "results.jsonl"
    results.write_text('{"task": "knn"}\n\n{"task": \n')
    with pytest.raises(ValueError, match=r"results\.jsonl, line 3: not JSON"):
        read_records(results)
