"""Checkpoints that resume a run exactly: accelerate's state (model, optimizer, gradient scaler, every process's
random generators) plus the trainer's own in ``trainer_state.json`` (step, data positions, history, model
selection), written into a temporary folder renamed into place when complete.

The learning rate is a function of the step (:mod:`musk.training.schedule`), so a checkpoint holds tensors,
plain data and JSON, no scheduler object. Before one is loaded, every file in it that would be unpickled is
opened with ``weights_only=True``: a checkpoint with a file that holds anything but tensors and plain data (that
is, code) is refused. Checkpoints of VQA runs written by earlier versions also hold a pickled scheduler
(``custom_checkpoint_0.pkl``): it is never read.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from ..messages import listing

__all__ = ["TRAINER_STATE", "best_checkpoint", "check_tensors_only", "latest_checkpoint", "load_checkpoint",
           "save_checkpoint"]  # fmt: skip

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
_SHARDED_OPTIMIZER = "optimizer_0"  # accelerate's folder for an FSDP SHARDED_STATE_DICT optimizer
_NAME = re.compile(r"^step_(\d+)$")
_PICKLED_SCHEDULER = re.compile(r"^custom_checkpoint_\d+\.pkl$")  # earlier versions' VQA scheduler state
_UNPICKLED = (".bin", ".pt", ".pth", ".pkl")  # the files accelerate and DeepSpeed read with torch.load


def _complete(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (half-written ones are never named ``step_*``)."""
    found = _complete(Path(root))
    return found[-1][1] if found else None


def best_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint model selection chose (``best`` in the newest checkpoint's trainer state), if any."""
    newest = latest_checkpoint(root)
    best = json.loads((newest / TRAINER_STATE).read_text()).get("best") if newest else None
    if best is None:
        return None
    path = Path(root) / f"step_{best['step']:08d}"
    return path if (path / TRAINER_STATE).is_file() else None


def save_checkpoint(
    accelerator, root: str | os.PathLike, step: int, state: dict, keep: int = 2, protect: int | None = None
) -> Path:
    """Save on every process (collective), rename into ``root/step_<step>`` and keep the newest ``keep``
    (and the checkpoint of step ``protect``: the best so far). ``state``: the trainer's, JSON-ready."""
    root = Path(root)
    final, tmp = root / f"step_{step:08d}", root / f".step_{step:08d}.partial"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if main:
        (tmp / TRAINER_STATE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old_step, old in _complete(root)[:-keep]:
            if old_step != protect:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint at step %d: %s", step, final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, directory: str | os.PathLike) -> dict:
    """Restore accelerate's state from ``directory``; returns the trainer state saved with it."""
    directory = Path(directory)
    state_file = directory / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"{directory} is not a complete checkpoint: it has no {TRAINER_STATE}")
    if (directory / _SHARDED_OPTIMIZER).is_dir():
        # accelerate 1.15 fills a template from the fresh optimizer's state dict, which holds no state yet
        raise ValueError(
            f"{directory} is an FSDP SHARDED_STATE_DICT checkpoint: resuming from it would silently drop the "
            f"optimizer's moments (accelerate loads none into a fresh optimizer). Resume runs saved with "
            f"fsdp_state_dict_type FULL_STATE_DICT, or export this one and start a new run from its weights"
        )
    state = json.loads(state_file.read_text())
    check_tensors_only(directory)
    with _without_pickled_scheduler(directory) as readable:
        accelerator.load_state(str(readable))
    logger.info("resumed from %s (step %d)", directory, state["step"])
    return state


def check_tensors_only(path: str | os.PathLike) -> None:
    """Raise ValueError naming the first file at ``path`` (a file, or every file under a folder) that torch
    would unpickle and that holds more than tensors and plain data: code, or anything torch's weights-only
    loader refuses (the NumPy arrays of saved random states and DeepSpeed's optimizer bookkeeping are allowed)."""
    path = Path(path)
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for file in files:
        if file.suffix not in _UNPICKLED or _PICKLED_SCHEDULER.match(file.name) or not file.is_file():
            continue
        try:
            with _allowing(_allowed_globals(file)):
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - whatever the reason, the file is not read further
            raise ValueError(
                f"{file} is not a plain tensor file ({_refusal_reason(file, e)}): it is not loaded, as loading it "
                f"could run code. Use only checkpoints this package wrote"
            ) from None


def _allowed_globals(file: Path) -> list:
    core = np._core if hasattr(np, "_core") else np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), codecs.encode]
    if file.parent.name == "pytorch_model":  # accelerate's folder for DeepSpeed's own files
        try:
            from deepspeed.runtime.fp16.loss_scaler import LossScaler
            from deepspeed.runtime.zero.config import ZeroStageEnum
            from deepspeed.utils.tensor_fragment import fragment_address
        except ImportError:
            return allowed
        allowed += [LossScaler, ZeroStageEnum, fragment_address]
    return allowed


def _allowing(allowed: list):
    """torch's weights-only loader, also allowing ``allowed`` (torch >= 2.5; earlier versions allow nothing more)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return nullcontext() if safe_globals is None else safe_globals(allowed)


def _refusal_reason(file: Path, error: Exception) -> str:
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5: reads no data
    try:
        names = scan(file) if scan else []
    except Exception:  # noqa: BLE001 - not even a torch archive: the error says why
        names = []
    if names:
        return f"it refers to {listing(names)}"
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


@contextmanager
def _without_pickled_scheduler(directory: Path) -> Iterator[Path]:
    """``directory``, or a view of it without the pickled scheduler of an earlier version (links to the rest)."""
    pickled = [p for p in directory.iterdir() if _PICKLED_SCHEDULER.match(p.name)]
    if not pickled:
        yield directory
        return
    logger.info("%s: not reading %s (the learning rate follows the step)", directory, listing(p.name for p in pickled))
    with tempfile.TemporaryDirectory(prefix="musk-checkpoint-") as tmp:
        for item in directory.iterdir():
            if item not in pickled:
                (Path(tmp) / item.name).symlink_to(item.resolve())
        yield Path(tmp)
