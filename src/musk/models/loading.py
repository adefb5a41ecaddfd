"""Checkpoint loading: wrapped or prefixed state dicts, strict key checks, and interpolation of the vision
position table to another patch grid (where the files come from: :mod:`musk.models.weights`)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..messages import listing
from .embeddings import POSITION_OFFSET
from .weights import resolve_weights

logger = logging.getLogger(__name__)

VISION_POSITIONS_KEY = "beit3.encoder.embed_positions.A.weight"


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


def read_state_dict(path: str | os.PathLike, model_key: str = "model|module") -> dict[str, torch.Tensor]:
    """Flat ``{name: tensor}`` from a safetensors or torch file, unwrapped and without ``module.``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader failure means the same thing to the user
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    for key in model_key.split("|"):
        if key and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointMismatchError(f"checkpoint {path} has non-tensor entries: {listing(bad, sort=True)}")
    return state


def interpolate_vision_positions(table: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a vision position table to ``num_patches``: bicubic on the patch grid, first rows kept."""
    extra = POSITION_OFFSET + 1  # two unused rows, then the CLS row
    old = round((table.shape[0] - extra) ** 0.5)
    new = round(num_patches**0.5)
    if old * old != table.shape[0] - extra or new * new != num_patches:
        raise CheckpointMismatchError(
            f"cannot interpolate a vision position table of {table.shape[0]} rows to {num_patches} patches: "
            "both must be square grids plus 3 rows"
        )
    grid = table[extra:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(table.dtype)
    return torch.cat([table[:extra], grid], dim=0)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict fitted to ``model``'s keys and shapes (positions interpolated), or an error."""
    expected = model.state_dict()
    state = dict(state)
    table = state.get(VISION_POSITIONS_KEY)
    want = expected.get(VISION_POSITIONS_KEY)
    if table is not None and want is not None and table.shape[0] != want.shape[0]:
        logger.info("interpolating %s from %d to %d rows", VISION_POSITIONS_KEY, table.shape[0], want.shape[0])
        state[VISION_POSITIONS_KEY] = interpolate_vision_positions(table, want.shape[0] - POSITION_OFFSET - 1)
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [f"checkpoint does not fit {type(model).__name__} ({len(state)} keys, model has {len(expected)})"]
        if missing:
            parts.append(f"missing {len(missing)}: {listing(missing, sort=True)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {listing(unexpected, sort=True)}")
        if shapes:
            parts.append(f"mis-shaped {len(shapes)}: {listing(shapes, sort=True)}")
        raise CheckpointMismatchError("; ".join(parts))
    return state


def load_weights(
    model: nn.Module,
    source: str | os.PathLike,
    model_key: str = "model|module",
    prefix: str = "",
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Load ``source`` (hub id, file or directory) into ``model`` strictly; returns the weights path.

    Parameters of a model built on the meta device are replaced by the checkpoint's tensors.
    """
    path = resolve_weights(source, cache_dir)
    state = read_state_dict(path, model_key)
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = check_state_dict(model, state)
    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta:
        reference = next(p for p in model.parameters())
        state = {k: v.to(reference.dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=on_meta)
    logger.info("loaded %d tensors from %s", len(state), path)
    return path
