"""The dataset registry: one loader per dataset family, each reading the official layout (and the upstream
demo layout where there is one).

``--dataset_root`` is resolved per dataset as upstream: a root containing ``{dataset}`` is formatted with the
dataset name; otherwise, when ``<root>/<folder>`` exists for the dataset's usual folder name (the upstream demo
names: ``skincancer``, ``pannuke``, ``unitopatho/unitopath-public``, ``PathMMU`` ...), that folder is used, else
the root itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import BenchData, DatasetLayoutError
from . import (
    arch,
    bracs,
    generic,
    lc25000,
    nct_crc,
    osteo,
    pannuke,
    pathmmu,
    pcam,
    renalcell,
    sicap,
    skin,
    unitopatho,
    wsss4luad,
)


@dataclass(frozen=True)
class DatasetSpec:
    """How to load a dataset: ``load(name, root, split)``, its default task and its usual folder name."""

    load: Callable[[str, Path, str], BenchData]
    default_task: str
    folder: str


_CLS, _RET, _IMG = "zeroshot_classification", "zeroshot_retrieval", "image_retrieval"
DATASETS: dict[str, DatasetSpec] = {
    "pathmmu_retrieval": DatasetSpec(pathmmu.load, _RET, "PathMMU"),
    "bookset_retrieval": DatasetSpec(arch.load, _RET, "ARCH"),
    "pubmedset_retrieval": DatasetSpec(arch.load, _RET, "ARCH"),
    "pcam": DatasetSpec(pcam.load, _CLS, "pcam"),
    "nct_crc": DatasetSpec(nct_crc.load, _CLS, "nct_crc"),
    "sicap": DatasetSpec(sicap.load, _CLS, "SICAPv2"),
    "osteo": DatasetSpec(osteo.load, _CLS, "osteo"),
    "renalcell": DatasetSpec(renalcell.load, _CLS, "renalcell"),
    "skin": DatasetSpec(skin.load, _CLS, "skincancer"),
    "skin_tumor": DatasetSpec(skin.load, _CLS, "skincancer"),
    "lc25000": DatasetSpec(lc25000.load, _CLS, "LC25000"),
    "pannuke": DatasetSpec(pannuke.load, _CLS, "pannuke"),
    "unitopatho": DatasetSpec(unitopatho.load, _CLS, "unitopatho/unitopath-public"),
    "unitopatho_retrieval": DatasetSpec(unitopatho.load, _IMG, "unitopatho/unitopath-public"),
    "wsss4luad": DatasetSpec(wsss4luad.load, _CLS, "WSSS4LUAD"),
    "bracs6cls": DatasetSpec(bracs.load, _CLS, "BRACS"),
    "bracs3cls": DatasetSpec(bracs.load, _CLS, "BRACS"),
    "bracs_retrieval": DatasetSpec(bracs.load, _IMG, "BRACS"),
    "folder": DatasetSpec(generic.load_folder, _CLS, ""),
    "csv": DatasetSpec(generic.load_csv, _CLS, ""),
}


def spec(name: str) -> tuple[str, DatasetSpec, Path | None]:
    """``(family name, spec, explicit root)``; ``folder:/path`` and ``csv:/path`` name their root."""
    family, sep, path = name.partition(":")
    if family in ("folder", "csv") and sep:
        return family, DATASETS[family], Path(path).expanduser()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))} (or folder:/path, csv:/path)")
    return name, DATASETS[name], None


def resolve_root(name: str, dataset_root: str | os.PathLike) -> Path:
    """The folder a dataset is read from (see the module docstring)."""
    family, dataset_spec, explicit = spec(name)
    if explicit is not None:
        return explicit
    root = str(dataset_root)
    if "{dataset}" in root:
        return Path(root.format(dataset=name)).expanduser()
    base = Path(root).expanduser()
    if dataset_spec.folder and (base / dataset_spec.folder).is_dir():
        return base / dataset_spec.folder
    return base


def default_task(name: str) -> str:
    return spec(name)[1].default_task


def _override(path: str | os.PathLike | None, name: str, what: str) -> list[str] | None:
    if not path:
        return None
    try:
        table = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"custom {what} file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"custom {what} file {path} is not valid JSON: {exc}") from exc
    if not isinstance(table, dict):
        raise ValueError(f"custom {what} file {path} must map dataset names to lists of strings")
    value = table.get(name)
    if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"custom {what} file {path}: the entry for {name!r} must be a list of strings")
    return value


def load_dataset(
    name: str,
    dataset_root: str | os.PathLike,
    split: str = "test",
    classnames_file: str | os.PathLike | None = None,
    templates_file: str | os.PathLike | None = None,
) -> BenchData:
    """Load one split of a registered dataset; class names and templates may be replaced from JSON files
    mapping dataset names to lists (the upstream ``--custom_classname_file`` / ``--custom_template_file``)."""
    family, dataset_spec, _ = spec(name)
    root = resolve_root(name, dataset_root)
    if not root.exists():
        raise DatasetLayoutError(f"{name}: dataset folder {str(root)!r} does not exist (--dataset_root)")
    data = dataset_spec.load(family, root, split)
    data.name = name if family not in ("folder", "csv") else f"{family}_{root.name}"
    classes = _override(classnames_file, name, "class name")
    if classes is not None:
        if data.classes is not None and len(classes) != len(data.classes):
            raise ValueError(
                f"{classnames_file}: {name} has {len(data.classes)} classes, the file gives {len(classes)}"
            )
        data.classes = classes
    templates = _override(templates_file, name, "template")
    if templates is not None:
        data.templates = templates
    return data


__all__ = ["DATASETS", "DatasetLayoutError", "DatasetSpec", "default_task", "load_dataset", "resolve_root"]
