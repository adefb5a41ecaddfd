"""Loaders for anything else: an image folder per class (``folder``) and a CSV table (``csv``).

``folder``: ``<root>/<train|test>/<class>/*.png`` (or ``<root>/<class>/*`` for test-only use, e.g. zero-shot).
Classes are the class folder names of all splits together, in sorted order, so a label means the same class in
every split; a split may lack a class (it has no images of it).

``csv``: ``<root>`` is a CSV file, or a folder with ``<split>.csv`` or ``data.csv``. Columns: the image path
(``path``, ``image``, ``image_path``, ``filepath`` or ``file``; relative to the CSV's folder) and ``label``
(class name or integer) or ``caption``; an optional ``split`` column selects the rows of a split. Several rows
with the same image and different captions give one image with several captions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...messages import listing
from ..data import BenchData, DatasetLayoutError, FileImages
from .layout import class_folders, require

PATH_COLUMNS = ("path", "image", "image_path", "filepath", "file")


SPLIT_FOLDERS = ("train", "val", "test")


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_folder(name: str, root: Path, split: str) -> BenchData:
    splits = [root / s for s in SPLIT_FOLDERS if (root / s).is_dir()]
    if (root / split).is_dir():
        base = root / split
    elif split == "test" and not splits:
        base = require(root, name, "folder")
    else:
        raise DatasetLayoutError(f"{name}: expected the folder {str(root / split)!r} with one subfolder per class")
    present = _subfolders(base)
    if not present:
        raise DatasetLayoutError(f"{name}: {base} has no class subfolders (expected {base}/<class>/<image files>)")
    classes = sorted(set(present).union(*(_subfolders(folder) for folder in splits)))
    paths, positions = class_folders(base, name, present)
    labels = [classes.index(present[i]) for i in positions]
    return BenchData(name, split, FileImages(paths, root), labels=labels, classes=classes)


def _csv_file(name: str, root: Path, split: str) -> Path:
    if root.is_file():
        return root
    for candidate in (root / f"{split}.csv", root / "data.csv"):
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError(f"{name}: expected a CSV file, {root / f'{split}.csv'} or {root / 'data.csv'}")


def _check_filled(name: str, path: Path, table, columns: list[str]) -> None:
    """Every row has a value in each of ``columns``; else an error naming the CSV lines (header = line 1)."""
    for column in columns:
        empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if empty.any():
            lines = [int(i) + 2 for i in table.index[empty.to_numpy()]]
            shown = listing(lines)
            raise DatasetLayoutError(
                f"{name}: {path} has no {column!r} on line(s) {shown}; fill them in or remove those rows"
            )


def load_csv(name: str, root: Path, split: str) -> BenchData:
    import pandas as pd

    path = _csv_file(name, require(root, name, "CSV file or folder"), split)
    try:  # only an empty field is missing: a class may be called "NA" or "None"
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], skip_blank_lines=False).dropna(how="all")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"{name}: cannot parse {path}: {exc}") from exc
    path_column = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if path_column is None or not ({"label", "caption"} & set(table.columns)):
        raise DatasetLayoutError(
            f"{name}: {path} needs an image column ({' or '.join(PATH_COLUMNS)}) and a 'label' or 'caption' "
            f"column; it has {list(table.columns)}"
        )
    _check_filled(name, path, table, [path_column, "caption" if "caption" in table.columns else "label"])
    all_rows = table
    if "split" in table.columns:
        table = table[table["split"].astype(str) == split]
        if table.empty:
            raise DatasetLayoutError(f"{name}: {path} has no rows with split == {split!r}")
    files = [path.parent / str(p) for p in table[path_column]]
    if "caption" in table.columns:
        unique = list(dict.fromkeys(files))
        position = {f: i for i, f in enumerate(unique)}
        captions = [str(c) for c in table["caption"]]
        links = [position[f] for f in files]
        return BenchData(name, split, FileImages(unique, path.parent), captions=captions, caption_images=links)
    values = all_rows["label"]
    if pd.api.types.is_integer_dtype(values):
        classes = [str(i) for i in range(int(values.max()) + 1)]
        labels = table["label"].to_numpy()
    else:
        classes = sorted(values.astype(str).unique())
        labels = table["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    return BenchData(name, split, FileImages(files, path.parent), labels=np.asarray(labels), classes=classes)
