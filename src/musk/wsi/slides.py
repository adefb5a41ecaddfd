"""The slides of a job: every slide file in a folder, or the rows of a CSV list (``path`` and optional ``mpp``)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..files import safe_filename

__all__ = ["SLIDE_EXTENSIONS", "SlideEntry", "list_slides"]

#: Files collected from a slide folder (case-insensitive): OpenSlide's formats, TIFF and plain images.
SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide", ".dcm",
    ".png", ".jpg", ".jpeg",
)  # fmt: skip


@dataclass(frozen=True)
class SlideEntry:
    """One slide: its ``name`` (the file name without extension, made safe as a file name: it names every
    output), its file and its mpp override."""

    name: str
    path: Path
    mpp: float | None = None


def _name(path: Path) -> str:
    """The file name without its extension, safe as a file name (``...svs`` -> ``__``: never a path outside)."""
    return safe_filename(path.name[: -len(path.suffix)] if path.suffix else path.name)


def _from_csv(table: Path) -> list[SlideEntry]:
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        key = "path" if "path" in columns else "slide" if "slide" in columns else None
        if key is None:
            raise ValueError(f"{table} needs a 'path' column (and optionally 'mpp'); it has {columns}")
        entries = []
        for row_number, row in enumerate(reader, start=2):
            value = (row.get(key) or "").strip()
            if not value:
                raise ValueError(f"{table} row {row_number}: empty {key!r}")
            path = Path(value).expanduser()
            path = path if path.is_absolute() else table.parent / path
            mpp_text = (row.get("mpp") or "").strip()
            try:
                mpp = float(mpp_text) if mpp_text else None
            except ValueError:
                raise ValueError(f"{table} row {row_number}: mpp {mpp_text!r} is not a number") from None
            entries.append(SlideEntry(_name(path), path, mpp))
    return entries


def list_slides(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[SlideEntry]:
    """Slides from a folder (its slide files, sorted, hidden ones skipped), a ``.csv`` list, or a list of files.

    Slide files named explicitly are kept even when missing, so a job records them as failed; a missing path
    without a slide extension (a mistyped folder) raises ``FileNotFoundError``. Two slides whose names (made
    safe as file names) are the same would overwrite each other's outputs and raise ``ValueError``.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    entries: list[SlideEntry] = []
    for item in sources:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                and p.suffix.lower() in SLIDE_EXTENSIONS
            )  # fmt: skip
            entries += [SlideEntry(_name(p), p) for p in found]
        elif path.suffix.lower() == ".csv":
            if not path.is_file():
                raise FileNotFoundError(f"no slide list at {path}")
            entries += _from_csv(path)
        elif not path.exists() and path.suffix.lower() not in SLIDE_EXTENSIONS:
            raise FileNotFoundError(f"no slide folder or file at {path}")
        else:
            entries.append(SlideEntry(_name(path), path))
    if not entries:
        raise ValueError(f"no slides ({', '.join(SLIDE_EXTENSIONS)}) found in {', '.join(map(str, sources))}")
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.name in seen:
            raise ValueError(
                f"two slides would write their outputs under the same name {entry.name!r}: {seen[entry.name]} and "
                f"{entry.path}; rename one"
            )
        seen[entry.name] = entry.path
    return entries
