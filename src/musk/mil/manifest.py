"""MIL manifests: one row per slide (``slide_id``, ``case_id``, then ``label`` or ``time`` + ``event``), pooled by case.

``event = 1`` means the event was observed. A CLAM-style ``censorship`` column (its inverse) is converted on
load. A label that pandas reads as missing (``NA``, ``N/A``, ``NULL``, ``None``, ``nan``, empty ...:
:data:`MISSING_LABELS`) is missing, never a class. An optional ``report`` column holds the case's report text.
Bad rows are collected and reported together, each with its line number, so one pass over the file shows
everything to fix.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from ..messages import listing

__all__ = [
    "MISSING_LABELS",
    "TASKS",
    "Case",
    "Cohort",
    "ManifestError",
    "leaves_folder",
    "load_manifest",
    "read_reports_dir",
]

TASKS = ("classification", "survival")
# pandas' default NA strings (read_csv na_values), as R, Excel and pandas exports write a missing value.
MISSING_LABELS = frozenset(
    ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA")
    + ("NULL", "NaN", "None", "n/a", "nan", "null")
)
_MAX_LISTED = 20


class ManifestError(ValueError):
    """A manifest that cannot be used as it is; the message lists the offending rows."""


@dataclass
class Case:
    """One patient: its slides pooled into one bag, its target and (optionally) its report text."""

    case_id: str
    slide_ids: list[str]
    label: int | None = None
    time: float | None = None
    event: int | None = None
    report: str | None = None


@dataclass
class Cohort:
    """The cases of a manifest, in order of first appearance; ``classes[i]`` is the name of label ``i``."""

    task: str
    cases: list[Case]
    classes: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def subset(self, indices: Sequence[int]) -> Cohort:
        return Cohort(self.task, [self.cases[i] for i in indices], list(self.classes), self.source)


def _problem(path: Path, what: str, rows: list[str], fix: str) -> str:
    listed = listing(rows, _MAX_LISTED, sep="; ")
    return f"{path}: {len(rows)} row(s) {what}: {listed}. {fix}"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def _class_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order, others alphabetically."""
    if all(_number(x) is not None for x in labels):
        return sorted(labels, key=float)
    return sorted(labels)


def leaves_folder(name: str) -> bool:
    """True when the file named by ``name`` inside a folder would lie outside it: an absolute path, a drive, a
    ``..`` step (with ``/`` or ``\\`` separators), or a NUL character."""
    parts = PureWindowsPath(name)
    return bool(parts.drive or parts.root) or ".." in parts.parts or "\0" in name


_Rows = list[tuple[dict[str, str], int]]


def _read_rows(path: Path) -> tuple[list[str], _Rows]:
    """The columns and the rows (stripped values, with their line numbers) of a CSV file."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        rows = [
            ({k.strip(): (v or "").strip() for k, v in row.items() if k is not None}, reader.line_num) for row in reader
        ]
    return columns, rows


def _check_columns(path: Path, task: str, targets: bool, columns: list[str], rows: _Rows) -> None:
    needed = ["slide_id", "case_id"]
    if targets:
        needed.append("label" if task == "classification" else "time")
    if targets and task == "survival" and "event" not in columns and "censorship" not in columns:
        needed.append("event")
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)} for a {task} manifest (it has: {', '.join(columns)}); "
            f"a {task} manifest needs slide_id, case_id and "
            + ("label" if task == "classification" else "time and event (1 = observed; or CLAM's censorship)")
        )
    if not rows:
        raise ManifestError(f"{path} has a header but no rows")


def _id_problems(path: Path, rows: _Rows) -> list[str]:
    """Empty ids, ids that would name files outside their folder, and repeated slide ids."""
    problems = []
    blank = [f"line {n}" for row, n in rows if not row["slide_id"] or not row["case_id"]]
    if blank:
        problems.append(_problem(path, "have an empty slide_id or case_id", blank, "Fill them in or remove the rows."))
    outside = [
        f"line {n}: {column} {row[column]!r}"
        for row, n in rows
        for column in ("slide_id", "case_id")
        if leaves_folder(row[column])
    ]
    if outside:
        fix = "Ids name files inside --features_dir and --reports: use plain names (no absolute paths, no '..')."
        problems.append(_problem(path, "have an id that points outside its folder", outside, fix))
    seen: dict[str, int] = {}
    duplicates = []
    for row, n in rows:
        if row["slide_id"] in seen:
            duplicates.append(f"line {n}: slide {row['slide_id']!r} (also line {seen[row['slide_id']]})")
        seen.setdefault(row["slide_id"], n)
    if duplicates:
        problems.append(_problem(path, "repeat a slide_id", duplicates, "List each slide once."))
    return problems


def _classification_targets(
    path: Path, rows: _Rows, classes: Sequence[str] | None, problems: list[str]
) -> tuple[list[str], dict[int, tuple]]:
    """The class names and each good row's ``(label index,)`` by line number; bad rows go to ``problems``."""
    empty = [
        f"line {n}: slide {row['slide_id']!r} label {row['label']!r}"
        for row, n in rows
        if row["label"] in MISSING_LABELS
    ]
    if empty:
        problems.append(_problem(path, "have no label", empty, "Give every slide a label or remove the row."))
    found = {row["label"] for row, _ in rows if row["label"] not in MISSING_LABELS}
    class_names = [str(c) for c in classes] if classes is not None else _class_order(found)
    unknown = [
        f"line {n}: slide {row['slide_id']!r} label {row['label']!r}"
        for row, n in rows
        if row["label"] in found and row["label"] not in class_names
    ]
    if unknown:
        problems.append(
            _problem(path, f"have a label outside the classes {class_names}", unknown, "Fix the labels or --classes.")
        )
    return class_names, {n: (class_names.index(row["label"]),) for row, n in rows if row["label"] in class_names}


def _survival_targets(path: Path, rows: _Rows, problems: list[str]) -> dict[int, tuple]:
    """Each good row's ``(time, event)`` by line number; bad rows go to ``problems``."""
    found, bad_time, bad_event = {}, [], []
    for row, n in rows:
        time = _number(row["time"])
        if time is None or math.isnan(time) or math.isinf(time) or time < 0:
            bad_time.append(f"line {n}: slide {row['slide_id']!r} time {row['time']!r}")
        if "event" in row:
            event = _number(row["event"])
        else:
            censored = _number(row["censorship"])
            event = None if censored is None else 1 - censored
        if event not in (0.0, 1.0):
            col = "event" if "event" in row else "censorship"
            bad_event.append(f"line {n}: slide {row['slide_id']!r} {col} {row[col]!r}")
        if time is not None and time >= 0 and not math.isinf(time) and event in (0.0, 1.0):
            found[n] = (time, int(event))
    if bad_time:
        problems.append(_problem(path, "have a missing, NaN or negative time", bad_time, "Fix or remove them."))
    if bad_event:
        problems.append(
            _problem(path, "have an event that is not 0 or 1", bad_event, "Use 1 = observed, 0 = censored.")
        )
    return found


def _pool_cases(path: Path, task: str, rows: _Rows, targets: dict[int, tuple], problems: list[str]) -> list[Case]:
    """The rows with good ids and targets pooled by ``case_id``, reports joined; conflicting targets go to
    ``problems``."""
    cases: dict[str, Case] = {}
    first_line: dict[str, int] = {}
    conflicts = []
    for row, n in rows:
        if not row["slide_id"] or not row["case_id"] or n not in targets:
            continue
        case_id, target = row["case_id"], targets[n]
        if case_id not in cases:
            case = Case(case_id, [], report=row.get("report") or None)
            if task == "classification":
                case.label = target[0]
            else:
                case.time, case.event = target
            cases[case_id], first_line[case_id] = case, n
        case = cases[case_id]
        own = (case.label,) if task == "classification" else (case.time, case.event)
        if own != target:
            conflicts.append(f"line {n}: case {case_id!r} differs from line {first_line[case_id]}")
        report = row.get("report")
        if report and case.report and report not in case.report:
            case.report = f"{case.report}\n{report}"
        elif report and not case.report:
            case.report = report
        case.slide_ids.append(row["slide_id"])
    if conflicts:
        problems.append(_problem(path, "give one case two different targets", conflicts, "A case has one target."))
    return list(cases.values())


def _feature_problems(path: Path, rows: _Rows, features_dir: Path) -> list[str]:
    absent = [
        f"line {n}: {features_dir / (row['slide_id'] + '.h5')}"
        for row, n in rows
        if row["slide_id"]
        and not leaves_folder(row["slide_id"])
        and not (features_dir / f"{row['slide_id']}.h5").is_file()
    ]
    fix = "Extract features for them (musk wsi) or remove the rows."
    return [_problem(path, "have no feature file", absent, fix)] if absent else []


def load_manifest(
    path: str | os.PathLike,
    task: str,
    features_dir: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    targets: bool = True,
) -> Cohort:
    """Read and check a manifest CSV; slides of the same ``case_id`` become one case.

    ``features_dir``: when given, every slide must have ``<features_dir>/<slide_id>.h5``.
    ``classes``: the allowed class names in label order (default: the labels found, sorted); another label
    is an error. ``targets`` False reads only the slides and cases (predicting without outcomes).
    Raises :class:`ManifestError` listing every bad row.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    columns, rows = _read_rows(path)
    _check_columns(path, task, targets, columns, rows)
    problems = _id_problems(path, rows)
    if not targets:
        class_names = [str(c) for c in classes or []]
        found = {n: (None,) if task == "classification" else (None, None) for _, n in rows}
    elif task == "classification":
        class_names, found = _classification_targets(path, rows, classes, problems)
    else:
        class_names, found = [], _survival_targets(path, rows, problems)
    cases = _pool_cases(path, task, rows, found, problems)
    if features_dir is not None:
        problems.extend(_feature_problems(path, rows, Path(features_dir)))
    if problems:
        raise ManifestError("\n".join(problems))
    return Cohort(task, cases, class_names, str(path))


def read_reports_dir(cohort: Cohort, reports_dir: str | os.PathLike) -> None:
    """Set each case's report from ``<reports_dir>/<case_id>.txt``; every case needs one."""
    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir():
        raise FileNotFoundError(f"reports folder not found: {reports_dir}")
    outside = [c.case_id for c in cohort.cases if leaves_folder(c.case_id)]
    if outside:
        raise ManifestError(f"case id(s) {listing(outside)} would name report files outside {reports_dir}: refused")
    absent = [c.case_id for c in cohort.cases if not (reports_dir / f"{c.case_id}.txt").is_file()]
    if absent:
        raise ManifestError(
            f"{reports_dir}: no <case_id>.txt report for {len(absent)} case(s): {listing(absent, _MAX_LISTED)}"
        )
    for case in cohort.cases:
        case.report = (reports_dir / f"{case.case_id}.txt").read_text(encoding="utf-8").strip()
