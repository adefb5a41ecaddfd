"""musk.settings (one converter and validator for run settings), musk.tables (spreadsheet-safe CSV) and
musk.messages.listing."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Literal

import pytest

from musk.messages import listing
from musk.settings import SettingsError, build, load_yaml, parse_overrides, pick
from musk.tables import spreadsheet_safe, write_csv, write_csv_rows


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    lr: float = 1e-3
    cpu: bool = False
    resume: str | None = None
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    scales: tuple[float, ...] = (1.0,)
    extra: dict = field(default_factory=dict)
    task: Literal["classification", "survival"] = "classification"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")


@dataclass
class Smaller:
    steps: int = 1
    lr: float = 0.1


def test_command_line_strings_are_converted_by_the_annotations():
    run = build(Run, {"steps": "20", "lr": "1e-4", "cpu": "yes", "resume": "none", "sizes": "3, 4",
                      "scales": "0.5,1", "extra": "{depth: 6}", "task": "survival"})  # fmt: skip
    assert run == Run("run", 20, 1e-4, True, None, [3, 4], (0.5, 1.0), {"depth": 6}, "survival")


def test_yaml_values_are_checked_not_coerced(tmp_path):
    assert build(Run, {"lr": 1, "steps": 5.0}).lr == 1.0  # an int for a float, a whole float for an int
    bad = [
        ({"steps": "ten"}, "cfg.yaml: steps must be an integer, got 'ten'"),
        ({"steps": 2.5}, "steps must be an integer, got float 2.5"),
        ({"steps": True}, "steps must be int, got the boolean True"),
        ({"cpu": "maybe"}, "cpu must be true or false"),
        ({"sizes": {"a": 1}}, "sizes must be a list"),
        ({"sizes": [1, "x"]}, r"sizes\[1\] must be an integer"),
        ({"task": "regression"}, "task must be one of 'classification', 'survival'"),
        ({"name": ["a"]}, "name must be text"),
        ({"extra": "[1, 2]"}, "extra must be a YAML mapping"),
        ({"stepz": 3}, r"unknown setting\(s\) stepz; 'stepz' \(did you mean 'steps'\?\)"),
    ]
    for values, message in bad:
        with pytest.raises(SettingsError, match=message):
            build(Run, values, source="cfg.yaml")
    with pytest.raises(ValueError, match="steps must be at least 1"):  # the dataclass's own checks still run
        build(Run, {"steps": 0})


def test_load_yaml_names_the_file_and_line(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("steps: 3\nsizes: [5]\n")
    assert build(Run, load_yaml(good), str(good)).sizes == [5]
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: 3\nsizes: [5\nlr: 1\n")
    with pytest.raises(SettingsError, match=r"broken\.yaml is not valid YAML at line \d+, column \d+"):
        load_yaml(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="must hold a mapping .* not a list"):
        load_yaml(scalar)
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")


def test_overrides_and_pick():
    assert parse_overrides(["lr=1e-3", "name=a=b"]) == {"lr": "1e-3", "name": "a=b"}
    with pytest.raises(SettingsError, match="'lr' is not key=value"):
        parse_overrides(["lr"])
    assert pick(Smaller, Run(steps=7, lr=0.5)) == Smaller(7, 0.5)
    assert pick(Smaller, Run(steps=7), lr="0.25") == Smaller(7, 0.25)


def test_spreadsheet_formulas_are_neutralised_and_numbers_kept(tmp_path):
    assert [spreadsheet_safe(v) for v in ["=1+2", "+cmd", "-x", "@SUM(A1)", "\t=1", "-0.25", "+3", "ok", 5, -1.5]] == [
        "'=1+2", "'+cmd", "'-x", "'@SUM(A1)", "'\t=1", "-0.25", "+3", "ok", 5, -1.5,
    ]  # fmt: skip
    path = tmp_path / "t.csv"
    write_csv(path, ["slide", "=class"], [['=HYPERLINK("http://x")', -0.5], {"slide": "a", "=class": "@b"}])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["slide", "'=class"], ['\'=HYPERLINK("http://x")', "-0.5"], ["a", "'@b"]]
    stream = io.StringIO()
    write_csv_rows(stream, ["a"], [["-cmd"]])
    assert stream.getvalue().splitlines() == ["a", "'-cmd"]


def test_listing_shows_the_first_items_and_counts_the_rest():
    assert listing(["b", "a"]) == "b, a"
    assert listing(["b", "a"], sort=True) == "a, b"
    assert listing(range(14)) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ... and 4 more"
    assert listing(range(4), limit=2) == "0, 1 ... and 2 more"
    assert listing(["x", "y"], limit=1, sep="\n  ") == "x\n  ... and 1 more"
