"""Training checkpoints: accelerate's state (model, optimizer, scaler, every process's RNG) plus the
trainer's own (step, data positions), written into a temporary folder renamed into place when complete."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

__all__ = ["TRAINER_STATE", "best_checkpoint", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
_SHARDED_OPTIMIZER = "optimizer_0"  # accelerate's folder for an FSDP SHARDED_STATE_DICT optimizer
_NAME = re.compile(r"^step_(\d+)$")


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
    (and the checkpoint of step ``protect``: the best so far)."""
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
    accelerator.load_state(str(directory))
    state = json.loads(state_file.read_text())
    logger.info("resumed from %s (step %d)", directory, state["step"])
    return state
