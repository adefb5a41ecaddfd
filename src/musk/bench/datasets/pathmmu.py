"""PathMMU image-caption pairs for cross-modal retrieval (``pathmmu_retrieval``).

Layout (the upstream demo's): ``<root>/{Book,WebPathology,Twitter}/GPTCaption/*.json``, each JSON an object
whose values are ``{"img_path": ..., "caption": ...}``; images under ``<root>/<subset>/images/<img_path>``.
Every pair is used (there is no split). Subsets that are absent are skipped, but at least one must exist.
"""

from __future__ import annotations

from pathlib import Path

from ..data import BenchData, DatasetLayoutError, FileImages
from .layout import read_json

SUBSETS = ("Book", "WebPathology", "Twitter")


def load(name: str, root: Path, split: str) -> BenchData:
    paths, captions = [], []
    found = [s for s in SUBSETS if (root / s / "GPTCaption").is_dir()]
    if not found:
        raise DatasetLayoutError(
            f"{name}: expected {root}/<subset>/GPTCaption/*.json for at least one subset of {list(SUBSETS)}"
        )
    for subset in found:
        for json_file in sorted((root / subset / "GPTCaption").glob("*.json")):
            entries = read_json(json_file, name)
            for key, entry in entries.items() if isinstance(entries, dict) else enumerate(entries):
                if not isinstance(entry, dict) or "img_path" not in entry or "caption" not in entry:
                    raise DatasetLayoutError(f"{name}: {json_file} entry {key!r} lacks 'img_path' or 'caption'")
                paths.append(root / subset / "images" / entry["img_path"])
                captions.append(str(entry["caption"]))
    return BenchData(name, split, FileImages(paths, root), captions=captions, caption_images=range(len(paths)))
