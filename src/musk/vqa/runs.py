"""A training folder across restarts: which run it holds, resuming it, refusing to overwrite another one.

``history.json`` names its run by a key (a hash of the settings that change the model and of the training and
validation examples) and says whether it finished. While a run is unfinished, ``checkpoints/step_<n>/`` holds
its state after the newest epoch (model, optimizer, scheduler, random states, epoch, best accuracy, history).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..models import PUBLISHED
from ..models.registry import published_source
from ..training.checkpoint import latest_checkpoint
from .data import VQAExample

__all__ = ["CHECKPOINTS", "HISTORY_FILENAME", "PreviousRun", "clear_run", "find_previous_run", "run_key"]

logger = logging.getLogger(__name__)

HISTORY_FILENAME = "history.json"
CHECKPOINTS = "checkpoints"
OUTPUTS = ("best", "last", HISTORY_FILENAME, CHECKPOINTS)
# where and how fast a run goes, not what it learns; ``data`` is covered by the examples themselves
_NOT_IN_KEY = frozenset(
    {"data", "output_dir", "cache_dir", "eval_batch_size", "num_workers", "progress", "cpu", "overwrite"}
)


def run_key(config, train: Sequence[VQAExample], validation: Sequence[VQAExample] | None) -> str:
    """Hash of ``config``'s model-changing settings and of the examples (image, question, answer) of both splits.

    ``published`` weights count as their source (``hf_hub:...``), which earlier versions wrote as the default."""
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_KEY}
    if settings.get("weights") == PUBLISHED:
        settings["weights"] = published_source(config.model) or PUBLISHED
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for examples in (train, validation or ()):
        digest.update(b"\0split")
        for e in examples:
            image = e.image if isinstance(e.image, bytes) else e.image.encode()
            for part in (image, e.question.encode(), e.answer.encode()):
                digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()[:16]


@dataclass
class PreviousRun:
    """The same run found in the output folder: ``record`` is its history.json; ``checkpoint`` the state to
    resume from (None when it finished)."""

    record: dict
    checkpoint: Path | None


def _read_record(output_dir: Path) -> dict:
    try:
        record = json.loads((output_dir / HISTORY_FILENAME).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def find_previous_run(output_dir: Path, key: str, overwrite: bool) -> PreviousRun | None:
    """The run in ``output_dir`` to finish or resume: None for a fresh start (no training outputs there, the
    same run stopped before its first checkpoint, or ``overwrite``). Raises ValueError when the folder holds
    another run (other settings or data, or a run without a key) and ``overwrite`` is False."""
    present = [name for name in OUTPUTS if (output_dir / name).exists()]
    if not present or overwrite:
        return None
    record = _read_record(output_dir)
    if record.get("run_key") != key:
        best = ""
        if record.get("best_epoch"):
            best = f" (best epoch {record['best_epoch']}, validation accuracy {record.get('best_accuracy')})"
        raise ValueError(
            f"{output_dir} already holds a VQA training run with other settings or data{best}: it has "
            f"{', '.join(present)}. Choose another output folder, or pass --overwrite (overwrite=True) to "
            f"replace that run"
        )
    if record.get("finished"):
        return PreviousRun(record, None)
    checkpoint = latest_checkpoint(output_dir / CHECKPOINTS)
    return None if checkpoint is None else PreviousRun(record, checkpoint)


def clear_run(output_dir: Path) -> None:
    """Remove what a training run wrote into ``output_dir`` (nothing else in it)."""
    removed = [output_dir / name for name in OUTPUTS if (output_dir / name).exists()]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        logger.info("overwrite: removed %s", ", ".join(map(str, removed)))
