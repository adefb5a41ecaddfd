"""A trained slide-level model on disk: ``model.safetensors`` + ``config.json`` in one folder, written atomically.

A training run writes one such folder per fold (``fold_0/`` ...); loading the run folder gives all of them,
and predictions average over them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..files import atomic_dir, write_safetensors
from ..runtime import inference_dtype
from .data import BagDataset
from .fit import outputs_to_predictions, predict_outputs
from .models import MILModel, RiskEnsemble

__all__ = ["SavedMIL", "load_mil_models", "save_mil_model"]

logger = logging.getLogger(__name__)

WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
FORMAT = "musk-mil"
_ARCH_KEYS = ("out_dim", "feature_dim", "text_dim", "model", "fusion", "hidden", "dropout")
# What the fold models of one run share; a run_key (or one of these) that differs means another run's fold.
_RUN_KEYS = ("task", "classes", "out_dim", "feature_dim", "text_dim", "fusion", "survival_loss", "n_folds", "run_key")


@dataclass
class SavedMIL:
    """A loaded model and what its outputs mean (``task``, ``classes``, ``survival_loss``, ``bin_edges``)."""

    model: MILModel
    config: dict
    path: Path

    @property
    def task(self) -> str:
        return self.config["task"]

    def predict(self, dataset: BagDataset, batch_size: int = 8, num_workers: int = 0) -> np.ndarray:
        outputs = predict_outputs(self.model, dataset, batch_size=batch_size, num_workers=num_workers)
        return outputs_to_predictions(outputs, self.task, self.config.get("survival_loss", "nll"))


def save_mil_model(model: MILModel, directory: str | os.PathLike, config: dict, extra: dict | None = None) -> Path:
    """Write ``model`` with ``config`` (its architecture keys plus ``task``, ``classes`` ...) and optional
    ``extra`` JSON files (name -> object) into ``directory``, replacing it whole."""
    missing = [k for k in (*_ARCH_KEYS, "task") if k not in config]
    if missing:
        raise ValueError(f"the model config lacks {missing}")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        write_safetensors(state, tmp / WEIGHTS_FILENAME, metadata={"format": FORMAT})
        (tmp / CONFIG_FILENAME).write_text(json.dumps({"format": FORMAT, **config}, indent=2, default=_plain) + "\n")
        for name, value in (extra or {}).items():
            (tmp / name).write_text(json.dumps(value, indent=2, default=_plain) + "\n")
    return directory


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _damaged(directory: Path, why: str) -> ValueError:
    return ValueError(
        f"{directory} is damaged: {why}. Train it again: rerun the `musk mil train` command that wrote it (finished "
        "folds are reused, a damaged one is trained again)"
    )


def _build(config: dict) -> MILModel | RiskEnsemble:
    """The model a saved config describes: one network, or a pair read as one (``members``)."""

    def network(out_dim: int, from_baseline: bool) -> MILModel:
        return MILModel(
            **{k: config[k] for k in _ARCH_KEYS if k != "out_dim"},
            out_dim=out_dim,
            proportional=bool(config.get("proportional")),
            standardise=bool(config.get("standardise")),
            from_baseline=from_baseline,
        )

    members = config.get("members")
    if not members:
        return network(config["out_dim"], bool(config.get("from_baseline")))
    nets = [network(members["out_dim"], start == "baseline") for start in members["starts"]]
    return RiskEnsemble(nets, members["survival_loss"])


def _load_one(directory: Path, device: torch.device | str, dtype: torch.dtype) -> SavedMIL:
    try:
        config = json.loads((directory / CONFIG_FILENAME).read_text())
    except (OSError, ValueError) as e:
        raise _damaged(directory, f"its {CONFIG_FILENAME} cannot be read ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{directory / CONFIG_FILENAME} is not a musk MIL model config (format {found!r})")
    missing = [k for k in (*_ARCH_KEYS, "task") if k not in config]
    if missing:
        raise _damaged(directory, f"its {CONFIG_FILENAME} lacks {', '.join(missing)}")
    try:
        model = _build(config)
        state = load_file(str(directory / WEIGHTS_FILENAME))
    except (TypeError, ValueError, OSError, SafetensorError) as e:
        raise _damaged(directory, f"its {WEIGHTS_FILENAME} or {CONFIG_FILENAME} cannot be used ({e})") from e
    expected = set(model.state_dict())
    if set(state) != expected:
        raise _damaged(
            directory,
            f"{WEIGHTS_FILENAME} does not fit its {CONFIG_FILENAME}: missing {sorted(expected - set(state))[:8]}, "
            f"unexpected {sorted(set(state) - expected)[:8]}",
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # tensors of the wrong shape
        raise _damaged(directory, f"{WEIGHTS_FILENAME} does not fit its {CONFIG_FILENAME} ({e})") from e
    return SavedMIL(model.to(device, dtype).eval(), config, directory)


def fold_index(path: Path) -> int | None:
    """``k`` of a ``fold_<k>`` folder, else None."""
    prefix, _, index = path.name.partition("_")
    return int(index) if prefix == "fold" and index.isdigit() else None


def _check_one_run(models: list[SavedMIL]) -> None:
    """Fold models are averaged only when they come from one training run and complete it."""
    first = models[0]
    for other in models[1:]:
        differ = [k for k in _RUN_KEYS if other.config.get(k) != first.config.get(k)]
        if differ:
            shown = "; ".join(f"{k} {first.config.get(k)!r} vs {other.config.get(k)!r}" for k in differ[:3])
            raise ValueError(
                f"{first.path} and {other.path} were trained by different runs ({shown}) and cannot be averaged; "
                f"train again into a new output folder, or point at one fold_<k> folder"
            )
    n_folds = first.config.get("n_folds")
    found = sorted(fold_index(m.path) for m in models)
    if n_folds is not None and found != list(range(n_folds)):
        logger.warning(
            "%s holds folds %s of a %d-fold run: the run is unfinished; predicting with these folds only",
            first.path.parent,
            found,
            n_folds,
        )


def load_mil_models(
    directory: str | os.PathLike, device: torch.device | str = "cpu", precision: str = "fp32"
) -> list[SavedMIL]:
    """The model in ``directory``, or the fold models of a training output folder (``fold_<k>/``), on ``device``
    with their weights cast to ``precision`` (the inference rule: :mod:`musk.runtime`).

    Fold models that disagree (another run's folds: task, classes, widths, run key) are refused.
    """
    dtype = inference_dtype(precision)
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"MIL model folder not found: {directory}")
    if (directory / WEIGHTS_FILENAME).is_file() and (directory / CONFIG_FILENAME).is_file():
        return [_load_one(directory, device, dtype)]
    folds = sorted(
        (
            p
            for p in directory.glob("fold_*")
            if fold_index(p) is not None and (p / WEIGHTS_FILENAME).is_file() and (p / CONFIG_FILENAME).is_file()
        ),
        key=fold_index,
    )
    if not folds:
        raise FileNotFoundError(
            f"{directory} holds no MIL model ({WEIGHTS_FILENAME} + {CONFIG_FILENAME}, or fold_<k>/ folders with "
            "them); point to a folder written by `musk mil train` or one of its fold_<k> folders"
        )
    models = [_load_one(p, device, dtype) for p in folds]
    _check_one_run(models)
    return models
